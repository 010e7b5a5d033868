"""The judge check: how well the judge orders answers whose order is known, before it is believed.

    python -m distill.eval.judge_check \\
        --questions results/eval/mtbench/questions.jsonl \\
        --judge-prompts results/eval/mtbench/data/judge_prompts.jsonl \\
        --reference results/eval/mtbench/data/reference_answer/gpt-4.jsonl \\
        --teacher-answers results/eval/mtbench/seed0/answers/teacher.jsonl \\
        --alpaca-reference results/eval/alpaca/seed0/outputs/teacher.json \\
        --annotator alpaca_eval_gpt4 --n-items 8 --seed 0 --judge-json '{...}' \\
        --out results/eval/judge_check.csv --items results/eval/judge_check_items.jsonl

Good answers: MT-Bench's reference answer (turn 1) where it has one, the teacher's answer
otherwise; AlpacaEval's reference outputs (text-davinci-003's in AlpacaEval 1.0, else the reference
model's). Each good answer is set against three degraded ones (DEGRADATIONS): its first third of
words (`truncated`), its words in a seeded random order (`shuffled`), and the good answer to the
next question (`other_answer`).
- MT-Bench (single grades, FastChat's turn-1 prompts, the judge's own rating mode): accuracy =
  share of (good, degraded) pairs where the good answer gets the strictly higher grade; a pair
  with an unparsed grade (-1) counts as not ordered.
- AlpacaEval (pairwise, the configured annotator's protocol): each pair is judged in both orders;
  accuracy = share of pairs where the good answer is preferred in both orders; position bias =
  share of all judgments that prefer the first-shown output, minus 0.5 (a verdict that cannot be
  read counts for accuracy as not preferred and is left out of the bias).
Writes one CSV row per (benchmark, degradation) and an `all` row per benchmark; --items keeps
every judged item (texts, grades, preferences) as JSON lines.
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Mapping, Sequence

import pandas as pd

from distill.eval import alpaca, mtbench
from distill.io import InputError, atomic_path, main_guard, setup_logging, write_jsonl

DEGRADATIONS = ("truncated", "shuffled", "other_answer")
COLUMNS = ["benchmark", "degradation", "n_pairs", "accuracy", "position_bias", "judge"]


# --- degraded answers (pure) ---------------------------------------------------------------------


def degrade(text: str, kind: str, other: str, rng: random.Random) -> str:
    """`text` made worse in one known way (see DEGRADATIONS); `other` answers another question."""
    words = text.split()
    if kind == "truncated":
        return (
            " ".join(words[: max(1, len(words) // 3)]) if len(words) > 1 else text[: len(text) // 2]
        )
    if kind == "shuffled":
        shuffled = words[:]
        rng.shuffle(shuffled)
        if shuffled == words and len(words) > 1:
            shuffled.reverse()  # a shuffle that changed nothing is no degradation
        return " ".join(shuffled)
    if kind == "other_answer":
        return other
    raise ValueError(f"unknown degradation {kind!r}")


def degraded_pairs(goods: Sequence[str], seed: int) -> list[tuple[int, str, str]]:
    """(item index, degradation, degraded text) for every good answer and degradation; the
    `other_answer` of item i is item i+1's good answer (cyclically). Pairs whose degraded text
    equals the good one (a one-word answer, identical answers) are left out."""
    rng = random.Random(seed)
    pairs = []
    for i, good in enumerate(goods):
        other = goods[(i + 1) % len(goods)]
        for kind in DEGRADATIONS:
            bad = degrade(good, kind, other, rng)
            if bad.strip() and bad != good:
                pairs.append((i, kind, bad))
    return pairs


# --- the arithmetic (pure) -----------------------------------------------------------------------


def grade_accuracy(good_scores: Sequence[float], bad_scores: Sequence[float]) -> float:
    """Share of pairs whose good answer is graded strictly higher (-1: unparsed, never higher)."""
    hits = [
        g != mtbench.UNPARSED and b != mtbench.UNPARSED and g > b
        for g, b in zip(good_scores, bad_scores, strict=True)
    ]
    return sum(hits) / len(hits) if hits else math.nan


def pairwise_metrics(
    good_first: Sequence[float], good_second: Sequence[float]
) -> tuple[float, float]:
    """(accuracy, position bias) from shown-order preferences (1 = first shown better ... 2).

    good_first[i]: the preference when pair i shows the good answer first; good_second[i]: when it
    shows it second. NaN: a verdict that could not be read.
    """
    both = [a < 1.5 and b > 1.5 for a, b in zip(good_first, good_second, strict=True)]
    read = [p for p in (*good_first, *good_second) if not math.isnan(p)]
    accuracy = sum(both) / len(both) if both else math.nan
    bias = sum(p < 1.5 for p in read) / len(read) - 0.5 if read else math.nan
    return accuracy, bias


def summarise(items: Sequence[Mapping], judge: str) -> pd.DataFrame:
    """The CSV's rows from judged items (see `check_mtbench` / `check_alpaca` records)."""
    rows = []
    for benchmark in ("mtbench", "alpaca"):
        mine = [r for r in items if r["benchmark"] == benchmark]
        for kind in (*DEGRADATIONS, "all"):
            group = [r for r in mine if kind in ("all", r["degradation"])]
            if not group:
                continue
            if benchmark == "mtbench":
                accuracy = grade_accuracy(
                    [r["good_score"] for r in group], [r["bad_score"] for r in group]
                )
                bias = math.nan
            else:
                accuracy, bias = pairwise_metrics(
                    [r["good_first"] for r in group], [r["good_second"] for r in group]
                )
            values = (benchmark, kind, len(group), accuracy, bias, judge)
            rows.append(dict(zip(COLUMNS, values, strict=True)))
    return pd.DataFrame(rows, columns=COLUMNS)


