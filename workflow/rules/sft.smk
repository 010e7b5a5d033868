# The SFT baseline: cross-entropy on the instruction set's responses.


rule train_sft:
    input:
        student="results/models/student_init",
        train="results/data/instructions/train.jsonl",
        valid="results/data/instructions/valid.jsonl",
    output:
        directory("results/models/student_sft"),
    log:
        "results/logs/train/student_sft.log",
    benchmark:
        "results/benchmarks/train/student_sft.tsv"
    conda:
        ENV
    threads: 2
    resources:
        **TRAIN_RESOURCES,
        mem_mb=12000,
        runtime=runtime_min(60),
    params:
        launch=TRAIN_LAUNCH,
        settings=train_settings("sft"),
        seed=config["seed"],
        precision=PRECISION,
    shell:
        "{params.launch} --objective sft --student {input.student} "
        "--train {input.train} --valid {input.valid} --settings {params.settings:q} "
        "--seed {params.seed} --precision {params.precision} "
        "--ckpt-dir results/checkpoints/student_sft --out {output} > {log} 2>&1"
