# DDK: students distilled with the domain mixture re-weighted by the perplexity ratio per domain,
# one per mode (DDK, its ablations, plain KD with the same loss), all from the same init.

DDK_KEYS = ["divergence", "temperature", "teacher_source", "interval", "alpha", "gamma"]
DDK_KEYS += ["valid_per_domain"]


rule train_ddk:
    input:
        **teacher_inputs("ddk", "instructions", {"teacher": config["ddk"]["teacher"]}),
        student=f"results/models/{config['ddk']['student']}",
        train="results/data/instructions/train.jsonl",
        valid="results/data/instructions/valid.jsonl",
    output:
        directory("results/models/student_ddk_{mode}"),
    log:
        "results/logs/train/student_ddk_{mode}.log",
    benchmark:
        "results/benchmarks/train/student_ddk_{mode}.tsv"
    wildcard_constraints:
        mode="ddk|no_smoothing|equal|natural",
    conda:
        ENV
    threads: 2
    resources:
        **TRAIN_RESOURCES,
        mem_mb=16000,
        runtime=runtime_min(120),
    params:
        launch=TRAIN_LAUNCH,
        settings=train_settings("ddk"),
        objective=lambda wildcards, input: objective_settings(
            "ddk", DDK_KEYS, input, mode=wildcards.mode
        ),
        seed=config["seed"],
        precision=PRECISION,
    shell:
        "{params.launch} --objective ddk --student {input.student} "
        "--train {input.train} --valid {input.valid} --settings {params.settings:q} "
        "--objective-settings {params.objective:q} --seed {params.seed} "
        "--precision {params.precision} "
        "--ckpt-dir results/checkpoints/student_ddk_{wildcards.mode} --out {output} > {log} 2>&1"


rule domain_eval:
    input:
        model=lambda wildcards: DOMAIN_EVAL_MODELS[wildcards.model],
        valid="results/data/instructions/valid.jsonl",
        math="results/data/math/test.jsonl",
    output:
        "results/eval/domains/{model}.json",
    log:
        "results/logs/eval/domains_{model}.log",
    benchmark:
        "results/benchmarks/eval/domains_{model}.tsv"
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=8000,
        runtime=runtime_min(30),
        gpu=GPUS,
    params:
        max_len=config["train"]["max_len"],
        precision=PRECISION,
    shell:
        "python -m distill.eval.domains --model {input.model} --valid {input.valid} "
        "--math-test {input.math} --max-len {params.max_len} --precision {params.precision} "
        "--out {output} > {log} 2>&1"


rule domain_table:
    input:
        expand("results/eval/domains/{model}.json", model=DOMAIN_EVAL_MODELS),
    output:
        report(
            "results/eval/domains/accuracy.csv",
            caption="../report/domain_table.rst",
            category="DDK",
        ),
    log:
        "results/logs/eval/domain_table.log",
    conda:
        ENV
    shell:
        "python -m distill.eval.domains table --results {input} --out {output} > {log} 2>&1"


rule ddk_weights_figure:
    input:
        "results/models/student_ddk_ddk"
        if "ddk" in config["ddk"]["modes"]
        else "results/models/student_ddk_no_smoothing",
    output:
        png=report(
            "results/figures/ddk_weights.png",
            caption="../report/ddk_weights.rst",
            category="DDK",
        ),
        pdf="results/figures/ddk_weights.pdf",
    log:
        "results/logs/figures/ddk_weights.log",
    conda:
        ENV
    shell:
        "python -m distill.plots.ddk weights --log {input}/train_log.csv --out {output.png} "
        "> {log} 2>&1"


rule ddk_domain_ppl_figure:
    input:
        expand("results/eval/domains/{model}.json", model=DOMAIN_EVAL_MODELS),
    output:
        png=report(
            "results/figures/ddk_domain_ppl.png",
            caption="../report/ddk_domain_ppl.rst",
            category="DDK",
        ),
        pdf="results/figures/ddk_domain_ppl.pdf",
    log:
        "results/logs/figures/ddk_domain_ppl.log",
    conda:
        ENV
    params:
        results=[f"{m}=results/eval/domains/{m}.json" for m in DOMAIN_EVAL_MODELS],
    shell:
        "python -m distill.plots.ddk ppl --results {params.results} --out {output.png} "
        "> {log} 2>&1"
