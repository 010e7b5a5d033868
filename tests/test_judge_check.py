"""The judge check: degraded answers, its arithmetic against hand counts, the caption's sentence,
and both benchmarks judged by stand-in judges whose verdicts are known. Offline, no model.

    pytest tests/test_judge_check.py
"""

from __future__ import annotations

import math
import random

import pandas as pd
import pytest

from distill.eval import alpaca, judge_check, mtbench

# --- degraded answers --------------------------------------------------------------------------


def test_degradations():
    rng = random.Random(0)
    text = "one two three four five six seven eight nine"
    assert judge_check.degrade(text, "truncated", "", rng) == "one two three"
    shuffled = judge_check.degrade(text, "shuffled", "", rng)
    assert sorted(shuffled.split()) == sorted(text.split()) and shuffled != text
    assert judge_check.degrade("a b", "shuffled", "", random.Random(1)) == "b a"  # never a no-op
    assert judge_check.degrade(text, "other_answer", "another", rng) == "another"
    assert judge_check.degrade("word", "truncated", "", rng) == "wo"
    with pytest.raises(ValueError):
        judge_check.degrade(text, "reversed", "", rng)


def test_degraded_pairs_are_seeded_and_skip_non_degradations():
    goods = ["alpha beta gamma delta", "x", "same", "same"]
    pairs = judge_check.degraded_pairs(goods, seed=3)
    assert pairs == judge_check.degraded_pairs(goods, seed=3)
    assert (0, "other_answer", "x") in pairs  # the next item's good answer
    assert (2, "other_answer", "same") not in pairs  # identical to the good answer: left out
    assert not [p for p in pairs if p[0] == 1 and p[1] == "shuffled"]  # one word: no shuffle
    assert all(bad != goods[i] for i, _, bad in pairs)


# --- the arithmetic, against hand counts --------------------------------------------------------


def test_grade_accuracy():
    # good > bad in pairs 0 and 3; a tie (1), a reversal (2), an unparsed grade on either side
    good = [8, 5, 3, 9, -1, 7]
    bad = [2, 5, 6, 1, 1, -1]
    assert judge_check.grade_accuracy(good, bad) == pytest.approx(2 / 6)
    assert math.isnan(judge_check.grade_accuracy([], []))


def test_pairwise_accuracy_and_position_bias():
    # pair 0: good wins in both orders; pair 1: the first position always wins; pair 2: the second
    # always wins; pair 3: weighted preferences, good wins both; pair 4: an unreadable verdict
    good_first = [1.0, 1.0, 2.0, 1.2, math.nan]
    good_second = [2.0, 1.0, 2.0, 1.9, 2.0]
    accuracy, bias = judge_check.pairwise_metrics(good_first, good_second)
    assert accuracy == pytest.approx(2 / 5)
    firsts = [1, 1, 0, 1, 1, 0, 0, 0, 0]  # the 9 readable verdicts that prefer the first shown
    assert bias == pytest.approx(sum(firsts) / 9 - 0.5)
    # a judge that always picks the first position: no accuracy, bias +0.5
    assert judge_check.pairwise_metrics([1.0] * 4, [1.0] * 4) == (0.0, 0.5)
    # ties (1.5) are neither a win nor a first-position preference
    assert judge_check.pairwise_metrics([1.5], [1.5]) == (0.0, -0.5)


def test_summarise_rows():
    items = [
        {"benchmark": "mtbench", "degradation": "truncated", "good_score": 8, "bad_score": 3},
        {"benchmark": "mtbench", "degradation": "shuffled", "good_score": 4, "bad_score": 6},
        {"benchmark": "alpaca", "degradation": "truncated", "good_first": 1.0, "good_second": 2.0},
        {"benchmark": "alpaca", "degradation": "other_answer", "good_first": 1.0,
         "good_second": 1.0},
    ]  # fmt: skip
    table = judge_check.summarise(items, "judge-x").set_index(["benchmark", "degradation"])
    assert table.loc[("mtbench", "truncated"), "accuracy"] == 1.0
    assert table.loc[("mtbench", "all"), "accuracy"] == 0.5
    assert table.loc[("mtbench", "all"), "n_pairs"] == 2
    assert math.isnan(table.loc[("mtbench", "all"), "position_bias"])
    assert table.loc[("alpaca", "all"), "accuracy"] == 0.5
    assert table.loc[("alpaca", "all"), "position_bias"] == pytest.approx(3 / 4 - 0.5)
    assert ("alpaca", "shuffled") not in table.index  # no such items, no row
    assert set(table["judge"]) == {"judge-x"}


