# Judging: MT-Bench (FastChat's questions, single-answer grading) and AlpacaEval (alpaca_eval's
# annotator: 1.0's ranking or 2.0's weighted protocol) of every model in eval.models, once per
# replicate seed; the judge check before any judging; the radar and MT-Bench-vs-AlpacaEval
# figures over seeds. One judge for both benchmarks (config eval.judge). Downloads (the MT-Bench
# files, AlpacaEval's evaluation set) are local rules: compute jobs never download.
EVAL = config["eval"]
JUDGE = EVAL["judge"]
ALPACA_CONFIG = EVAL["alpaca"]
MTBENCH = "results/eval/mtbench"
ALPACA = "results/eval/alpaca"
JUDGE_CHECK = "results/eval/judge_check.csv"
ALPACA_SET = f"{ALPACA}/data/alpaca_eval.json"  # AlpacaEval's evaluation set, local
# The {model} wildcard: a known model name only.
EVAL_MODEL_NAMES = "|".join(["teacher", *STUDENT_DIRS])
# An in-process judge is a workflow model (a student: its first seed's run).
JUDGE_DIR = (
    model_dir(JUDGE["model"], SEEDS[0]) if JUDGE["kind"] == "transformers" else None
)
JUDGE_INPUTS = [JUDGE_DIR] if JUDGE_DIR else []
JUDGE_GPUS = model_gpus(JUDGE["model"]) if JUDGE_DIR else 0
ALPACA_INSTRUCTIONS = (
    "results/data/instructions/heldout.jsonl"
    if ALPACA_CONFIG["instructions"] == "heldout"
    else ALPACA_SET
)
check_alpaca_reference()
REFERENCE_NAME = alpaca_reference_name()


JUDGE_JSON = as_json(judge_settings())
JUDGE_LABEL = (
    f"{JUDGE['model']}, in-process, {JUDGE['rating']} ratings"
    if JUDGE_DIR
    else f"{JUDGE['model']} (OpenAI-compatible), written verdicts"
) + f"; AlpacaEval annotator {ALPACA_CONFIG['annotator']}"


rule mtbench_data:
    output:
        questions=f"{MTBENCH}/data/question.jsonl",
        prompts=f"{MTBENCH}/data/judge_prompts.jsonl",
        reference=f"{MTBENCH}/data/reference_answer/gpt-4.jsonl",
        manifest=f"{MTBENCH}/data/manifest.json",
    log:
        "results/logs/eval/mtbench_data.log",
    localrule: True
    conda:
        ENV
    resources:
        mem_mb=1000,
        runtime=runtime_min(10),
    params:
        source=EVAL["mtbench"]["data_source"],
        out_dir=output_folder,
    shell:
        "python -m distill.eval.mtbench_data --source {params.source:q} "
        "--out-dir {params.out_dir} > {log} 2>&1"


rule alpaca_data:
    input:
        alpaca_data_input,
    output:
        ALPACA_SET,
    log:
        "results/logs/eval/alpaca_data.log",
    localrule: True
    conda:
        ENV
    resources:
        mem_mb=1000,
        runtime=runtime_min(10),
    params:
        source=ALPACA_CONFIG["instructions"],
    shell:
        "python -m distill.eval.alpaca_data --source {params.source:q} --out {output} "
        "> {log} 2>&1"


rule mtbench_questions:
    input:
        f"{MTBENCH}/data/question.jsonl",
    output:
        f"{MTBENCH}/questions.jsonl",
    log:
        "results/logs/eval/mtbench_questions.log",
    conda:
        ENV
    resources:
        mem_mb=1000,
        runtime=runtime_min(5),
    params:
        ids=" ".join(map(str, EVAL["mtbench"]["question_ids"])),
        n=EVAL["mtbench"]["n_questions"],
    shell:
        "python -m distill.eval.answers questions --questions {input} "
        "--question-ids {params.ids} --n-questions {params.n} --out {output} > {log} 2>&1"


rule mtbench_answers:
    input:
        model=eval_model,
        questions=f"{MTBENCH}/questions.jsonl",
    output:
        f"{MTBENCH}/seed{{seed}}/answers/{{model}}.jsonl",
    log:
        "results/logs/eval/mtbench_answers/seed{seed}/{model}.log",
    benchmark:
        "results/benchmarks/eval/mtbench_answers/seed{seed}/{model}.tsv"
    wildcard_constraints:
        model=EVAL_MODEL_NAMES,
    conda:
        ENV
    threads: EVAL_THREADS
    resources:
        mem_mb=8000,
        runtime=runtime_min(60),
        gpu=eval_gpus,
    params:
        max_new_tokens=EVAL["mtbench"]["max_new_tokens"],
        batch_size=EVAL["batch_size"],
        backend=EVAL["backend"],
        precision=PRECISION,
    shell:
        "python -m distill.eval.answers mtbench --model-dir {input.model} --name {wildcards.model} "
        "--questions {input.questions} --max-new-tokens {params.max_new_tokens} "
        "--batch-size {params.batch_size} --backend {params.backend} --seed {wildcards.seed} "
        "--precision {params.precision} --out {output} > {log} 2>&1"


