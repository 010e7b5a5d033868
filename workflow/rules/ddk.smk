# DDK: students distilled with the domain mixture re-weighted by the perplexity ratio per domain,
# one per mode (DDK, its ablations, plain KD with the same loss), all from the same init; then
# per-domain perplexity and math accuracy of every model.

DDK = config["ddk"]
DDK_KEYS = ["divergence", "temperature", "teacher_source", "interval", "alpha", "gamma"]
DDK_KEYS += ["valid_per_domain"]
DDK_DATA = f"results/data/{DDK['data']}"
# Models whose per-domain perplexity and math accuracy are measured: name -> seeds.
DOMAIN_EVAL_MODELS = {"teacher": SEEDS[:1]}
DOMAIN_EVAL_MODELS.update({DDK["teacher"]: SEEDS[:1]})
DOMAIN_EVAL_MODELS.update({name: SEEDS for name in TRAINING_RUNS.values()})


# A download: runs where snakemake runs (compute nodes may have no network).
localrules:
    pretrain_data,


rule pretrain_data:
    input:
        local_sources(config["data"]["pretrain"]["domains"]),
    output:
        expand("results/data/pretrain/{split}.jsonl", split=["train", "valid"]),
    log:
        "results/logs/data/pretrain.log",
    conda:
        ENV
    resources:
        mem_mb=8000,
        runtime=runtime_min(120),
    params:
        settings=as_json(config["data"]["pretrain"]),
    shell:
        "python -m distill.data.pretrain --settings {params.settings:q} "
        "--out-dir results/data/pretrain > {log} 2>&1"


rule train_ddk:
    input:
        **teacher_inputs("ddk", DDK["data"], {"teacher": DDK["teacher"]}),
        student=model_dir(DDK["student"], "{seed}"),
        train=f"{DDK_DATA}/train.jsonl",
        valid=f"{DDK_DATA}/valid.jsonl",
    output:
        directory("results/models/student_ddk_{mode}/seed{seed}"),
    log:
        "results/logs/train/student_ddk_{mode}/seed{seed}.log",
    benchmark:
        "results/benchmarks/train/student_ddk_{mode}/seed{seed}.tsv"
    wildcard_constraints:
        mode="ddk|no_smoothing|equal|natural",
    retries: train_retries("ddk")
    conda:
        ENV
    threads: 2
    resources:
        **train_resources("ddk", mem_mb=16000),
    params:
        launch=launch_command("ddk"),
        objective="ddk",
        settings=stage_train_json("ddk"),
        objective_settings=objective_json("ddk", DDK_KEYS, mode=ddk_mode),
        seed=run_seed("ddk"),
        precision=PRECISION,
        ckpt_dir=checkpoint_dir,
    shell:
        TRAIN_SHELL


rule domain_eval:
    input:
        model=domain_eval_model,
        valid=f"{DDK_DATA}/valid.jsonl",
        math="results/data/math/test.jsonl",
    output:
        "results/eval/domains/{model}/seed{seed}.json",
    log:
        "results/logs/eval/domains/{model}/seed{seed}.log",
    benchmark:
        "results/benchmarks/eval/domains/{model}/seed{seed}.tsv"
    conda:
        ENV
    threads: EVAL_THREADS  # generation-bound: two such jobs side by side (eval.smk)
    resources:
        mem_mb=8000,
        runtime=runtime_min(30),
        gpu=domain_eval_gpus,
    params:
        max_len=train_settings("ddk")["max_len"],
        max_new_tokens=config["eval"]["math_max_new_tokens"],
        precision=PRECISION,
    shell:
        "python -m distill.eval.domains evaluate --model {input.model} --valid {input.valid} "
        "--math-test {input.math} --max-len {params.max_len} "
        "--max-new-tokens {params.max_new_tokens} --precision {params.precision} "
        "--out {output} > {log} 2>&1"


rule domain_table:
    input:
        domain_result_files(),
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
    params:
        results=domain_results(),
    shell:
        "python -m distill.eval.domains table --results {params.results} --out {output} "
        "> {log} 2>&1"


rule ddk_weights_figure:
    input:
        run_dirs({weighted_mode(): ddk_run_name(weighted_mode())}),
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
    params:
        runs=run_logs({weighted_mode(): ddk_run_name(weighted_mode())}),
    shell:
        "python -m distill.plots.ddk weights --runs {params.runs} --out {output.png} "
        "> {log} 2>&1"


rule ddk_domain_ppl_figure:
    input:
        domain_result_files(),
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
        results=domain_results(),
    shell:
        "python -m distill.plots.ddk ppl --results {params.results} --out {output.png} "
        "> {log} 2>&1"
