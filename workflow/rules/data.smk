# Datasets: mathematics_dataset (generated locally) and the instruction set.


rule math_data:
    output:
        expand("results/data/math/{split}.jsonl", split=SPLITS),
    log:
        "results/logs/data/math.log",
    conda:
        ENV
    resources:
        mem_mb=2000,
        runtime=runtime_min(10),
    params:
        modules=config["data"]["math"]["modules"],
        math=config["data"]["math"],
        seed=config["seed"],
    shell:
        "python -m distill.data.math --modules {params.modules} "
        "--difficulty {params.math[difficulty]} --n-train {params.math[n_train]} "
        "--n-valid {params.math[n_valid]} --n-test {params.math[n_test]} "
        "--seed {params.seed} --out-dir results/data/math > {log} 2>&1"


rule instructions:
    input:
        teacher="results/models/teacher",
        math="results/data/math/train.jsonl",
    output:
        expand(
            "results/data/instructions/{split}.jsonl",
            split=["train", "valid", "heldout"],
        ),
    log:
        "results/logs/data/instructions.log",
    benchmark:
        "results/benchmarks/data/instructions.tsv"
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=8000,
        runtime=runtime_min(30),
        gpu=GPUS,
    params:
        source=config["data"]["instructions"]["source"],
        settings=as_json(config["data"]["instructions"]),
        seed=config["seed"],
        precision=PRECISION,
    shell:
        "python -m distill.data.instructions --source {params.source:q} --teacher {input.teacher} "
        "--math {input.math} --settings {params.settings:q} --seed {params.seed} "
        "--precision {params.precision} --out-dir results/data/instructions > {log} 2>&1"