def test_summary_line_says_when_the_judge_cannot_rank(tmp_path):
    path = tmp_path / "check.csv"
    rows = [("mtbench", "all", 24, 0.9, math.nan, "j"), ("alpaca", "all", 24, 0.25, 0.4, "j")]
    pd.DataFrame(rows, columns=judge_check.COLUMNS).to_csv(path, index=False)
    line = judge_check.summary_line(str(path), 0.7, ["mtbench", "alpaca"])
    assert "MT-Bench accuracy 0.90 (24 pairs)" in line
    assert "AlpacaEval accuracy 0.25" in line and "position bias +0.40" in line
    assert "cannot rank models at this scale" in line and "(AlpacaEval)" in line
    radar_line = judge_check.summary_line(str(path), 0.7, ["mtbench"])
    assert "cannot rank" not in radar_line and "AlpacaEval" not in radar_line


# --- both benchmarks with stand-in judges --------------------------------------------------------

PROMPTS = {
    name: {"name": name, "type": "single", "system_prompt": "Judge.", "output_format": "[[x]]",
           "prompt_template": template}
    for name, template in [
        ("single-v1", "[Question]\n{question}\n[Answer]\n{answer}"),
        ("single-math-v1", "[Question]\n{question}\n[Ref]\n{ref_answer_1}\n[Answer]\n{answer}"),
    ]
}  # fmt: skip


class LengthJudge:
    """Grades an answer by its word count (capped at 10); in AlpacaEval writes a ranking that
    prefers the longer output, or (position_only) always the first shown."""

    name = "length"
    rating = "generate"

    def __init__(self, position_only=False):
        self.position_only = position_only

    def complete(self, messages, *, max_tokens, temperature):
        text = messages[-1]["content"]
        if "[Answer]" in text:
            answer = text.split("[Answer]\n", 1)[1]
            return f"Rating: [[{min(10, len(set(answer.split())))}]]"
        first, second = (s.split('"""', 1)[0] for s in text.split('"answer": """')[1:3])
        better = "model_1" if self.position_only or len(first) >= len(second) else "model_2"
        return alpaca.ranking_text(better)

    def map(self, fn, items):
        return [fn(x) for x in items]


def test_mtbench_check_with_a_known_judge():
    questions = [
        {"question_id": 81, "category": "writing", "turns": ["Write.", "Again."]},
        {"question_id": 111, "category": "math", "turns": ["Sum?", "Again."]},
    ]
    references = {111: mtbench.make_answer(111, "gpt-4", ["one two three four five six"], tstamp=0)}
    teacher = {81: mtbench.make_answer(81, "teacher", ["a b c d e f g h i"], tstamp=0)}
    goods = judge_check.mtbench_goods(questions, references, teacher, n_items=2)
    assert [source for _, _, source in goods] == ["teacher", "reference"]
    items = judge_check.check_mtbench(LengthJudge(), goods, PROMPTS, references, seed=0)
    by = {(r["item"], r["degradation"]): r for r in items}
    # truncation cuts distinct words: the good answer wins; a shuffle keeps them: a tie
    assert by[(81, "truncated")]["good_score"] == 9 and by[(81, "truncated")]["bad_score"] == 3
    assert by[(81, "shuffled")]["good_score"] == by[(81, "shuffled")]["bad_score"]
    table = judge_check.summarise(items, "length").set_index(["benchmark", "degradation"])
    assert table.loc[("mtbench", "truncated"), "accuracy"] == 1.0
    assert table.loc[("mtbench", "shuffled"), "accuracy"] == 0.0
    assert table.loc[("mtbench", "all"), "n_pairs"] == 6


def test_alpaca_check_with_a_known_judge():
    references = [
        {"instruction": f"Question {i}?", "output": " ".join(["word"] * (6 + 3 * i)),
         "generator": "text_davinci_003", "dataset": "d"}
        for i in range(3)
    ]  # fmt: skip
    items = judge_check.check_alpaca(LengthJudge(), references, alpaca.RANKING, seed=0)
    table = judge_check.summarise(items, "length").set_index(["benchmark", "degradation"])
    assert table.loc[("alpaca", "truncated"), "accuracy"] == 1.0  # longer wins in both orders
    assert table.loc[("alpaca", "truncated"), "position_bias"] == 0.0
    biased = judge_check.check_alpaca(LengthJudge(True), references, alpaca.RANKING, seed=0)
    table = judge_check.summarise(biased, "first").set_index(["benchmark", "degradation"])
    assert table.loc[("alpaca", "all"), "accuracy"] == 0.0
    assert table.loc[("alpaca", "all"), "position_bias"] == 0.5
