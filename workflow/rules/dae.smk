# KD-DAE stage 2: from the KD student, distil domain samples from the domain expert and the rest
# from the general teacher (the expert: models.smk).

DAE_KEYS = ["lam", "divergence", "temperature", "teacher_source"]
DAE_TEACHERS = {"teacher": "teacher", "expert": "expert"}


rule train_dae:
    input:
        **teacher_inputs("dae", "dae", DAE_TEACHERS),
        student=model_dir("kd", "{seed}"),
        train="results/data/dae/train.jsonl",
        valid="results/data/dae/valid.jsonl",
    output:
        directory(model_dir("kd_dae", "{seed}")),
    log:
        "results/logs/train/student_kd_dae/seed{seed}.log",
    benchmark:
        "results/benchmarks/train/student_kd_dae/seed{seed}.tsv"
    retries: train_retries("dae")
    conda:
        ENV
    threads: 2
    resources:
        **train_resources("dae", mem_mb=16000),
    params:
        launch=launch_command("dae"),
        objective="dae",
        settings=stage_train_json("dae"),
        objective_settings=objective_json(
            "dae",
            DAE_KEYS,
            expert=expert_dir,
            expert_cache=expert_cache,
            domains=config["dae"]["domains"],
        ),
        seed=run_seed("dae"),
        precision=PRECISION,
        ckpt_dir=checkpoint_dir,
    shell:
        TRAIN_SHELL
