"""AlpacaEval: the weighted pairwise protocol (2.0) and the ranking protocol (1.0,
alpaca_eval_gpt4) against alpaca_eval's own annotator and parser, the files, and the leaderboard
against alpaca_eval.metrics.get_winrate. All offline.

    pytest tests/test_alpaca.py
"""

from __future__ import annotations

import json
import math
import random
import re
import warnings

import pandas as pd
import pytest
from fake_openai import FakeOpenAI

from distill.eval import alpaca
from distill.io import InputError

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import alpaca_eval.annotators.base as ae_base
    import alpaca_eval.completion_parsers as ae_parsers
    import alpaca_eval.utils as ae_utils
    from alpaca_eval.annotators import PairwiseAnnotator
    from alpaca_eval.metrics import get_winrate
    from alpaca_eval.processors import RandomSwitchTwoColumnsProcessor


# --- a deterministic stand-in judge, shared by alpaca_eval's pipeline and ours -------------------
# Each output carries a quality tag <<Qn>>; the judge's log-probs are -0.3 * (the other output's
# quality) for the identifier of the output shown first ("m") and second ("M"), read from the text
# in the order the outputs appear, so it depends on the order the protocol shows them in.


def fake_logprobs(text: str) -> dict[str, float]:
    q_first, q_second = (int(x) for x in re.findall(r"<<Q(\d+)>>", text)[-2:])
    return {"m": -0.3 * q_second, "M": -0.3 * q_first}


class StandInJudge:
    """The weighted protocol's stand-in: log-probs of "m"/"M" from the quality tags."""

    name = "stand-in"
    rating = "expected"

    def __init__(self):
        self.calls: list[list[dict]] = []

    def complete(self, messages, *, max_tokens, temperature):
        raise AssertionError("the weighted protocol asks only for log-probs")

    def choice_logprobs(self, messages, choices):
        self.calls.append(messages)
        assert choices == ["m", "M"]
        return fake_logprobs("\n".join(m["content"] for m in messages))

    def continuation_logprobs(self, messages, prefill, continuations):
        raise AssertionError("the weighted protocol asks only for next-token log-probs")

    def rate(self, messages):
        raise AssertionError("AlpacaEval does not rate")

    def map(self, fn, items):
        return [fn(x) for x in items]


def fake_ranking(text: str) -> str:
    """alpaca_eval_gpt4's answer of a judge that ranks the output with the higher quality tag
    first (the first-shown one on a tie), as GPT-4 writes it."""
    q_first, q_second = (int(x) for x in re.findall(r"<<Q(\d+)>>", text)[-2:])
    first, second = ("model_1", "model_2") if q_first >= q_second else ("model_2", "model_1")
    return f"[{{'model': '{first}', 'rank': 1}}, {{'model': '{second}', 'rank': 2}}]"


class RankingJudge(StandInJudge):
    """AlpacaEval 1.0's stand-ins: `generate` writes fake_ranking; `expected` gives the
    log-probabilities of "model_1" and "model_2" at the rank-1 place from the same tags."""

    def __init__(self, rating: str):
        super().__init__()
        self.rating = rating
        self.asked: list[dict] = []

    def complete(self, messages, *, max_tokens, temperature):
        self.calls.append(messages)
        self.asked.append({"max_tokens": max_tokens, "temperature": temperature})
        return fake_ranking(messages[-1]["content"])

    def continuation_logprobs(self, messages, prefill, continuations):
        self.calls.append(messages)
        self.asked.append({"prefill": prefill, "continuations": continuations})
        q_first, q_second = (
            int(x) for x in re.findall(r"<<Q(\d+)>>", messages[-1]["content"])[-2:]
        )
        return {"model_1": -0.5 * (q_second + 1), "model_2": -0.5 * (q_first + 1) - 1e-3}