rule alpaca_outputs:
    input:
        model=eval_model,
        instructions=ALPACA_INSTRUCTIONS,
    output:
        f"{ALPACA}/seed{{seed}}/outputs/{{model}}.json",
    log:
        "results/logs/eval/alpaca_outputs/seed{seed}/{model}.log",
    benchmark:
        "results/benchmarks/eval/alpaca_outputs/seed{seed}/{model}.tsv"
    wildcard_constraints:
        model=EVAL_MODEL_NAMES,
    conda:
        ENV
    threads: EVAL_THREADS
    resources:
        mem_mb=8000,
        runtime=runtime_min(60),
        gpu=eval_gpus,
    params:
        n=ALPACA_CONFIG["n_instructions"],
        max_new_tokens=ALPACA_CONFIG["max_new_tokens"],
        temperature=ALPACA_CONFIG["temperature"],
        batch_size=EVAL["batch_size"],
        backend=EVAL["backend"],
        precision=PRECISION,
    shell:
        "python -m distill.eval.answers alpaca --model-dir {input.model} --name {wildcards.model} "
        "--instructions {input.instructions} --n-instructions {params.n} "
        "--max-new-tokens {params.max_new_tokens} --temperature {params.temperature} "
        "--batch-size {params.batch_size} --backend {params.backend} --seed {wildcards.seed} "
        "--precision {params.precision} --out {output} > {log} 2>&1"


rule judge_check:
    input:
        JUDGE_INPUTS,
        questions=f"{MTBENCH}/questions.jsonl",
        prompts=f"{MTBENCH}/data/judge_prompts.jsonl",
        reference=f"{MTBENCH}/data/reference_answer/gpt-4.jsonl",
        teacher=f"{MTBENCH}/seed{SEEDS[0]}/answers/teacher.jsonl",
        alpaca_reference=alpaca_reference_file(SEEDS[0]),
    output:
        csv=report(
            JUDGE_CHECK, caption="../report/judge_check.rst", category="Evaluation"
        ),
        details="results/eval/judge_check_items.jsonl",
    log:
        "results/logs/eval/judge_check.log",
    benchmark:
        "results/benchmarks/eval/judge_check.tsv"
    conda:
        ENV
    threads: EVAL_THREADS
    resources:
        mem_mb=8000,
        runtime=runtime_min(60),
        gpu=JUDGE_GPUS,
    params:
        judge=JUDGE_JSON,
        judge_label=JUDGE_LABEL,
        annotator=ALPACA_CONFIG["annotator"],
        n=JUDGE["check_items"],
        seed=SEEDS[0],
    shell:
        "python -m distill.eval.judge_check --questions {input.questions} "
        "--judge-prompts {input.prompts} --reference {input.reference} "
        "--teacher-answers {input.teacher} --alpaca-reference {input.alpaca_reference} "
        "--annotator {params.annotator} --n-items {params.n} --seed {params.seed} "
        "--judge-json {params.judge:q} --out {output.csv} --items {output.details} > {log} 2>&1"


rule mtbench_judgments:
    input:
        JUDGE_INPUTS,
        check=JUDGE_CHECK,  # the judge is measured before it judges
        answers=f"{MTBENCH}/seed{{seed}}/answers/{{model}}.jsonl",
        questions=f"{MTBENCH}/questions.jsonl",
        prompts=f"{MTBENCH}/data/judge_prompts.jsonl",
        reference=f"{MTBENCH}/data/reference_answer/gpt-4.jsonl",
    output:
        f"{MTBENCH}/seed{{seed}}/judgments/{{model}}.jsonl",
    log:
        "results/logs/eval/mtbench_judgments/seed{seed}/{model}.log",
    benchmark:
        "results/benchmarks/eval/mtbench_judgments/seed{seed}/{model}.tsv"
    wildcard_constraints:
        model=EVAL_MODEL_NAMES,
    conda:
        ENV
    threads: EVAL_THREADS
    resources:
        mem_mb=8000,
        runtime=runtime_min(60),
        gpu=JUDGE_GPUS,
    params:
        judge=JUDGE_JSON,
    shell:
        "python -m distill.eval.mtbench judge --answers {input.answers} "
        "--questions {input.questions} --judge-prompts {input.prompts} "
        "--reference {input.reference} --judge-json {params.judge:q} --out {output} "
        "> {log} 2>&1"


