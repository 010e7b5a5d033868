"""Per-domain held-out cross-entropy, perplexity and math accuracy of one model.

Used for DDK's and DAE's comparisons (the DDK rows and the math test split) and for the λ' sweep's
teacher (the sweep's test split as both the CE rows and the questions), and a table over models.

Cross-entropy: the token-mean CE on the target tokens of each domain's rows (response tokens of
chat rows), measured once per model by distill.objectives.ddk.domain_perplexity (the measure DDK's
re-weighting uses); perplexity = exp(CE); "all" is the token-weighted mean over domains.
Accuracy: the model answers each math question greedily and `response_is_correct` checks it.

    python -m distill.eval.domains evaluate --model results/models/student_kd/seed0 \
        --valid results/data/instructions/valid.jsonl --math-test results/data/math/test.jsonl \
        --max-len 160 --precision bf16 --out results/eval/domains/kd/seed0.json

    # the λ' sweep's teacher on the sweep's test split (CE and accuracy for the figure's caption)
    python -m distill.eval.domains evaluate --model results/models/<sweep teacher> \
        --valid results/data/sweep_math/test.jsonl --math-test results/data/sweep_math/test.jsonl \
        --max-len 160 --precision bf16 --out results/eval/sweep_teacher.json

    # one row per model, mean ± 95 % interval over the seeds given (label=path, once per seed)
    python -m distill.eval.domains table --results kd=results/eval/domains/kd/seed0.json \
        kd=results/eval/domains/kd/seed1.json --out results/eval/domains/accuracy.csv
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import pandas as pd
import torch

from distill.batching import encode_examples
from distill.data.math import answers_match
from distill.generation import generate, load_for_generation
from distill.io import atomic_path, main_guard, read_examples, setup_logging, write_json
from distill.objectives.ddk import domain_perplexity

NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")


def response_is_correct(response: str, answer: str) -> bool:
    """Whether a free-form response gives `answer`.

    Chat models wrap answers in text ("The answer is 4."), so: the whole response matches, or
    (numeric answers) the last number in its first line does, or (word answers such as True)
    the first line contains the answer as a word.
    """
    if answers_match(response, answer):
        return True
    first_line = response.strip().split("\n", 1)[0]
    if NUMBER.fullmatch(answer.strip()):
        numbers = NUMBER.findall(first_line)
        return bool(numbers) and answers_match(numbers[-1], answer)
    return re.search(rf"\b{re.escape(answer.strip())}\b", first_line) is not None


def domain_cross_entropy(model, examples, pad_id: int, device) -> dict[str, float]:
    """{domain: token-mean CE, "all": token-weighted mean over domains} on the target tokens.

    examples: distill.batching.Encoded rows; pad_id: the tokenizer's. One pass of
    distill.objectives.ddk.domain_perplexity (the one per-domain CE of the project): its
    perplexities are exp(CE) per domain.
    """
    ppl = domain_perplexity(model, examples, pad_id, device)
    tokens: dict[str, int] = {}
    for example in examples:
        tokens[example.domain] = tokens.get(example.domain, 0) + int(example.target_mask.sum())
    ce = {domain: math.log(p) for domain, p in ppl.items()}
    total = sum(tokens[d] for d in ce)
    ce["all"] = sum(ce[d] * tokens[d] for d in ppl) / total
    return ce


def math_accuracy(model, tokenizer, rows, max_new_tokens) -> tuple[dict, dict]:
    """({domain: share correct, "all": micro-average}, {domain: questions, "all": total})."""
    questions = [r["messages"][:-1] for r in rows]
    replies = generate(model, tokenizer, questions, max_new_tokens, batch_size=16)
    hits: dict[str, list[int]] = {}
    for row, reply in zip(rows, replies, strict=True):
        for key in (row["domain"], "all"):
            counts = hits.setdefault(key, [0, 0])
            counts[0] += response_is_correct(reply, row["answer"])
            counts[1] += 1
    keys = sorted(hits, key=lambda k: (k == "all", k))
    return {k: hits[k][0] / hits[k][1] for k in keys}, {k: hits[k][1] for k in keys}


def evaluate_model(model_dir, valid_rows, math_rows, max_len, max_new_tokens, precision) -> dict:
    """{"ce": {domain | "all": CE}, "ppl": {domain: exp(CE)}, "accuracy": {domain: share
    correct}, "n": {domain: questions}, "accuracy_all", "n_all"}."""
    model, tokenizer = load_for_generation(model_dir, precision)
    examples = encode_examples(tokenizer, valid_rows, max_len)
    ce = domain_cross_entropy(model, examples, tokenizer.pad_token_id, model.device)
    accuracy, n = math_accuracy(model, tokenizer, math_rows, max_new_tokens)
    return {
        "model": str(model_dir),
        "ce": ce,
        "ppl": {d: math.exp(v) for d, v in ce.items() if d != "all"},
        "accuracy": {d: a for d, a in accuracy.items() if d != "all"},
        "n": {d: k for d, k in n.items() if d != "all"},
        "accuracy_all": accuracy["all"],
        "n_all": n["all"],
    }


def read_result(path: str) -> dict:
    """A result JSON of `evaluate`, with accuracy_all filled for files written before it."""
    result = json.loads(Path(path).read_text())
    if "accuracy_all" not in result:
        total = sum(result["n"].values())
        result["accuracy_all"] = sum(result["accuracy"][d] * n for d, n in result["n"].items())
        result["accuracy_all"] /= total
    return result


def table(specs: list[str]) -> pd.DataFrame:
    """One row per label: the mean over its seeds of overall and per-domain accuracy and
    perplexity, the half-width of the 95 % t-interval of overall accuracy, and n (seeds)."""
    from distill.plots.common import mean_interval, parse_runs

    rows = []
    for label, paths in parse_runs(specs, "--results").items():
        flat = []
        for path in paths:
            result = read_result(path)
            one = {"acc_all": result["accuracy_all"]}
            one.update({f"acc_{d}": a for d, a in result["accuracy"].items()})
            one.update({f"ppl_{d}": p for d, p in result["ppl"].items()})
            flat.append(one)
        frame = pd.DataFrame(flat)
        row = {"model": label, "n": len(paths)}
        row.update(frame.mean().round(4).to_dict())
        _, half, _ = mean_interval(frame[["acc_all"]].to_numpy())
        row["acc_all_ci95"] = round(float(half[0]), 4)
        rows.append(row)
    return pd.DataFrame(rows)


def cmd_evaluate(args: argparse.Namespace) -> None:
    log = setup_logging()
    torch.manual_seed(0)
    result = evaluate_model(
        args.model, read_examples(args.valid), read_examples(args.math_test), args.max_len,
        args.max_new_tokens, args.precision,
    )  # fmt: skip
    write_json(args.out, result)
    log.info("%s: CE %.4f, accuracy %.4f", args.model, result["ce"]["all"], result["accuracy_all"])


def cmd_table(args: argparse.Namespace) -> None:
    with atomic_path(args.out) as tmp:
        table(args.results).to_csv(tmp, index=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    one = sub.add_parser("evaluate", help="CE, perplexity and accuracy of one model")
    one.add_argument("--model", required=True)
    one.add_argument("--valid", required=True, help="rows whose per-domain CE is measured")
    one.add_argument("--math-test", required=True, help="rows with an `answer` to ask")
    one.add_argument("--max-len", type=int, required=True)
    one.add_argument("--max-new-tokens", type=int, required=True, help="tokens per math answer")
    one.add_argument("--precision", required=True, choices=["bf16", "fp32"])
    one.add_argument("--out", required=True)
    one.set_defaults(run=cmd_evaluate)
    many = sub.add_parser("table", help="one row per model (mean over seeds)")
    many.add_argument("--results", nargs="+", required=True, help="label=path, once per seed")
    many.add_argument("--out", required=True)
    many.set_defaults(run=cmd_table)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main_guard(main)
