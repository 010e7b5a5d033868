# The teacher-feedback λ' sweep (seed 001): a fresh student on the sweep's own math data, one run
# per λ' with the same seed, data order and budget, then the figure of loss against compute.

SWEEP = config["sweep"]
SWEEP_RUNS = expand("results/models/sweep/lambda_{lam}", lam=SWEEP["lambdas"])
# The sweep's training settings: the shared `train` with the sweep's own overrides.
SWEEP_TRAIN = {**config["train"], **SWEEP["train"]}


# Objective settings shared by every run (λ' and the teacher come per run); grad_accum and
# eval_every follow the runs' train settings.
SWEEP_OBJECTIVE = {
    **{
        k: SWEEP[k]
        for k in ["lam", "temperature", "top_p", "max_new_tokens", "heldout_examples"]
    },
    "grad_accum": SWEEP_TRAIN["grad_accum"],
    "eval_every": SWEEP_TRAIN["eval_every"],
}
SWEEP_TITLE = (
    f"λ' sweep: {config['models']['teacher'].rsplit('/', 1)[-1]} → student "
    f"(hidden {SWEEP['student_sizes'].get('hidden_size', '?')}, "
    f"{SWEEP['student_sizes'].get('num_hidden_layers', '?')} layers), "
    f"{', '.join(SWEEP['data']['modules'])}"
)


rule sweep_math_data:
    output:
        expand("results/data/sweep_math/{split}.jsonl", split=SPLITS),
    log:
        "results/logs/data/sweep_math.log",
    conda:
        ENV
    resources:
        mem_mb=2000,
        runtime=runtime_min(10),
    params:
        modules=SWEEP["data"]["modules"],
        data=SWEEP["data"],
        seed=config["seed"],
    shell:
        "python -m distill.data.math --modules {params.modules} "
        "--difficulty {params.data[difficulty]} --n-train {params.data[n_train]} "
        "--n-valid {params.data[n_valid]} --n-test {params.data[n_test]} "
        "--seed {params.seed} --out-dir results/data/sweep_math > {log} 2>&1"


rule sweep_student_init:
    input:
        "results/models/teacher",
    output:
        directory("results/models/sweep_student_init"),
    log:
        "results/logs/models/sweep_student_init.log",
    conda:
        ENV
    resources:
        mem_mb=8000,
        runtime=runtime_min(30),
    params:
        spec=as_json({"sizes": SWEEP["student_sizes"]}),
        seed=config["seed"],
    shell:
        "python -m distill.models.student --teacher {input} --spec {params.spec:q} "
        "--seed {params.seed} --out {output} > {log} 2>&1"


rule sweep_train:
    input:
        student="results/models/sweep_student_init",
        teacher="results/models/teacher",
        train="results/data/sweep_math/train.jsonl",
        valid="results/data/sweep_math/valid.jsonl",
    output:
        directory("results/models/sweep/lambda_{lam}"),
    log:
        "results/logs/train/sweep/lambda_{lam}.log",
    benchmark:
        "results/benchmarks/train/sweep/lambda_{lam}.tsv"
    wildcard_constraints:
        lam=r"\d+(\.\d+)?",
    conda:
        ENV
    threads: 2
    resources:
        **TRAIN_RESOURCES,
        mem_mb=8000,
        runtime=runtime_min(60),
    params:
        launch=TRAIN_LAUNCH,
        settings=as_json(SWEEP_TRAIN),
        objective=lambda wildcards, input: as_json(
            {
                **SWEEP_OBJECTIVE,
                "lam_prime": float(wildcards.lam),
                "teacher": input.teacher,
            }
        ),
        seed=config["seed"],
        precision=PRECISION,
    shell:
        "{params.launch} --objective feedback --student {input.student} "
        "--train {input.train} --valid {input.valid} --settings {params.settings:q} "
        "--objective-settings {params.objective:q} --seed {params.seed} "
        "--precision {params.precision} "
        "--ckpt-dir results/checkpoints/sweep/lambda_{wildcards.lam} --out {output} > {log} 2>&1"


rule lambda_sweep_figure:
    input:
        SWEEP_RUNS,
    output:
        png=report(
            "results/figures/lambda_sweep.png",
            caption="../report/lambda_sweep.rst",
            category="Teacher feedback (λ' sweep)",
        ),
        pdf="results/figures/lambda_sweep.pdf",
    log:
        "results/logs/figures/lambda_sweep.log",
    conda:
        ENV
    params:
        runs=[
            f"{lam}={run}/train_log.csv"
            for lam, run in zip(SWEEP["lambdas"], SWEEP_RUNS)
        ],
        smooth=SWEEP["smooth"],
        title=SWEEP_TITLE,
    shell:
        "python -m distill.plots.lambda_sweep --runs {params.runs} --smooth {params.smooth} "
        "--title {params.title:q} --out {output.png} > {log} 2>&1"
