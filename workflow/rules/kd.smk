# KD-DAE stage 1: the teacher cache, then knowledge distillation into the student.


rule teacher_cache:
    input:
        teacher="results/models/{teacher}",
        student=lambda wildcards: f"results/models/{CACHE_STUDENT[wildcards.teacher]}",
        data="results/data/{dataset}/train.jsonl",
        heldout="results/data/{dataset}/valid.jsonl",
    output:
        "results/cache/{teacher}/{dataset}/manifest.json",
    log:
        "results/logs/cache/{teacher}_{dataset}.log",
    benchmark:
        "results/benchmarks/cache/{teacher}_{dataset}.tsv"
    wildcard_constraints:
        teacher=TEACHER_NAMES,
        dataset="instructions|dae",
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=12000,
        runtime=runtime_min(60),
        gpu=GPUS,
    params:
        cache=config["kd"]["cache"],
        temperature=config["kd"]["temperature"],
        max_len=config["train"]["max_len"],
        precision=PRECISION,
    shell:
        "python -m distill.teacher_cache --teacher {input.teacher} --data {input.data} "
        "--k {params.cache[k]} --temperature {params.temperature} --max-len {params.max_len} "
        "--batch-size {params.cache[batch_size]} --shard-examples {params.cache[shard_examples]} "
        "--error-examples {params.cache[error_examples]} --student {input.student} "
        "--heldout {input.heldout} --precision {params.precision} "
        "--out $(dirname {output}) > {log} 2>&1"


rule train_kd:
    input:
        **teacher_inputs("kd", "instructions"),
        student="results/models/student_init",
        train="results/data/instructions/train.jsonl",
        valid="results/data/instructions/valid.jsonl",
    output:
        directory("results/models/student_kd"),
    log:
        "results/logs/train/student_kd.log",
    benchmark:
        "results/benchmarks/train/student_kd.tsv"
    conda:
        ENV
    threads: 2
    resources:
        **TRAIN_RESOURCES,
        mem_mb=16000,
        runtime=runtime_min(120),
    params:
        launch=TRAIN_LAUNCH,
        settings=train_settings("kd"),
        objective=lambda wildcards, input: objective_settings("kd", KD_KEYS, input),
        seed=config["seed"],
        precision=PRECISION,
    shell:
        "{params.launch} --objective kd --student {input.student} "
        "--train {input.train} --valid {input.valid} --settings {params.settings:q} "
        "--objective-settings {params.objective:q} --seed {params.seed} "
        "--precision {params.precision} "
        "--ckpt-dir results/checkpoints/student_kd --out {output} > {log} 2>&1"
