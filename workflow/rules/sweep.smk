# The teacher-feedback λ' sweep: a fresh student on the sweep's own math data, one run per λ'
# (and replicate seed) with the same data order and budget, then loss against compute.

SWEEP = config["sweep"]
SWEEP_KEYS = ["lam", "temperature", "top_p", "max_new_tokens", "heldout_examples"]
SWEEP_RUNS = {f"{lam:g}": f"sweep/lambda_{lam:g}" for lam in SWEEP["lambdas"]}
check_sweep_launch()  # a launch the feedback objective cannot run under stops the plan


rule sweep_student_init:
    input:
        model_dir(SWEEP["teacher"]),
    output:
        directory("results/models/sweep/student_init/seed{seed}"),
    log:
        "results/logs/models/sweep_student_init/seed{seed}.log",
    conda:
        ENV
    resources:
        mem_mb=8000,
        runtime=runtime_min(30),
    params:
        spec=as_json({"method": "sizes", "sizes": SWEEP["student_sizes"]}),
    shell:
        "python -m distill.models.student --teacher {input} --spec {params.spec:q} "
        "--seed {wildcards.seed} --out {output} > {log} 2>&1"


rule sweep_train:
    input:
        student="results/models/sweep/student_init/seed{seed}",
        teacher=model_dir(SWEEP["teacher"]),
        train="results/data/sweep_math/train.jsonl",
        valid="results/data/sweep_math/valid.jsonl",
    output:
        directory("results/models/sweep/lambda_{lam}/seed{seed}"),
    log:
        "results/logs/train/sweep/lambda_{lam}/seed{seed}.log",
    benchmark:
        "results/benchmarks/train/sweep/lambda_{lam}/seed{seed}.tsv"
    wildcard_constraints:
        lam=r"\d+(\.\d+)?",
    retries: train_retries("sweep")
    conda:
        ENV
    threads: 2
    resources:
        **train_resources("sweep", mem_mb=16000),
    params:
        launch=launch_command("sweep"),
        objective="feedback",
        settings=stage_train_json("sweep"),
        objective_settings=sweep_objective,
        seed=run_seed("sweep"),
        precision=PRECISION,
        ckpt_dir=checkpoint_dir,
    shell:
        TRAIN_SHELL


rule sweep_teacher_eval:
    input:
        model=model_dir(SWEEP["teacher"]),
        test="results/data/sweep_math/test.jsonl",
    output:
        "results/eval/sweep_teacher.json",
    log:
        "results/logs/eval/sweep_teacher.log",
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=8000,
        runtime=runtime_min(30),
        gpu=model_gpus(SWEEP["teacher"]),
    params:
        max_len=train_settings("sweep")["max_len"],
        max_new_tokens=SWEEP["max_new_tokens"],
        precision=PRECISION,
    shell:
        "python -m distill.eval.domains evaluate --model {input.model} --valid {input.test} "
        "--math-test {input.test} --max-len {params.max_len} "
        "--max-new-tokens {params.max_new_tokens} --precision {params.precision} "
        "--out {output} > {log} 2>&1"


rule lambda_sweep_figure:
    input:
        runs=run_dirs(SWEEP_RUNS),
        teacher="results/eval/sweep_teacher.json",
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
        runs=run_logs(SWEEP_RUNS),
        smooth=SWEEP["smooth"],
        title=sweep_title(),
    shell:
        "python -m distill.plots.lambda_sweep --runs {params.runs} --smooth {params.smooth} "
        "--teacher-metrics {input.teacher} --title {params.title:q} --out {output.png} "
        "> {log} 2>&1"
