"""The evaluation pipeline on real models: the in-process judge, MT-Bench answers, and a small
end-to-end run from model directories to the radar and MT-Bench-vs-AlpacaEval figures.

    pytest tests/test_eval_pipeline.py

Everything is written under pytest's tmp dirs; the workflow itself is only planned (snakemake -n).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pandas as pd
import pytest
import torch
from conftest import REPO
from matplotlib import image as mpimg
from transformers import AutoTokenizer

from distill.eval import alpaca, alpaca_data, answers, domains, judge_check, mtbench
from distill.eval.judges import Judge, TransformersJudge, expected_rating, judge_from_config
from distill.io import InputError, write_jsonl
from distill.plots import evaluation, radar

# FastChat-shaped judge prompts (names, fields and placeholders as in judge_prompts.jsonl; short).
PROMPTS = [
    {
        "name": name,
        "type": "single",
        "system_prompt": "You are a helpful assistant.",
        "prompt_template": template,
        "description": "test",
        "category": "general",
        "output_format": "[[rating]]",
    }
    for name, template in [
        (
            "single-v1",
            "Rate the answer from 1 to 10 as Rating: [[x]].\n[Question]\n{question}\n"
            "[Answer]\n{answer}",
        ),
        (
            "single-math-v1",
            "Rate from 1 to 10 as Rating: [[x]].\n[Question]\n{question}\n"
            "[Reference]\n{ref_answer_1}\n[Answer]\n{answer}",
        ),
        (
            "single-v1-multi-turn",
            "Rate the second answer as Rating: [[x]].\n### User:\n"
            "{question_1}\n### Assistant:\n{answer_1}\n### User:\n{question_2}\n### Assistant:\n"
            "{answer_2}",
        ),
        (
            "single-math-v1-multi-turn",
            "Rate the second answer as Rating: [[x]].\n"
            "[Reference]\n{ref_answer_1}\n{ref_answer_2}\n### User:\n{question_1}\n### Assistant:\n"
            "{answer_1}\n### User:\n{question_2}\n### Assistant:\n{answer_2}",
        ),
    ]
]
QUESTIONS = [
    {
        "question_id": 81,
        "category": "writing",
        "turns": ["Write a haiku about rain.", "Now one about snow."],
    },
    {"question_id": 111, "category": "math", "turns": ["What is 3 * 4?", "And 3 * 5?"]},
]
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Which answer is better? Reply m or M.\nm: 12\nM: 13"},
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small models decode about as fast on one thread, and a second thread beside any other
    busy process on a 2-core machine slowed decoding about 20x here (OpenMP spin-waiting)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def judge(teacher_dir) -> TransformersJudge:
    return TransformersJudge(teacher_dir, "fp32", "expected", name="teacher", max_new_tokens=8)


def synthetic_questions() -> list[dict]:
    cats = mtbench.CATEGORIES
    return [
        {"question_id": q, "category": cats[(q - 81) // 10], "turns": [f"q{q}", f"q{q} again"]}
        for q in range(81, 161)
    ]


# --- pure parts ----------------------------------------------------------------------------------


def test_select_questions_spreads_over_categories():
    qs = synthetic_questions()
    eight = answers.select_questions(qs, n_questions=8)
    assert sorted(q["category"] for q in eight) == sorted(mtbench.CATEGORIES)
    assert [q["question_id"] for q in eight] == [81, 91, 101, 111, 121, 131, 141, 151]
    sixteen = answers.select_questions(qs, n_questions=16)
    assert {q["question_id"] for q in sixteen} == {
        q for c in range(81, 161, 10) for q in (c, c + 1)
    }
    assert answers.select_questions(qs, n_questions=3) == [qs[0], qs[10], qs[20]]
    assert answers.select_questions(qs, [111, 81], n_questions=3) == [qs[0], qs[30]]  # ids win
    assert answers.select_questions(qs) == qs
    with pytest.raises(InputError, match="question_ids"):
        answers.select_questions(qs, [5])


def test_instructions_from_rows_and_alpaca_lists(tmp_path):
    rows = [
        {"id": "a", "domain": "writing", "messages": [{"role": "user", "content": "Write."}]},
        {
            "id": "b",
            "domain": "math",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"},
            ],
        },
    ]
    write_jsonl(tmp_path / "heldout.jsonl", rows)
    got = answers.load_instructions(str(tmp_path / "heldout.jsonl"))
    assert [(r["instruction"], r["dataset"]) for r in got] == [
        ("Write.", "writing"),
        ("2+2?", "math"),
    ]
    assert got[1]["messages"] == rows[1]["messages"][:2]  # the prompt, without the response
    assert len(answers.load_instructions(str(tmp_path / "heldout.jsonl"), 1)) == 1
    official = tmp_path / "alpaca_eval.json"
    official.write_text(json.dumps([{"instruction": "Hi?", "dataset": "koala", "output": "x"}]))
    [one] = answers.load_instructions(str(official))
    assert one == {
        "instruction": "Hi?",
        "dataset": "koala",
        "messages": [{"role": "user", "content": "Hi?"}],
    }
    official.write_text("[{")
    with pytest.raises(InputError, match="not valid JSON"):
        answers.load_instructions(str(official))


def test_expected_rating_is_the_weighted_mean():
    assert expected_rating([0] * 9 + [1]) == 10
    assert expected_rating([1] * 10) == pytest.approx(5.5)
    assert expected_rating([2, 0, 0, 0, 0, 0, 0, 0, 0, 2]) == pytest.approx(5.5)  # unnormalised
    with pytest.raises(ValueError):
        expected_rating([0] * 10)


def test_judge_config_errors(tmp_path):
    with pytest.raises(InputError, match="unknown key"):
        judge_from_config({"kind": "transformers", "model_dir": str(tmp_path), "temp": 1})
    with pytest.raises(InputError, match="config.json missing"):
        judge_from_config({"kind": "transformers", "model_dir": str(tmp_path)})
    with pytest.raises(InputError, match="rating: generate"):
        judge_from_config({"kind": "openai", "model": "gpt-4", "rating": "expected"})
    with pytest.raises(InputError, match="not a known judge"):
        judge_from_config({"kind": "llamacpp"})


# --- the in-process judge on the real model ------------------------------------------------------


@pytest.mark.slow
def test_transformers_judge(judge, teacher_dir):
    assert isinstance(judge, Judge) and judge.name == "teacher" and judge.rating == "expected"
    lps = judge.choice_logprobs(MESSAGES, ["m", "M"])
    assert set(lps) == {"m", "M"}
    assert all(math.isfinite(v) and v < 0 for v in lps.values())
    assert math.log(math.exp(lps["m"]) + math.exp(lps["M"])) <= 1e-6  # a distribution's part
    with pytest.raises(ValueError, match="not one"):
        judge.choice_logprobs(MESSAGES, ["maybe not"])

    text = judge.complete(MESSAGES, max_tokens=2048, temperature=0.0)
    assert isinstance(text, str) and text
    assert len(judge.tokenizer.encode(text, add_special_tokens=False)) <= 8  # capped

    probs, mass = judge.rating_probs(MESSAGES)
    assert len(probs) == 10 and sum(probs) == pytest.approx(1.0) and 0 < mass <= 1 + 1e-6
    score, record = judge.rate(MESSAGES)
    assert 1 <= score <= 10 and score == pytest.approx(expected_rating(probs))
    assert mtbench.parse_score(record) == pytest.approx(score, abs=1e-4)  # FastChat reads it too

    # The "10" split, recomputed without the KV cache: P(10) / (P(1) + P(10)) is the judge's
    # probability of "0" right after "Rating: [[1".
    tok = judge.tokenizer
    prompt = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    ids = tok(prompt + "Rating: [[1", add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = judge.model(input_ids=ids).logits[0, -1].float()
    p_zero = torch.softmax(logits, -1)[tok.encode("0", add_special_tokens=False)[0]].item()
    assert probs[9] / (probs[0] + probs[9]) == pytest.approx(p_zero, rel=1e-3, abs=1e-6)


def full_forward_logprob(judge, messages, prefill, continuation) -> float:
    """log P(continuation | prompt + prefill) from one forward over the whole text, no cache."""
    tok = judge.tokenizer
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    head = tok(prompt + prefill, add_special_tokens=False)["input_ids"]
    ids = tok(prompt + prefill + continuation, add_special_tokens=False)["input_ids"]
    shared = next(i for i, (a, b) in enumerate(zip(head + [-1], ids, strict=False)) if a != b)
    with torch.no_grad():
        logits = judge.model(input_ids=torch.tensor([ids])).logits[0].double()
    logprobs = torch.log_softmax(logits, -1)
    return sum(float(logprobs[t - 1, ids[t]]) for t in range(shared, len(ids)))


@pytest.mark.slow
def test_continuation_logprobs_equal_a_full_forward(judge):
    # the AlpacaEval 1.0 place (one token each after "model_"), and continuations of several tokens
    for prefill, choices in [
        (alpaca.RANKING_PREFILL, ["model_1", "model_2"]),
        ("The better answer is", [" the first one, clearly", " the second"]),
    ]:
        got = judge.continuation_logprobs(MESSAGES, prefill, choices)
        for choice in choices:
            expected = full_forward_logprob(judge, MESSAGES, prefill, choice)
            assert got[choice] == pytest.approx(expected, abs=2e-3), (prefill, choice)
    with pytest.raises(ValueError, match="do not differ"):
        judge.continuation_logprobs(MESSAGES, "x", ["same", "same"])


# --- answers -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_mtbench_answers_two_turns(teacher_dir, tmp_path):
    generate = answers.make_generator(str(teacher_dir), "transformers", "fp32", 4, seed=0)
    calls = []

    def recording(conversations, max_new_tokens, temperature):
        replies = generate(conversations, max_new_tokens, temperature)
        calls.append((conversations, temperature, replies))
        return replies

    records = answers.mtbench_answers(recording, QUESTIONS, "teacher", max_new_tokens=6)
    path = tmp_path / "answers" / "teacher.jsonl"
    mtbench.write_answers(path, records)
    back = mtbench.read_answers(path)
    assert sorted(back) == [81, 111] and mtbench.answers_model_name(back, path) == "teacher"
    for qid in (81, 111):
        turns = back[qid]["choices"][0]["turns"]
        assert len(turns) == 2 and all(isinstance(t, str) and t for t in turns)

    # every conversation was asked at its category's temperature
    for conversations, temperature, _ in calls:
        for conv in conversations:
            first = conv[0]["content"]
            q = next(q for q in QUESTIONS if q["turns"][0] == first)
            assert temperature == mtbench.TEMPERATURE_CONFIG[q["category"]]
    # turn 2 is asked on the conversation that holds turn 1's answer, in the chat template
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    turn2 = [conv for conversations, _, _ in calls for conv in conversations if len(conv) == 3]
    assert len(turn2) == 2
    for conv in turn2:
        q = next(q for q in QUESTIONS if q["turns"][0] == conv[0]["content"])
        answer_1 = back[q["question_id"]]["choices"][0]["turns"][0]
        assert conv[1] == {"role": "assistant", "content": answer_1}
        assert conv[2] == {"role": "user", "content": q["turns"][1]}
        prompt = tokenizer.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        assert answer_1 in prompt and prompt.index(answer_1) < prompt.index(q["turns"][1])
    # math is greedy (temperature 0): another seed gives the same answer
    other = answers.make_generator(str(teacher_dir), "transformers", "fp32", 4, seed=123)
    again = answers.mtbench_answers(other, QUESTIONS, "teacher", max_new_tokens=6)
    math_again = next(a for a in again if a["question_id"] == 111)
    assert math_again["choices"] == back[111]["choices"]


# --- end to end: two models x two questions -> judgments -> scores -> figures --------------------


def cli(main, *args) -> None:
    """Run a module's main() in this process with string arguments (as `python -m` would)."""
    main([str(a) for a in args])