def outputs(n: int = 40, seed: int = 0):
    rng = random.Random(seed)
    ref, mod = [], []
    for i in range(n):
        instruction = f"Instruction {i}: " + rng.choice(["explain", "list", "write", "solve"])
        ref.append(
            {
                "instruction": instruction,
                "output": f"reference answer {i} <<Q{rng.randint(0, 9)}>>",
                "generator": "teacher",
                "dataset": "helpful_base",
            }
        )
        same = i % 10 == 3  # some identical pairs
        out = ref[-1]["output"] if same else f"model {'x' * i} <<Q{rng.randint(0, 9)}>>"
        mod.append(
            {
                "instruction": instruction,
                "output": out,
                "generator": "student",
                "dataset": "helpful_base",
            }
        )
    return ref, mod


# --- the order swap ----------------------------------------------------------------------------


def test_switch_rule_matches_alpaca_eval():
    instructions = [f"instruction number {i} ✓" for i in range(300)]
    ours = [alpaca.is_switched_outputs(x) for x in instructions]
    assert 0 < sum(ours) < len(ours)
    # alpaca_eval's own helper, with the seed string its processor builds
    lib = [
        ae_utils.random_seeded_choice("is_switched_outputs" + x + "0", [False, True])
        for x in instructions
    ]
    assert ours == lib
    # and its processor, configured as SinglePairwiseAnnotator configures it (seed 0)
    proc = RandomSwitchTwoColumnsProcessor(
        two_columns_to_switch=["output_1", "output_2"],
        random_seed_columns=["instruction"],
        _switch_column="is_switched_outputs",
        seed=0,
    )
    df = pd.DataFrame({"instruction": instructions, "output_1": "a", "output_2": "b"})
    assert proc.preprocess(df)["is_switched_outputs"].tolist() == ours


def test_annotator_seed_is_zero():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ann = PairwiseAnnotator(annotators_config=alpaca.WEIGHTED, caching_path=None)
    [single] = ann.annotators.values()
    [proc] = [p for p in single.processors if isinstance(p, RandomSwitchTwoColumnsProcessor)]
    assert proc.seed == alpaca.ANNOTATOR_SEED == 0 and proc._switch_column == "is_switched_outputs"


# --- preference from log-probs -------------------------------------------------------------------


def test_preference_from_logprobs():
    lp = {"m": math.log(0.8), "M": math.log(0.2)}
    assert alpaca.preference_from_logprobs(lp, switched=False) == pytest.approx(
        1.2
    )  # first shown = output_1
    assert alpaca.preference_from_logprobs(lp, switched=True) == pytest.approx(
        1.8
    )  # first shown = output_2
    # unnormalised log-probs: only the ratio matters
    lp = {"m": math.log(0.3), "M": math.log(0.1)}
    assert alpaca.preference_from_logprobs(lp, switched=False) == pytest.approx(1.25)
    # a token outside the judge's top list has probability 0
    assert alpaca.preference_from_logprobs({"m": -0.1, "M": -math.inf}, switched=False) == 1.0
    assert alpaca.preference_from_logprobs({"m": -0.1}, switched=True) == 2.0
    assert math.isnan(alpaca.preference_from_logprobs({}, switched=False))
    # very small probabilities stay finite
    p = alpaca.preference_from_logprobs({"m": -1000.0, "M": -1001.0}, switched=False)
    assert p == pytest.approx(2 - 1 / (1 + math.exp(-1)))


def test_identical_outputs_need_no_judge_call():
    judge = StandInJudge()
    rows = [
        {
            "instruction": "hi",
            "output_1": "same",
            "generator_1": "t",
            "output_2": "same",
            "generator_2": "s",
        }
    ]
    for annotator in (alpaca.WEIGHTED, alpaca.RANKING):
        [rec] = alpaca.annotate(judge, rows, annotator)
        assert rec["preference"] == 1.5 and judge.calls == []


def test_prompt_is_alpaca_evals_file():
    annotator = alpaca.Annotator(alpaca.WEIGHTED)
    text = annotator.template
    assert "{instruction}" in text and "{output_1}" in text and "{output_2}" in text
    messages, switched = alpaca.build_messages(
        annotator, "Say hi {output_1}", "Hello <<Q1>>", "Hey <<Q2>>"
    )
    assert [m["role"] for m in messages] == ["system", "user"]
    first, second = ("Hey", "Hello") if switched else ("Hello", "Hey")
    user = messages[1]["content"]
    assert user.index(first) < user.index(second)
    assert '"model_identifier": "m"' in user and user.rstrip().endswith("## Best Model Identifier")


