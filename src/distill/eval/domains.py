"""Per-domain held-out perplexity and math accuracy of one model (DDK's and DAE's comparisons).

Perplexity: exp of the token-mean cross-entropy on the response tokens of each domain's
held-out rows (the same measure DDK's re-weighting uses). Accuracy: the model answers each
held-out math question greedily and `distill.data.math.answers_match` checks the answer.

    python -m distill.eval.domains --model results/models/student_kd \
        --valid results/data/instructions/valid.jsonl --math-test results/data/math/test.jsonl \
        --max-len 160 --max-new-tokens 16 --out results/eval/domains/kd.json

    python -m distill.eval.domains table --results results/eval/domains/*.json \
        --out results/eval/domains/accuracy.csv
"""

from __future__ import annotations

import argparse
import json
import re
import sys
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


def evaluate_model(model_dir, valid_rows, math_rows, max_len, max_new_tokens, precision) -> dict:
    """{"ppl": {domain: ppl}, "accuracy": {domain: share correct}, "n": {domain: rows}}."""
    model, tokenizer = load_for_generation(model_dir, precision)
    examples = encode_examples(tokenizer, valid_rows, max_len)
    ppl = domain_perplexity(model, examples, tokenizer.pad_token_id, model.device)
    questions = [r["messages"][:-1] for r in math_rows]
    answers = generate(model, tokenizer, questions, max_new_tokens, batch_size=16)
    correct: dict[str, list[int]] = {}
    for row, answer in zip(math_rows, answers, strict=True):
        hits = correct.setdefault(row["domain"], [0, 0])
        hits[0] += response_is_correct(answer, row["answer"])
        hits[1] += 1
    return {
        "model": str(model_dir),
        "ppl": ppl,
        "accuracy": {d: h / n for d, (h, n) in sorted(correct.items())},
        "n": {d: n for d, (_, n) in sorted(correct.items())},
    }


def table(paths: list[str]) -> pd.DataFrame:
    """One row per model: accuracy per math domain and overall (micro-average)."""
    rows = []
    for path in paths:
        result = json.loads(Path(path).read_text())
        row = {"model": Path(path).stem}
        row.update({f"acc_{d}": round(a, 4) for d, a in result["accuracy"].items()})
        total = sum(result["n"].values())
        row["acc_all"] = round(
            sum(result["accuracy"][d] * n for d, n in result["n"].items()) / total, 4
        )
        row.update({f"ppl_{d}": round(p, 3) for d, p in result["ppl"].items()})
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    if sys.argv[1:2] == ["table"]:
        parser = argparse.ArgumentParser(description="Per-domain results of several models.")
        parser.add_argument("table")
        parser.add_argument("--results", nargs="+", required=True)
        parser.add_argument("--out", required=True)
        args = parser.parse_args()
        with atomic_path(args.out) as tmp:
            table(args.results).to_csv(tmp, index=False)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--valid", required=True)
    parser.add_argument("--math-test", required=True)
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    log = setup_logging()
    torch.manual_seed(0)
    result = evaluate_model(
        args.model, read_examples(args.valid), read_examples(args.math_test), args.max_len,
        args.max_new_tokens, args.precision,
    )  # fmt: skip
    write_json(args.out, result)
    log.info("%s: accuracy %s", args.model, result["accuracy"])


if __name__ == "__main__":
    main_guard(main)
