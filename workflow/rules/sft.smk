# The SFT baseline: cross-entropy on the instruction set's assistant turns.


rule train_sft:
    input:
        student=model_dir("student_init", "{seed}"),
        train="results/data/instructions/train.jsonl",
        valid="results/data/instructions/valid.jsonl",
    output:
        directory(model_dir("sft", "{seed}")),
    log:
        "results/logs/train/student_sft/seed{seed}.log",
    benchmark:
        "results/benchmarks/train/student_sft/seed{seed}.tsv"
    retries: train_retries("sft")
    conda:
        ENV
    threads: 2
    resources:
        **train_resources("sft", mem_mb=12000),
    params:
        launch=launch_command("sft"),
        objective="sft",
        settings=stage_train_json("sft"),
        objective_settings="{}",
        seed=run_seed("sft"),
        precision=PRECISION,
        ckpt_dir=checkpoint_dir,
    shell:
        TRAIN_SHELL