# --- the whole protocol against alpaca_eval's annotator ------------------------------------------


def test_annotations_equal_alpaca_evals_pipeline(monkeypatch):
    ref, mod = outputs()
    seen_prompts = []

    def fake_completions(prompts, **kwargs):
        seen_prompts.extend(prompts)
        return {
            "completions": ["m"] * len(prompts),
            "completions_all": [
                {
                    "logprobs": {
                        "content": [
                            {
                                "top_logprobs": [
                                    {"token": t, "logprob": v} for t, v in fake_logprobs(p).items()
                                ]
                            }
                        ]
                    }
                }
                for p in prompts
            ],
            "price_per_example": [0.0] * len(prompts),
            "time_per_example": [0.0] * len(prompts),
        }

    # alpaca_eval's own annotator, its completion call replaced by the stand-in judge
    monkeypatch.setattr(ae_base, "get_fn_completions", lambda name: fake_completions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ann = PairwiseAnnotator(annotators_config=alpaca.WEIGHTED, caching_path=None)
        theirs = ann.annotate_head2head(outputs_1=ref, outputs_2=mod)
    judge = StandInJudge()
    ours = alpaca.annotate(judge, alpaca.pair_outputs(ref, mod), alpaca.WEIGHTED)

    theirs_by = {r["instruction"]: r for r in theirs}
    assert len(ours) == len(theirs) == 40
    for r in ours:
        t = theirs_by[r["instruction"]]
        assert r["preference"] == pytest.approx(t["preference"], abs=1e-12), r["instruction"]
        for k in ("output_1", "generator_1", "output_2", "generator_2", "annotator"):
            assert r[k] == t[k]
    # the judge saw exactly the chat messages alpaca_eval would send (same calls, same text)
    assert len(judge.calls) == len(seen_prompts) == 36  # 4 identical pairs are not judged
    expected = sorted(json.dumps(ae_utils.prompt_to_chatml(p)) for p in seen_prompts)
    assert sorted(json.dumps(m) for m in judge.calls) == expected


# --- files ---------------------------------------------------------------------------------------


def test_model_outputs_round_trip(tmp_path):
    ref, _ = outputs(3)
    path = tmp_path / "model_outputs.json"
    alpaca.write_model_outputs(path, ref)
    assert alpaca.read_model_outputs(path) == ref
    assert pd.read_json(path).columns.tolist() == ["instruction", "output", "generator", "dataset"]
    with pytest.raises(InputError, match="needs instruction, output, generator"):
        alpaca.write_model_outputs(path, [{"instruction": "x"}])
    (tmp_path / "bad.json").write_text('{"instruction": "x"}')
    with pytest.raises(InputError, match="expected a JSON list"):
        alpaca.read_model_outputs(tmp_path / "bad.json")


def test_annotations_round_trip(tmp_path):
    ref, mod = outputs(12)
    recs = alpaca.annotate(StandInJudge(), alpaca.pair_outputs(ref, mod), alpaca.WEIGHTED)
    recs[0]["preference"] = math.nan  # a judge that listed neither token
    path = tmp_path / "annotations.json"
    alpaca.write_annotations(path, recs)
    json.loads(path.read_text())  # strict JSON: NaN is written as null
    back = alpaca.read_annotations(path)
    assert back[0]["preference"] is None
    assert back[1:] == recs[1:]
    # alpaca_eval's reader takes the file as it takes its own
    df = pd.read_json(path)
    assert {
        "instruction",
        "output_1",
        "generator_1",
        "output_2",
        "generator_2",
        "preference",
    } <= set(df)
    (tmp_path / "bad.json").write_text(json.dumps([dict(recs[1], preference=7)]))
    with pytest.raises(InputError, match="preference 7"):
        alpaca.read_annotations(tmp_path / "bad.json")


# --- leaderboard -------------------------------------------------------------------------------


def annotations_for(generator: str, n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        r = rng.random()
        pref = 1.5 if r < 0.1 else (rng.choice([1.0, 2.0]) if r < 0.3 else 1 + rng.random())
        if i == 0:
            pref = None  # NaN: dropped by get_winrate
        if i == 1:
            pref = 0  # alpaca_eval's legacy tie
        rows.append(
            {
                "instruction": f"instr {i}",
                "output_1": "r" * rng.randint(1, 50),
                "generator_1": "teacher",
                "output_2": "o" * rng.randint(1, 300),
                "generator_2": generator,
                "annotator": alpaca.WEIGHTED,
                "preference": pref,
            }
        )
    return rows


def test_score_cli_equals_get_winrate(tmp_path, capsys):
    files = []
    groups = {"student": annotations_for("student", 57, 1), "sft": annotations_for("sft", 33, 2)}
    for name, rows in groups.items():
        files.append(tmp_path / f"{name}.json")
        alpaca.write_annotations(files[-1], rows)
    out = tmp_path / "leaderboard.csv"
    alpaca.main(["score", "--annotations", *map(str, files), "--out", str(out)])
    board = pd.read_csv(out, index_col="generator")
    assert sorted(board.index) == ["sft", "student"]
    for name, rows in groups.items():
        expected = get_winrate(pd.DataFrame(rows).astype({"preference": float}))
        for key in alpaca.METRIC_KEYS:
            assert abs(board.loc[name, key] - expected[key]) <= 1e-9, (name, key)
        assert board.loc[name, "avg_length"] == int(
            pd.Series([r["output_2"] for r in rows]).str.len().mean()
        )
        assert math.isnan(board.loc[name, "length_controlled_winrate"])
        assert board.loc[name, "length_controlled_note"].startswith("unavailable")
        assert board.loc[name, "baseline"] == "teacher"
    assert board.loc["student", "n_total"] == 56  # the NaN row is left out
    assert "student" in capsys.readouterr().out


def test_leaderboard_refuses_mixed_inputs():
    rows = annotations_for("student", 5, 0)
    with pytest.raises(InputError, match="annotated twice"):
        alpaca.leaderboard(rows + rows[:1])
    other = [dict(r, generator_1="gpt4") for r in annotations_for("student", 5, 1)]
    other = [dict(r, instruction=r["instruction"] + "b") for r in other]
    with pytest.raises(InputError, match="several generator_1"):
        alpaca.leaderboard(rows + other)


# --- annotate CLI end to end, through the local HTTP server --------------------------------------


def test_annotate_cli_end_to_end(tmp_path):
    ref, mod = outputs(12)
    alpaca.write_model_outputs(tmp_path / "ref.json", ref)
    alpaca.write_model_outputs(tmp_path / "mod.json", mod)
    with FakeOpenAI() as server:
        server.logprobs_for = lambda body: fake_logprobs(body["messages"][-1]["content"])
        cfg = tmp_path / "judge.yaml"
        cfg.write_text(
            f"model: gpt-4-1106-preview\nbase_url: {server.base_url}\napi_key_env: null\n"
            f"cache_path: {tmp_path / 'cache.jsonl'}\nmax_concurrency: 4\n"
        )
        out = tmp_path / "annotations.json"
        argv = ["annotate", "--annotator", alpaca.WEIGHTED]
        argv += ["--model-outputs", str(tmp_path / "mod.json")]
        argv += ["--reference-outputs", str(tmp_path / "ref.json"), "--judge-config", str(cfg)]
        alpaca.main([*argv, "--out", str(out)])
        n = server.n_requests
        assert n == 11  # 12 pairs, 1 identical
        assert all(b["logprobs"] and b["max_tokens"] == 1 for b in server.requests)
    recs = alpaca.read_annotations(out)
    expected = alpaca.annotate(StandInJudge(), alpaca.pair_outputs(ref, mod), alpaca.WEIGHTED)
    assert [r["preference"] for r in recs] == pytest.approx(
        [r["preference"] for r in expected], abs=1e-12
    )
    board = alpaca.leaderboard(recs)
    assert board.loc["student", "n_total"] == 12


# --- AlpacaEval 1.0: alpaca_eval_gpt4's ranking, parsed by the library ----------------------------


def alpaca_eval_gpt4_annotations(monkeypatch, ref, mod, completion_for):
    """alpaca_eval's own PairwiseAnnotator with the alpaca_eval_gpt4 config, its completion call
    replaced by `completion_for(prompt) -> text`; returns (annotations, the prompts it sent)."""
    seen = []

    def fake_completions(prompts, **kwargs):
        seen.extend(prompts)
        return {
            "completions": [completion_for(p) for p in prompts],
            "price_per_example": [0.0] * len(prompts),
            "time_per_example": [0.0] * len(prompts),
        }

    monkeypatch.setattr(ae_base, "get_fn_completions", lambda name: fake_completions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ann = PairwiseAnnotator(annotators_config=alpaca.RANKING, caching_path=None)
        return ann.annotate_head2head(outputs_1=ref, outputs_2=mod), seen


@pytest.mark.parametrize("rating", ["generate", "expected"])
def test_alpaca_eval_1_equals_the_librarys_annotator(monkeypatch, rating):
    ref, mod = outputs()
    theirs, seen = alpaca_eval_gpt4_annotations(monkeypatch, ref, mod, fake_ranking)
    judge = RankingJudge(rating)
    ours = alpaca.annotate(judge, alpaca.pair_outputs(ref, mod), alpaca.RANKING)
    theirs_by = {r["instruction"]: r for r in theirs}
    assert len(ours) == len(theirs) == 40
    for r in ours:
        t = theirs_by[r["instruction"]]
        assert r["preference"] == t["preference"] and r["preference"] in (1, 1.5, 2)
        assert r["annotator"] == t["annotator"] == "alpaca_eval_gpt4"
    # the judge saw exactly the chat messages alpaca_eval sends (same calls, same text)
    assert len(judge.calls) == len(seen) == 36
    expected = sorted(json.dumps(ae_utils.prompt_to_chatml(p)) for p in seen)
    assert sorted(json.dumps(m) for m in judge.calls) == expected
    if rating == "generate":  # the annotator's own completion settings
        assert judge.asked[0] == {"max_tokens": 100, "temperature": 0}
    else:  # read where the answer names its rank-1 model, the ranking written for the parser
        assert judge.asked[0] == {
            "prefill": alpaca.RANKING_PREFILL,
            "continuations": ["model_1", "model_2"],
        }
        raw = ours[1]["preference_raw_completion"]["completion"]
        assert ae_parsers.ranking_parser(raw) in ([1], [2])
    # win rate as alpaca_eval's get_winrate gives it for the library's annotations
    board = alpaca.leaderboard(ours)
    expected_metrics = get_winrate(pd.DataFrame(theirs))
    for key in alpaca.METRIC_KEYS:
        assert board.loc["student", key] == pytest.approx(expected_metrics[key], abs=1e-9), key


def test_alpaca_eval_1_unreadable_ranking_is_nan(monkeypatch):
    ref, mod = outputs(6)
    judge = RankingJudge("generate")
    judge.complete = lambda messages, **kw: "I cannot decide."  # the parser's NaN
    records = alpaca.annotate(judge, alpaca.pair_outputs(ref, mod), alpaca.RANKING)
    judged = [r for r in records if r["preference_raw_completion"] is not None]
    assert judged and all(math.isnan(r["preference"]) for r in judged)
    board = alpaca.leaderboard(records)  # get_winrate leaves the NaN rows out
    assert board.loc["student", "n_total"] == len(records) - len(judged)


def test_ranking_text_reads_back_through_the_librarys_parser():
    assert ae_parsers.ranking_parser(alpaca.ranking_text("model_1")) == [1]
    assert ae_parsers.ranking_parser(alpaca.ranking_text("model_2")) == [2]
    assert alpaca.ranking_text("model_1").startswith(alpaca.RANKING_PREFILL + "model_1")


def test_unknown_annotator_is_refused():
    with pytest.raises(InputError, match="not in the installed alpaca_eval"):
        alpaca.Annotator("gpt-17")
    with pytest.raises(InputError, match="only"):
        alpaca.Annotator("alpaca_eval_gpt4_fn")  # pipeline_meta_parser