@pytest.mark.slow
def test_end_to_end(tmp_path, teacher_dir, tiny_student_dir):
    data = tmp_path / "data"
    write_jsonl(data / "question.jsonl", QUESTIONS)
    write_jsonl(data / "judge_prompts.jsonl", PROMPTS)
    ref = mtbench.make_answer(111, "gpt-4", ["3 * 4 = 12", "3 * 5 = 15"], tstamp=0.0)
    write_jsonl(data / "reference_answer" / "gpt-4.jsonl", [ref])
    heldout = tmp_path / "heldout.jsonl"
    prompts = ["Name a fruit.", "Is ice cold?"]
    write_jsonl(
        heldout,
        [
            {"id": f"h{i}", "domain": "general", "messages": [{"role": "user", "content": p}]}
            for i, p in enumerate(prompts)
        ],
    )
    judge = {"kind": "transformers", "model_dir": str(teacher_dir), "name": "teacher"}
    judge_json = json.dumps(judge | {"precision": "bf16", "rating": "expected"})
    questions = tmp_path / "questions.jsonl"
    cli(
        answers.main,
        "questions",
        "--questions",
        data / "question.jsonl",
        "--n-questions",
        2,
        "--out",
        questions,
    )

    # two models answer both benchmarks (8 tokens a turn)
    models = {"teacher": teacher_dir, "tiny": tiny_student_dir}
    gen = ["--max-new-tokens", 8, "--batch-size", 4, "--backend", "transformers"]
    gen += ["--precision", "fp32"]
    for name, model_dir in models.items():
        common = ["--model-dir", model_dir, "--name", name, *gen]
        cli(
            answers.main,
            "mtbench",
            "--questions",
            questions,
            *common,
            "--out",
            tmp_path / "answers" / f"{name}.jsonl",
        )
        cli(
            answers.main,
            "alpaca",
            "--instructions",
            heldout,
            *common,
            "--out",
            tmp_path / "outputs" / f"{name}.json",
        )
    outputs = alpaca.read_model_outputs(tmp_path / "outputs" / "tiny.json")
    assert [o["instruction"] for o in outputs] == prompts and outputs[0]["generator"] == "tiny"

    # the teacher judges both (MT-Bench), and the tiny model against the teacher (AlpacaEval)
    judgments = tmp_path / "judgments.jsonl"
    cli(
        mtbench.main,
        "judge",
        "--answers",
        *(tmp_path / "answers" / f"{m}.jsonl" for m in models),
        "--questions",
        questions,
        "--data-dir",
        data,
        "--judge-json",
        judge_json,
        "--out",
        judgments,
    )
    records = mtbench.read_judgments(judgments)
    assert sorted((j["model"], j["question_id"], j["turn"]) for j in records) == [
        (m, q, t) for m in ("teacher", "tiny") for q in (81, 111) for t in (1, 2)
    ]
    assert ("teacher", "single-math-v1-multi-turn") in {tuple(j["judge"]) for j in records}
    assert all(1 <= j["score"] <= 10 for j in records)
    for name in models:  # AlpacaEval 1.0: the ranking read from P("model_1") vs P("model_2")
        out = tmp_path / "annotations" / f"{name}.json"
        cli(
            alpaca.main,
            "annotate",
            "--annotator",
            alpaca.RANKING,
            "--model-outputs",
            tmp_path / "outputs" / f"{name}.json",
            "--reference-outputs",
            tmp_path / "outputs" / "teacher.json",
            "--judge-json",
            judge_json,
            "--out",
            out,
        )
    [tiny] = alpaca.read_annotations(tmp_path / "annotations" / "tiny.json")[:1]
    assert tiny["preference"] in (1, 2) and tiny["annotator"] == "alpaca_eval_gpt4"
    assert set(tiny["preference_raw_completion"]["logprobs"]) == {"model_1", "model_2"}

    # the judge check on the same judge, and the math accuracy of both models
    check_csv = tmp_path / "judge_check.csv"
    cli(
        judge_check.main,
        "--questions",
        questions,
        "--judge-prompts",
        data / "judge_prompts.jsonl",
        "--reference",
        data / "reference_answer" / "gpt-4.jsonl",
        "--teacher-answers",
        tmp_path / "answers" / "teacher.jsonl",
        "--alpaca-reference",
        tmp_path / "outputs" / "teacher.json",
        "--annotator",
        alpaca.RANKING,
        "--n-items",
        2,
        "--seed",
        0,
        "--judge-json",
        judge_json,
        "--out",
        check_csv,
        "--items",
        tmp_path / "judge_check_items.jsonl",
    )
    check = pd.read_csv(check_csv).set_index(["benchmark", "degradation"])
    assert (
        check.loc[("mtbench", "all"), "accuracy"] >= 0 and check.loc[("alpaca", "all"), "n_pairs"]
    )
    math_rows = tmp_path / "math.jsonl"
    write_jsonl(
        math_rows,
        [
            {
                "id": f"m{i}",
                "domain": "arithmetic",
                "answer": str(i + 2),
                "messages": [
                    {"role": "user", "content": f"What is {i} + 2?"},
                    {"role": "assistant", "content": str(i + 2)},
                ],
            }
            for i in range(3)
        ],
    )
    math_specs = []
    for name, model_dir in models.items():
        cli(
            domains.main,
            "evaluate",
            "--model",
            model_dir,
            "--valid",
            math_rows,
            "--math-test",
            math_rows,
            "--max-len",
            64,
            "--max-new-tokens",
            4,
            "--precision",
            "fp32",
            "--out",
            tmp_path / "domains" / f"{name}.json",
        )
        math_specs += ["--math", f"{name}={tmp_path / 'domains' / f'{name}.json'}"]
    result = domains.read_result(tmp_path / "domains" / "tiny.json")
    assert result["ppl"]["arithmetic"] == pytest.approx(math.exp(result["ce"]["arithmetic"]))
    assert result["ce"]["all"] == pytest.approx(result["ce"]["arithmetic"])  # one domain
    assert result["n_all"] == 3 and 0 <= result["accuracy_all"] <= 1

    scores_csv = tmp_path / "scores.csv"
    cli(
        mtbench.main,
        "score",
        "--judgments",
        judgments,
        "--questions",
        questions,
        "--out",
        scores_csv,
    )
    board_csv = tmp_path / "leaderboard.csv"
    cli(
        alpaca.main,
        "score",
        "--annotations",
        *(tmp_path / "annotations").glob("*.json"),
        "--out",
        board_csv,
    )
    scores = radar.read_scores(str(scores_csv))
    assert set(scores.index) == {"teacher", "tiny"} and (scores["n_scored"] == 4).all()
    assert scores["overall"].between(1, 10).all()
    points = evaluation.read_tables(str(scores_csv), str(board_csv))
    by_model = points.set_index("model")
    assert by_model.loc["teacher", "win_rate"] == pytest.approx(50.0)  # identical outputs: ties
    assert 0 <= by_model.loc["tiny", "win_rate"] <= 100

    label = "teacher, in-process; MT-Bench rating expected"
    check = ["--judge-check", check_csv, "--min-accuracy", 0.7]
    cli(
        radar.main,
        "--scores",
        scores_csv,
        "--scores",
        scores_csv,
        "--judge",
        label,
        "--paper-reference",
        *check,
        "--out",
        tmp_path / "fig" / "radar.png",
    )
    cli(
        evaluation.main,
        "--mtbench",
        scores_csv,
        "--alpaca",
        board_csv,
        *math_specs,
        "--judge",
        label,
        "--reference",
        "teacher",
        *check,
        "--table",
        tmp_path / "summary.csv",
        "--out",
        tmp_path / "fig" / "evaluation.png",
    )
    for name in ("radar", "evaluation"):
        img = mpimg.imread(tmp_path / "fig" / f"{name}.png")
        assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 300
        assert img.std() > 0.01  # something is drawn
        assert (tmp_path / "fig" / f"{name}.pdf").stat().st_size > 1000
    summary = pd.read_csv(tmp_path / "summary.csv").set_index("model")
    assert summary.loc["tiny", "math_accuracy"] == pytest.approx(result["accuracy_all"])
    assert summary.loc["teacher", "win_rate"] == pytest.approx(50.0)
    assert (summary["n_seeds"] == 1).all() and summary["overall_ci95"].isna().all()


