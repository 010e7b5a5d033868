# KD-DAE stage 1: teacher caches (for every stage that reads one), then knowledge distillation.

KD_KEYS = ["lam", "divergence", "temperature", "teacher_source", "beta", "alpha"]
KD_KEYS += ["scale_by_t2", "w_attn", "layer_map", "w_hid", "hidden_kind", "fused_loss"]
KD_KEYS += ["chunk_size"]
# Which data each cached dataset is and which stage's max_len/temperature made the cache path.
CACHE_DATASETS = "instructions|dae|pretrain"


rule teacher_cache:
    input:
        teacher="results/models/{teacher}",
        student=cache_student,
        data="results/data/{dataset}/train.jsonl",
        heldout="results/data/{dataset}/valid.jsonl",
    output:
        "results/cache/{teacher}/{dataset}/t{temperature}_len{max_len}/manifest.json",
    log:
        "results/logs/cache/{teacher}/{dataset}/t{temperature}_len{max_len}.log",
    benchmark:
        "results/benchmarks/cache/{teacher}/{dataset}/t{temperature}_len{max_len}.tsv"
    wildcard_constraints:
        dataset=CACHE_DATASETS,
        temperature=r"[0-9.e+-]+",
        max_len=r"\d+",
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=12000,
        runtime=runtime_min(120),
        gpu=teacher_gpus,
    params:
        cache=cache_settings,
        precision=PRECISION,
    shell:
        "python -m distill.teacher_cache --teacher {input.teacher} --data {input.data} "
        "--kind {params.cache[kind]} --k {params.cache[k]} --samples {params.cache[samples]} "
        "--seed {params.cache[seed]} --temperature {params.cache[temperature]} "
        "--max-len {params.cache[max_len]} --batch-size {params.cache[batch_size]} "
        "--shard-examples {params.cache[shard_examples]} "
        "--error-examples {params.cache[error_examples]} --student {input.student} "
        "--heldout {input.heldout} --precision {params.precision} "
        "--out $(dirname {output}) > {log} 2>&1"


rule train_kd:
    input:
        **teacher_inputs("kd", "instructions", {"teacher": "teacher"}),
        student=model_dir("student_init", "{seed}"),
        train="results/data/instructions/train.jsonl",
        valid="results/data/instructions/valid.jsonl",
    output:
        directory(model_dir("kd", "{seed}")),
    log:
        "results/logs/train/student_kd/seed{seed}.log",
    benchmark:
        "results/benchmarks/train/student_kd/seed{seed}.tsv"
    retries: train_retries("kd")
    conda:
        ENV
    threads: 2
    resources:
        **train_resources("kd", mem_mb=16000),
    params:
        launch=launch_command("kd"),
        objective="kd",
        settings=stage_train_json("kd"),
        objective_settings=objective_json("kd", KD_KEYS),
        seed=run_seed("kd"),
        precision=PRECISION,
        ckpt_dir=checkpoint_dir,
    shell:
        TRAIN_SHELL
