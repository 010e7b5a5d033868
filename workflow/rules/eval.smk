# Judging: MT-Bench (FastChat's questions, single-answer grading) and AlpacaEval (alpaca_eval's
# weighted pairwise protocol) for every model in EVAL_MODELS, then the radar and the
# MT-Bench-vs-AlpacaEval figures. One judge for both benchmarks (config eval.judge).
from pathlib import Path
from urllib.parse import quote

EVAL = config["eval"]
JUDGE = EVAL["judge"]
MTBENCH = "results/eval/mtbench"
ALPACA = "results/eval/alpaca"
MODEL_NAMES = "|".join(MODEL_DIRS)  # the {model} wildcard: a known model name only
# One thread per generation/judging job: on 2 cores two of them run side by side. Small-batch
# decoding of a small model gains little from a second thread, and a 2-thread job beside any
# other busy process slowed about 20x here (OpenMP threads spin-waiting for the shared core).
EVAL_THREADS = 1
# An in-process judge is a workflow model: its directory is an input of every judging rule.
JUDGE_INPUTS = [MODEL_DIRS[JUDGE["model"]]] if JUDGE["kind"] == "transformers" else []
ALPACA_INSTRUCTIONS = {
    "heldout": "results/data/instructions/heldout.jsonl",
    "hub": "hub",
}.get(EVAL["alpaca"]["instructions"], EVAL["alpaca"]["instructions"])
REFERENCE_NAME = (
    EVAL["alpaca"]["reference_outputs"] or EVAL["alpaca"]["reference_model"]
)
REFERENCE_OUTPUTS = (
    EVAL["alpaca"]["reference_outputs"]
    or f"{ALPACA}/outputs/{EVAL['alpaca']['reference_model']}.json"
)


# The judge's settings for --judge-json (distill.eval.judges.judge_from_config), and its name,
# mode and scale for the figures' titles and captions.
if JUDGE["kind"] == "transformers":
    JUDGE_LABEL = (
        f"{JUDGE['model']}, in-process; MT-Bench rating {JUDGE['rating']}, "
        "AlpacaEval P(m)/P(M)"
    )
    JUDGE_JSON = as_json(
        {
            "kind": "transformers",
            "model_dir": MODEL_DIRS[JUDGE["model"]],
            "name": JUDGE["model"],
            "precision": PRECISION,
            "rating": JUDGE["rating"],
            "max_new_tokens": JUDGE["max_new_tokens"],
        }
    )
else:
    JUDGE_LABEL = (
        f"{JUDGE['model']} (OpenAI-compatible); MT-Bench [[x]], AlpacaEval P(m)/P(M)"
    )
    JUDGE_KEYS = ["model", "base_url", "api_key_env", "max_concurrency", "max_retries"]
    JUDGE_KEYS += ["timeout_s", "rating"]
    # Paid replies outlive reruns: one cache per judge model, outside any rule's outputs.
    JUDGE_CACHE = f"results/eval/judge_cache/{quote(JUDGE['model'], safe='')}.jsonl"
    JUDGE_JSON = as_json(
        {
            "kind": "openai",
            **{k: JUDGE[k] for k in JUDGE_KEYS},
            "cache_path": JUDGE_CACHE,
        }
    )


rule mtbench_data:
    output:
        questions=f"{MTBENCH}/data/question.jsonl",
        prompts=f"{MTBENCH}/data/judge_prompts.jsonl",
        reference=f"{MTBENCH}/data/reference_answer/gpt-4.jsonl",
        manifest=f"{MTBENCH}/data/manifest.json",
    log:
        "results/logs/eval/mtbench_data.log",
    conda:
        ENV
    resources:
        mem_mb=1000,
        runtime=runtime_min(10),
    params:
        source=EVAL["mtbench"]["data_source"],
        out_dir=lambda wildcards, output: Path(output.questions).parent,
    shell:
        "python -m distill.eval.mtbench_data --source {params.source:q} "
        "--out-dir {params.out_dir} > {log} 2>&1"


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
        model=lambda wildcards: MODEL_DIRS[wildcards.model],
        questions=f"{MTBENCH}/questions.jsonl",
    output:
        f"{MTBENCH}/answers/{{model}}.jsonl",
    log:
        "results/logs/eval/mtbench_answers/{model}.log",
    benchmark:
        "results/benchmarks/eval/mtbench_answers/{model}.tsv"
    wildcard_constraints:
        model=MODEL_NAMES,
    conda:
        ENV
    threads: EVAL_THREADS
    resources:
        mem_mb=8000,
        runtime=runtime_min(60),
        gpu=GPUS,
    params:
        max_new_tokens=EVAL["mtbench"]["max_new_tokens"],
        batch_size=EVAL["batch_size"],
        backend=EVAL["backend"],
        seed=config["seed"],
        precision=PRECISION,
    shell:
        "python -m distill.eval.answers mtbench --model-dir {input.model} --name {wildcards.model} "
        "--questions {input.questions} --max-new-tokens {params.max_new_tokens} "
        "--batch-size {params.batch_size} --backend {params.backend} --seed {params.seed} "
        "--precision {params.precision} --out {output} > {log} 2>&1"