def test_alpaca_eval_set_file(tmp_path):
    out = tmp_path / "alpaca_eval.json"
    alpaca_data.main(
        ["--source", str(REPO / "tests" / "data" / "alpaca_eval_small.json"), "--out", str(out)]
    )
    records = alpaca.read_model_outputs(out)  # the set is a model_outputs file: the 1.0 reference
    assert len(records) == 8 and {r["generator"] for r in records} == {"text_davinci_003"}
    rows = answers.load_instructions(str(out), 3)
    assert [r["messages"] for r in rows] == [
        [{"role": "user", "content": r["instruction"]}] for r in records[:3]
    ]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "x", "output": "y", "generator": "g"}]))
    with pytest.raises(InputError, match="lacks the string field"):
        alpaca_data.main(["--source", str(bad), "--out", str(tmp_path / "o.json")])
    with pytest.raises(InputError, match="local files only"):
        answers.load_instructions("hub")


# --- the workflow plans the figures --------------------------------------------------------------


@pytest.mark.slow
def test_workflow_plans_the_figures():
    """Every rule from model to figure is planned (-F: whatever results/ holds), the judge check
    before any judging."""
    targets = ["results/figures/radar.png", "results/figures/evaluation.png"]
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-n",
        "-F",
        *targets,
        "--configfile",
        "config.yaml",
        "configs/ci.yaml",
    ]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    for rule in (
        "mtbench_answers",
        "judge_check",
        "mtbench_judgments",
        "alpaca_annotations",
        "radar_figure",
        "evaluation_figure",
    ):
        assert f"rule {rule}:" in out.stdout, rule
    judging = out.stdout.split("rule mtbench_judgments:", 1)[1].split("\n\n", 1)[0]
    assert "results/eval/judge_check.csv" in judging