rule mtbench_scores:
    input:
        judgments=mtbench_judgments_of_seed,
        questions=f"{MTBENCH}/questions.jsonl",
    output:
        f"{MTBENCH}/seed{{seed}}/scores.csv",
    log:
        "results/logs/eval/mtbench_scores/seed{seed}.log",
    conda:
        ENV
    resources:
        mem_mb=1000,
        runtime=runtime_min(5),
    shell:
        "python -m distill.eval.mtbench score --judgments {input.judgments} "
        "--questions {input.questions} --out {output} > {log} 2>&1"


rule alpaca_annotations:
    input:
        JUDGE_INPUTS,
        check=JUDGE_CHECK,  # the judge is measured before it judges
        outputs=f"{ALPACA}/seed{{seed}}/outputs/{{model}}.json",
        reference=alpaca_reference,
    output:
        f"{ALPACA}/seed{{seed}}/annotations/{{model}}.json",
    log:
        "results/logs/eval/alpaca_annotations/seed{seed}/{model}.log",
    benchmark:
        "results/benchmarks/eval/alpaca_annotations/seed{seed}/{model}.tsv"
    wildcard_constraints:
        model=EVAL_MODEL_NAMES,
    conda:
        ENV
    threads: EVAL_THREADS
    resources:
        mem_mb=8000,
        runtime=runtime_min(60),
        gpu=JUDGE_GPUS,
    params:
        judge=JUDGE_JSON,
        annotator=ALPACA_CONFIG["annotator"],
    shell:
        "python -m distill.eval.alpaca annotate --annotator {params.annotator} "
        "--model-outputs {input.outputs} --reference-outputs {input.reference} "
        "--judge-json {params.judge:q} --out {output} > {log} 2>&1"


rule alpaca_leaderboard:
    input:
        alpaca_annotations_of_seed,
    output:
        report(
            f"{ALPACA}/seed{{seed}}/leaderboard.csv",
            caption="../report/leaderboard.rst",
            category="Evaluation",
        ),
    log:
        "results/logs/eval/alpaca_leaderboard/seed{seed}.log",
    conda:
        ENV
    resources:
        mem_mb=2000,
        runtime=runtime_min(5),
    params:
        judge_label=JUDGE_LABEL,
        reference=REFERENCE_NAME,
    shell:
        "python -m distill.eval.alpaca score --annotations {input} --out {output} > {log} 2>&1"


rule radar_figure:
    input:
        scores=seed_files("results/eval/mtbench/seed{seed}/scores.csv"),
        check=JUDGE_CHECK,
    output:
        png=report(
            "results/figures/radar.png",
            caption="../report/radar.rst",
            category="Evaluation",
        ),
        pdf="results/figures/radar.pdf",
    log:
        "results/logs/figures/radar.log",
    conda:
        ENV
    resources:
        mem_mb=2000,
        runtime=runtime_min(5),
    params:
        scores=repeated(
            "--scores", seed_files("results/eval/mtbench/seed{seed}/scores.csv")
        ),
        judge_label=JUDGE_LABEL,
        judge_check=mtbench_check_line,
        min_accuracy=JUDGE["min_accuracy"],
        paper="--paper-reference" if EVAL["figures"]["paper_reference"] else "",
    shell:
        "python -m distill.plots.radar {params.scores} --judge {params.judge_label:q} "
        "--judge-check {input.check} --min-accuracy {params.min_accuracy} "
        "{params.paper} --out {output.png} > {log} 2>&1"


rule evaluation_figure:
    input:
        mtbench=seed_files("results/eval/mtbench/seed{seed}/scores.csv"),
        alpaca=seed_files("results/eval/alpaca/seed{seed}/leaderboard.csv"),
        math=math_result_files(),
        check=JUDGE_CHECK,
    output:
        png=report(
            "results/figures/evaluation.png",
            caption="../report/evaluation.rst",
            category="Evaluation",
        ),
        pdf="results/figures/evaluation.pdf",
        table=report(
            "results/eval/summary.csv",
            caption="../report/eval_summary.rst",
            category="Evaluation",
        ),
    log:
        "results/logs/figures/evaluation.log",
    conda:
        ENV
    resources:
        mem_mb=2000,
        runtime=runtime_min(5),
    params:
        mtbench=repeated(
            "--mtbench", seed_files("results/eval/mtbench/seed{seed}/scores.csv")
        ),
        alpaca=repeated(
            "--alpaca", seed_files("results/eval/alpaca/seed{seed}/leaderboard.csv")
        ),
        math=repeated("--math", math_results()),
        judge_label=JUDGE_LABEL,
        judge_check=both_check_line,
        min_accuracy=JUDGE["min_accuracy"],
        reference=REFERENCE_NAME,
        paper="" if EVAL["figures"]["paper_reference"] else "--no-paper",
    shell:
        "python -m distill.plots.evaluation {params.mtbench} {params.alpaca} {params.math} "
        "--judge {params.judge_label:q} --reference {params.reference:q} {params.paper} "
        "--judge-check {input.check} --min-accuracy {params.min_accuracy} "
        "--table {output.table} --out {output.png} > {log} 2>&1"