rule mtbench_judgments:
    input:
        JUDGE_INPUTS,
        answers=f"{MTBENCH}/answers/{{model}}.jsonl",
        questions=f"{MTBENCH}/questions.jsonl",
        prompts=f"{MTBENCH}/data/judge_prompts.jsonl",
        reference=f"{MTBENCH}/data/reference_answer/gpt-4.jsonl",
    output:
        f"{MTBENCH}/judgments/{{model}}.jsonl",
    log:
        "results/logs/eval/mtbench_judgments/{model}.log",
    benchmark:
        "results/benchmarks/eval/mtbench_judgments/{model}.tsv"
    wildcard_constraints:
        model=MODEL_NAMES,
    conda:
        ENV
    threads: EVAL_THREADS
    resources:
        mem_mb=8000,
        runtime=runtime_min(60),
        gpu=GPUS,
    params:
        judge=JUDGE_JSON,
    shell:
        "python -m distill.eval.mtbench judge --answers {input.answers} "
        "--questions {input.questions} --judge-prompts {input.prompts} "
        "--reference {input.reference} --judge-json {params.judge:q} --out {output} "
        "> {log} 2>&1"


rule mtbench_scores:
    input:
        judgments=expand(f"{MTBENCH}/judgments/{{model}}.jsonl", model=EVAL_MODELS),
        questions=f"{MTBENCH}/questions.jsonl",
    output:
        f"{MTBENCH}/scores.csv",
    log:
        "results/logs/eval/mtbench_scores.log",
    conda:
        ENV
    resources:
        mem_mb=1000,
        runtime=runtime_min(5),
    shell:
        "python -m distill.eval.mtbench score --judgments {input.judgments} "
        "--questions {input.questions} --out {output} > {log} 2>&1"


rule alpaca_outputs:
    input:
        model=lambda wildcards: MODEL_DIRS[wildcards.model],
        instructions=[] if ALPACA_INSTRUCTIONS == "hub" else [ALPACA_INSTRUCTIONS],
    output:
        f"{ALPACA}/outputs/{{model}}.json",
    log:
        "results/logs/eval/alpaca_outputs/{model}.log",
    benchmark:
        "results/benchmarks/eval/alpaca_outputs/{model}.tsv"
    wildcard_constraints:
        model=MODEL_NAMES,
    conda:
        ENV
    threads: EVAL_THREADS
    resources:
        mem_mb=8000,
        runtime=runtime_min(60),
        gpu=GPUS,
    params:
        # the instructions file, or "hub" where there is none (Namedlist str: space-joined)
        instructions=lambda wildcards, input: str(input.instructions) or "hub",
        n=EVAL["alpaca"]["n_instructions"],
        max_new_tokens=EVAL["alpaca"]["max_new_tokens"],
        temperature=EVAL["alpaca"]["temperature"],
        batch_size=EVAL["batch_size"],
        backend=EVAL["backend"],
        seed=config["seed"],
        precision=PRECISION,
    shell:
        "python -m distill.eval.answers alpaca --model-dir {input.model} --name {wildcards.model} "
        "--instructions {params.instructions:q} --n-instructions {params.n} "
        "--max-new-tokens {params.max_new_tokens} --temperature {params.temperature} "
        "--batch-size {params.batch_size} --backend {params.backend} --seed {params.seed} "
        "--precision {params.precision} --out {output} > {log} 2>&1"


rule alpaca_annotations:
    input:
        JUDGE_INPUTS,
        outputs=f"{ALPACA}/outputs/{{model}}.json",
        reference=REFERENCE_OUTPUTS,
    output:
        f"{ALPACA}/annotations/{{model}}.json",
    log:
        "results/logs/eval/alpaca_annotations/{model}.log",
    benchmark:
        "results/benchmarks/eval/alpaca_annotations/{model}.tsv"
    wildcard_constraints:
        model=MODEL_NAMES,
    conda:
        ENV
    threads: EVAL_THREADS
    resources:
        mem_mb=8000,
        runtime=runtime_min(60),
        gpu=GPUS,
    params:
        judge=JUDGE_JSON,
    shell:
        "python -m distill.eval.alpaca annotate --model-outputs {input.outputs} "
        "--reference-outputs {input.reference} --judge-json {params.judge:q} "
        "--out {output} > {log} 2>&1"


rule alpaca_leaderboard:
    input:
        expand(f"{ALPACA}/annotations/{{model}}.json", model=EVAL_MODELS),
    output:
        report(
            f"{ALPACA}/leaderboard.csv",
            caption="../report/leaderboard.rst",
            category="Evaluation",
        ),
    log:
        "results/logs/eval/alpaca_leaderboard.log",
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
        f"{MTBENCH}/scores.csv",
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
        judge_label=JUDGE_LABEL,
        paper="--paper-reference" if EVAL["figures"]["paper_reference"] else "",
    shell:
        "python -m distill.plots.radar --scores {input} --judge {params.judge_label:q} "
        "{params.paper} --out {output.png} > {log} 2>&1"


rule evaluation_figure:
    input:
        mtbench=f"{MTBENCH}/scores.csv",
        alpaca=f"{ALPACA}/leaderboard.csv",
    output:
        png=report(
            "results/figures/evaluation.png",
            caption="../report/evaluation.rst",
            category="Evaluation",
        ),
        pdf="results/figures/evaluation.pdf",
    log:
        "results/logs/figures/evaluation.log",
    conda:
        ENV
    resources:
        mem_mb=2000,
        runtime=runtime_min(5),
    params:
        judge_label=JUDGE_LABEL,
        reference=REFERENCE_NAME,
        paper="" if EVAL["figures"]["paper_reference"] else "--no-paper",
    shell:
        "python -m distill.plots.evaluation --mtbench {input.mtbench} --alpaca {input.alpaca} "
        "--judge {params.judge_label:q} --reference {params.reference:q} {params.paper} "
        "--out {output.png} > {log} 2>&1"
