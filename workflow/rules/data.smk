# Datasets: mathematics_dataset (generated locally, for the instruction set and for the λ' sweep),
# the instruction set, and DAE's mixture.


rule math_data:
    output:
        expand("results/data/{{dataset}}/{split}.jsonl", split=SPLITS),
    log:
        "results/logs/data/{dataset}.log",
    wildcard_constraints:
        dataset="math|sweep_math",
    conda:
        ENV
    resources:
        mem_mb=4000,
        runtime=runtime_min(30),
    params:
        math=math_config,
        seed=config["seed"],
    shell:
        "python -m distill.data.math --modules {params.math[modules]} "
        "--difficulty {params.math[difficulty]} --n-train {params.math[n_train]} "
        "--n-valid {params.math[n_valid]} --n-test {params.math[n_test]} "
        "--seed {params.seed} --out-dir results/data/{wildcards.dataset} > {log} 2>&1"


rule instructions:
    input:
        teacher=model_dir("teacher"),
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
        gpu=model_gpus("teacher"),
    params:
        source=config["data"]["instructions"]["source"],
        settings=as_json(config["data"]["instructions"]),
        seed=config["seed"],
        precision=PRECISION,
    shell:
        "python -m distill.data.instructions --source {params.source:q} --teacher {input.teacher} "
        "--math {input.math} --settings {params.settings:q} --seed {params.seed} "
        "--precision {params.precision} --out-dir results/data/instructions > {log} 2>&1"


rule dae_data:
    input:
        general="results/data/instructions/{split}.jsonl",
        domain="results/data/math/{split}.jsonl",
    output:
        "results/data/dae/{split}.jsonl",
    log:
        "results/logs/data/dae_{split}.log",
    wildcard_constraints:
        split="train|valid",
    conda:
        ENV
    params:
        domains=config["dae"]["domains"],
        share=config["dae"]["domain_share"],
        seed=config["seed"],
    shell:
        "python -m distill.data.mixture --general {input.general} --domain {input.domain} "
        "--domains {params.domains} --share {params.share} --seed {params.seed} "
        "--out {output} > {log} 2>&1"