# --- judging ----------------------------------------------------------------------------------


def mtbench_goods(questions, references, teacher_answers, n_items) -> list[tuple[dict, str, str]]:
    """(question, good turn-1 answer, "reference" | "teacher") for the first n_items questions."""
    goods = []
    for q in questions[:n_items]:
        qid = q["question_id"]
        if qid in references:
            goods.append((q, references[qid]["choices"][0]["turns"][0], "reference"))
        elif qid in teacher_answers:
            goods.append((q, teacher_answers[qid]["choices"][0]["turns"][0], "teacher"))
        else:
            raise InputError(
                f"question {qid}: no reference answer and no teacher answer. Fix: "
                "pass the teacher's answers to the same questions."
            )
    return goods


def check_mtbench(judge, goods, judge_prompts, references, seed: int) -> list[dict]:
    """Grade every good answer and its degraded versions (turn 1); one record per pair."""
    pairs = degraded_pairs([g for _, g, _ in goods], seed)

    def request(question, text):
        answer = mtbench.make_answer(question["question_id"], "judge_check", [text], tstamp=0.0)
        ref = references.get(question["question_id"])
        return mtbench.build_judge_request(
            question, answer, judge_prompts, multi_turn=False, ref_answer=ref
        )

    texts = [g for _, g, _ in goods] + [bad for _, _, bad in pairs]
    questions = [q for q, _, _ in goods] + [goods[i][0] for i, _, _ in pairs]
    scores = [
        j["score"] for j in mtbench.judge_answers(judge, list(map(request, questions, texts)))
    ]
    good_scores, bad_scores = scores[: len(goods)], scores[len(goods) :]
    return [
        {
            "benchmark": "mtbench",
            "degradation": kind,
            "item": goods[i][0]["question_id"],
            "good_source": goods[i][2],
            "good": goods[i][1],
            "bad": bad,
            "good_score": good_scores[i],
            "bad_score": bad_score,
        }
        for (i, kind, bad), bad_score in zip(pairs, bad_scores, strict=True)
    ]


def check_alpaca(judge, references: Sequence[Mapping], annotator: str, seed: int) -> list[dict]:
    """Judge every (good, degraded) pair in both orders by the annotator's protocol."""
    from distill.eval.judges import judge_map

    setup = alpaca.Annotator(annotator)
    pairs = degraded_pairs([r["output"] for r in references], seed)

    def one(pair):
        i, kind, bad = pair
        instruction, good = references[i]["instruction"], references[i]["output"]
        first, _ = setup.judge_shown(judge, instruction, good, bad)
        second, _ = setup.judge_shown(judge, instruction, bad, good)
        return {
            "benchmark": "alpaca",
            "degradation": kind,
            "item": instruction,
            "good": good,
            "bad": bad,
            "good_first": first,
            "good_second": second,
        }

    return judge_map(judge, one, pairs)


# --- the caption's line --------------------------------------------------------------------------


def summary_line(csv_path: str, min_accuracy: float, benchmarks: Sequence[str]) -> str:
    """One sentence for a figure and its caption: the check's numbers and, below min_accuracy,
    that the judge cannot rank models at this scale."""
    table = pd.read_csv(csv_path)
    table = table[table["degradation"] == "all"].set_index("benchmark")
    parts, failed = [], []
    for benchmark in benchmarks:
        if benchmark not in table.index:
            continue
        row = table.loc[benchmark]
        if benchmark == "mtbench":
            parts.append(f"MT-Bench accuracy {row['accuracy']:.2f} ({row['n_pairs']} pairs)")
        else:
            parts.append(
                f"AlpacaEval accuracy {row['accuracy']:.2f} in both orders "
                f"({row['n_pairs']} pairs), position bias {row['position_bias']:+.2f}"
            )
        if not row["accuracy"] >= min_accuracy:
            failed.append("MT-Bench" if benchmark == "mtbench" else "AlpacaEval")
    judge = table["judge"].iloc[0] if len(table) else "?"
    line = (
        f"Judge check ({judge}; good answers against truncated, shuffled and other-question "
        f"answers): {'; '.join(parts)}."
    )
    if failed:
        line += (
            f" Below the minimum accuracy {min_accuracy:.2f} ({', '.join(failed)}): this "
            "judge cannot rank models at this scale; read the scores as noise."
        )
    return line


# --- CLI -----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    from distill.eval.judges import judge_from_config

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--questions", required=True, help="the asked MT-Bench questions")
    p.add_argument("--judge-prompts", required=True)
    p.add_argument("--reference", required=True, help="MT-Bench reference answers (gpt-4.jsonl)")
    p.add_argument("--teacher-answers", required=True, help="the teacher's MT-Bench answers")
    p.add_argument("--alpaca-reference", required=True, help="AlpacaEval reference outputs")
    p.add_argument("--annotator", required=True)
    p.add_argument("--n-items", type=int, required=True, help="questions and instructions used")
    p.add_argument("--seed", type=int, required=True, help="seed of the shuffled answers")
    mtbench.add_judge_arguments(p)
    p.add_argument("--out", required=True)
    p.add_argument("--items", required=True, help="every judged item, JSON lines")
    args = p.parse_args(argv)
    log = setup_logging()
    references = mtbench.read_answers(args.reference)
    goods = mtbench_goods(
        mtbench.read_questions(args.questions),
        references,
        mtbench.read_answers(args.teacher_answers),
        args.n_items,
    )
    instructions = alpaca.read_model_outputs(args.alpaca_reference)[: args.n_items]
    judge = judge_from_config(*mtbench.judge_settings(args))
    items = check_mtbench(
        judge, goods, mtbench.read_judge_prompts(args.judge_prompts), references, args.seed
    )
    items += check_alpaca(judge, instructions, args.annotator, args.seed)
    table = summarise(items, judge.name)
    write_jsonl(args.items, items)
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, index=False)
    log.info("judge check:\n%s", table.to_string(index=False))


if __name__ == "__main__":
    main_guard(main)
