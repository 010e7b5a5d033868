"""MT-Bench single-answer grading as FastChat's llm_judge does it: prompts, parsing, scores.

Launch:

    # judge answer files (FastChat's model_answer format) -> judgments (gen_judgment.py's format)
    python -m distill.eval.mtbench judge \\
        --answers results/eval/mtbench/seed0/answers/student.jsonl \\
        --data-dir results/eval/mtbench/data --judge-config judge.yaml \\
        --out results/eval/mtbench/seed0/judgments/student.jsonl

    # judgments -> per-model table (turn1, turn2, overall, 8 category means)
    python -m distill.eval.mtbench score --judgments results/eval/mtbench/seed0/judgments/*.jsonl \\
        --questions results/eval/mtbench/data/question.jsonl \\
        --out results/eval/mtbench/seed0/scores.csv

Formats (FastChat's, so files move between this project and FastChat):
- question.jsonl: {"question_id": int, "category": str, "turns": [str, str], ("reference": [..])}
- answers (model_answer/<model>.jsonl): {"question_id", "answer_id", "model_id",
  "choices": [{"index": 0, "turns": [str, str]}], "tstamp"}; reference answers are the same.
- judgments (model_judgment/<judge>_single.jsonl): {"question_id", "model", "judge":
  [judge_model, prompt_name], "user_prompt", "judgment", "score", "turn", "tstamp"}.

What follows FastChat (common.py, gen_judgment.py, show_result.py; fschat 0.2.36):
- categories math, reasoning, coding use the reference-based prompts (single-math-v1 and
  single-math-v1-multi-turn) with the reference answer of the same question; the others use
  single-v1 / single-v1-multi-turn. The judge sees [system: system_prompt, user:
  prompt_template.format(...)], temperature 0, max_tokens 2048. Turn 2 is judged only for
  questions with two turns, on the whole conversation.
- a score is the first `[[x]]` in the judgment, else the first `[x]`; otherwise -1. -1 rows stay
  in the judgments file and are left out of every mean.
- turn1 / turn2 = mean score of that turn's rows; overall = mean of all rows (both turns);
  category means (FastChat's MT-Bench radar) = mean over both turns of that category's questions.
- answer generation temperature per category: `TEMPERATURE_CONFIG` (0.7 where not listed).

One addition: a judge whose `rating` is "expected" (the in-process TransformersJudge of
distill.eval.judges) is not asked to write; its score is the probability-weighted rating over
1..10 read after "Rating: [[", a float written into the judgment as [[x.xxxx]] (so FastChat's
parse reads it back) with the distribution beside it. The rest (prompts, records, means) is as
above. Answers come from distill.eval.answers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from distill.io import InputError, atomic_path, main_guard, read_jsonl, setup_logging, write_jsonl

log = logging.getLogger(__name__)

# Categories judged against a reference answer (FastChat's NEED_REF_CATS for MT-Bench).
NEED_REF_CATS = ("math", "reasoning", "coding")
# FastChat's order (its radar plot and published tables) and display names.
CATEGORIES = (
    "writing",
    "roleplay",
    "reasoning",
    "math",
    "coding",
    "extraction",
    "stem",
    "humanities",
)
CATEGORY_LABELS = {
    "writing": "Writing",
    "roleplay": "Roleplay",
    "reasoning": "Reasoning",
    "math": "Math",
    "coding": "Coding",
    "extraction": "Extraction",
    "stem": "STEM",
    "humanities": "Humanities",
}
# Sampling temperature of answer generation per category (FastChat's temperature_config).
TEMPERATURE_CONFIG = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
}
DEFAULT_TEMPERATURE = 0.7  # gen_model_answer.py's value for a category not in the table
# How FastChat calls the judge.
JUDGE_TEMPERATURE = 0.0
JUDGE_MAX_TOKENS = 2048
# FastChat's one_score_pattern and its backup.
ONE_SCORE_PATTERN = re.compile(r"\[\[(\d+\.?\d*)\]\]")
ONE_SCORE_PATTERN_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")
UNPARSED = -1

SCORE_COLUMNS = ["turn1", "turn2", "overall", *CATEGORY_LABELS.values()]


# --- reading and writing FastChat's files --------------------------------------------------------


def _is_str_list(x: Any) -> bool:
    return isinstance(x, list) and bool(x) and all(isinstance(t, str) for t in x)


def read_questions(path: str | os.PathLike) -> list[dict]:
    """question.jsonl -> [{"question_id": int, "category": str, "turns": [str, ...]}, ...]."""
    out, seen = [], set()
    for lineno, q in read_jsonl(path, "MT-Bench question"):
        where = f"{path}:{lineno}"
        if not isinstance(q.get("question_id"), int):
            raise InputError(f'{where}: "question_id" must be an integer.')
        if not isinstance(q.get("category"), str) or not _is_str_list(q.get("turns")):
            raise InputError(f'{where}: need "category" (string) and "turns" (list of strings).')
        if q["question_id"] in seen:
            raise InputError(f"{where}: question_id {q['question_id']} appears twice.")
        seen.add(q["question_id"])
        out.append(q)
    return out


def read_judge_prompts(path: str | os.PathLike) -> dict[str, dict]:
    """judge_prompts.jsonl -> {name: {"name", "type", "system_prompt", "prompt_template", ...}}."""
    out = {}
    for lineno, p in read_jsonl(path, "judge prompt"):
        keys = ("name", "type", "system_prompt", "prompt_template", "output_format")
        missing = [k for k in keys if not isinstance(p.get(k), str)]
        if missing:
            raise InputError(f"{path}:{lineno}: judge prompt lacks {', '.join(missing)}.")
        out[p["name"]] = p
    return out


def make_answer(
    question_id: int,
    model_id: str,
    turns: Sequence[str],
    *,
    tstamp: float | None = None,
    answer_id: str | None = None,
) -> dict:
    """One answer record in FastChat's model_answer format.

    answer_id: FastChat draws a shortuuid; here, unless given, a 22-character hash of the content
    so that the same answers give the same bytes.
    """
    if answer_id is None:
        blob = json.dumps([question_id, model_id, list(turns)], ensure_ascii=False)
        answer_id = hashlib.sha256(blob.encode("utf-8")).hexdigest()[:22]
    return {
        "question_id": question_id,
        "answer_id": answer_id,
        "model_id": model_id,
        "choices": [{"index": 0, "turns": list(turns)}],
        "tstamp": time.time() if tstamp is None else tstamp,
    }


def _check_answer(a: Any, where: str) -> None:
    if not isinstance(a, dict) or not isinstance(a.get("question_id"), int):
        raise InputError(f'{where}: an answer needs an integer "question_id".')
    if not isinstance(a.get("model_id"), str):
        raise InputError(f'{where}: an answer needs a string "model_id".')
    choices = a.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise InputError(f'{where}: "choices" must be [{{"index": 0, "turns": [...]}}].')
    turns = choices[0].get("turns")
    if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
        raise InputError(f'{where}: "choices"[0]."turns" must be a list of strings.')


def write_answers(path: str | os.PathLike, answers: Iterable[dict]) -> None:
    """Write answer records sorted by question_id (as FastChat's reorg_answer_file), atomically."""
    answers = list(answers)
    for i, a in enumerate(answers):
        _check_answer(a, f"{path} (answer {i})")
    ids = [a["question_id"] for a in answers]
    if len(set(ids)) != len(ids):
        raise InputError(f"{path}: two answers for one question_id. Fix: keep one per question.")
    write_jsonl(path, sorted(answers, key=lambda a: a["question_id"]))


def read_answers(path: str | os.PathLike) -> dict[int, dict]:
    """A model_answer (or reference_answer) jsonl -> {question_id: record}.

    A question answered twice keeps its last line, as FastChat's load_model_answers does.
    """
    out: dict[int, dict] = {}
    for lineno, a in read_jsonl(path, "answer"):
        _check_answer(a, f"{path}:{lineno}")
        if a["question_id"] in out:
            log.warning(
                "%s:%d: question %d answered again; keeping this line",
                path,
                lineno,
                a["question_id"],
            )
        out[a["question_id"]] = a
    return out


def answers_model_name(answers: Mapping[int, dict], path: str | os.PathLike) -> str:
    """The one model_id of an answer file (FastChat names the model after the file; we check)."""
    names = {a["model_id"] for a in answers.values()}
    if len(names) != 1:
        raise InputError(
            f"{path}: answers from several models ({', '.join(sorted(names))}). Fix: one answer "
            "file per model."
        )
    return names.pop()


def write_judgments(path: str | os.PathLike, judgments: Iterable[dict]) -> None:
    write_jsonl(path, judgments)


def read_judgments(path: str | os.PathLike) -> list[dict]:
    """A judgments jsonl (gen_judgment.py --mode single) -> list of records (checked)."""
    out = []
    for lineno, j in read_jsonl(path, "judgment"):
        missing = [k for k in ("question_id", "model", "score", "turn") if k not in j]
        if missing:
            raise InputError(
                f"{path}:{lineno}: judgment lacks {', '.join(missing)}. Fix: give files written by "
                "`distill.eval.mtbench judge` or FastChat's gen_judgment.py --mode single."
            )
        if not isinstance(j["score"], int | float) or j["turn"] not in (1, 2):
            raise InputError(f'{path}:{lineno}: "score" must be a number and "turn" 1 or 2.')
        out.append(j)
    return out


def sampling_temperature(category: str) -> float:
    """Answer-generation temperature for a question category (FastChat's table)."""
    return TEMPERATURE_CONFIG.get(category, DEFAULT_TEMPERATURE)


# --- judge prompts and parsing -----------------------------------------------------------------


def judge_prompt_name(category: str, multi_turn: bool) -> str:
    """Which of FastChat's single-answer judge prompts grades this category and turn."""
    name = "single-math-v1" if category in NEED_REF_CATS else "single-v1"
    return name + "-multi-turn" if multi_turn else name


@dataclass(frozen=True)
class JudgeRequest:
    """One judge call: which prompt, what the judge sees, and which turn it grades."""

    question_id: int
    model: str
    turn: int  # 1 or 2
    prompt_name: str
    system_prompt: str
    user_prompt: str

    @property
    def messages(self) -> list[dict[str, str]]:
        # FastChat's conv.to_openai_api_messages() for an OpenAI judge: system, then user.
        return [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": self.user_prompt},
        ]


def build_judge_request(
    question: Mapping,
    answer: Mapping,
    judge_prompts: Mapping[str, Mapping],
    *,
    multi_turn: bool,
    ref_answer: Mapping | None = None,
    model: str | None = None,
) -> JudgeRequest:
    """Fill FastChat's judge prompt for one answer, as common.run_judge_single does.

    question: a question.jsonl row; answer / ref_answer: model_answer records (ref_answer is
    required for math, reasoning and coding). multi_turn=False grades turn 1 from the question's
    and answer's first turns; multi_turn=True grades turn 2 on the whole two-turn conversation.
    """
    category = question["category"]
    prompt = judge_prompts[judge_prompt_name(category, multi_turn)]
    qid = question["question_id"]
    a_turns = answer["choices"][0]["turns"]
    need = 2 if multi_turn else 1
    if len(question["turns"]) < need or len(a_turns) < need:
        raise InputError(
            f"question {qid}: turn {need} is missing from the question or the answer of "
            f"{answer.get('model_id')}. Fix: regenerate that answer with all turns."
        )
    kwargs: dict[str, str] = {}
    if category in NEED_REF_CATS:
        if ref_answer is None:
            raise InputError(
                f"question {qid} ({category}) needs a reference answer. Fix: pass "
                "reference_answer/gpt-4.jsonl from distill.eval.mtbench_data."
            )
        ref_turns = ref_answer["choices"][0]["turns"]
        kwargs["ref_answer_1"] = ref_turns[0]
        if multi_turn:
            kwargs["ref_answer_2"] = ref_turns[1]
    if multi_turn:
        user_prompt = prompt["prompt_template"].format(
            question_1=question["turns"][0],
            question_2=question["turns"][1],
            answer_1=a_turns[0],
            answer_2=a_turns[1],
            **kwargs,
        )
    else:
        user_prompt = prompt["prompt_template"].format(
            question=question["turns"][0], answer=a_turns[0], **kwargs
        )
    return JudgeRequest(
        question_id=qid,
        model=model if model is not None else answer["model_id"],
        turn=2 if multi_turn else 1,
        prompt_name=prompt["name"],
        system_prompt=prompt["system_prompt"],
        user_prompt=user_prompt,
    )


def parse_score(judgment: str) -> int | float:
    """The rating in a judge's text: first `[[x]]`, else first `[x]`, else -1 (FastChat's rule).

    Integers stay int and decimals float, as FastChat's ast.literal_eval gives them ("8." -> 8.0).
    """
    m = ONE_SCORE_PATTERN.search(judgment) or ONE_SCORE_PATTERN_BACKUP.search(judgment)
    if not m:
        return UNPARSED
    s = m.group(1)
    return float(s) if "." in s else int(s)


def make_judgment(
    request: JudgeRequest, judge_model: str, judgment: str, tstamp: float | None = None
) -> dict:
    """One record as gen_judgment.py (play_a_match_single) writes it."""
    return {
        "question_id": request.question_id,
        "model": request.model,
        "judge": [judge_model, request.prompt_name],
        "user_prompt": request.user_prompt,
        "judgment": judgment,
        "score": parse_score(judgment),
        "turn": request.turn,
        "tstamp": time.time() if tstamp is None else tstamp,
    }


def plan_requests(
    questions: Sequence[Mapping],
    answers_by_model: Mapping[str, Mapping[int, Mapping]],
    judge_prompts: Mapping[str, Mapping],
    ref_answers: Mapping[int, Mapping] | None,
) -> list[JudgeRequest]:
    """All judge calls, in gen_judgment.py's order: default turn 1, reference-based turn 1,
    default turn 2, reference-based turn 2; questions in file order, then models."""
    default = [q for q in questions if q["category"] not in NEED_REF_CATS]
    math = [q for q in questions if q["category"] in NEED_REF_CATS]
    requests = []
    for qs, multi_turn in ((default, False), (math, False), (default, True), (math, True)):
        for q in qs:
            if multi_turn and len(q["turns"]) != 2:
                continue
            for model, answers in answers_by_model.items():
                a = answers.get(q["question_id"])
                if a is None:
                    raise InputError(
                        f"model {model} has no answer to question {q['question_id']}. Fix: "
                        "generate answers for every question in question.jsonl."
                    )
                ref = (ref_answers or {}).get(q["question_id"])
                requests.append(
                    build_judge_request(
                        q, a, judge_prompts, multi_turn=multi_turn, ref_answer=ref, model=model
                    )
                )
    return requests


def judge_answers(judge, requests: Sequence[JudgeRequest]) -> list[dict]:
    """Ask `judge` (a distill.eval.judges.Judge) for every request; one judgment record each.

    A judge whose `rating` is "expected" (the in-process TransformersJudge) gives its rating with
    `rate(messages) -> (score, text)`: the score is the probability-weighted rating (a float in
    [1, 10]) and the text records how it was read. Otherwise the judge writes its judgment and
    the score is FastChat's [[x]] parse of it. The judge's cache keeps every paid reply, so an
    interrupted run resumes for free.
    """
    from distill.eval.judges import judge_map

    expected = judge.rating == "expected"

    def one(r: JudgeRequest) -> dict:
        if expected:
            score, text = judge.rate(r.messages)
            return make_judgment(r, judge.name, text) | {"score": score}
        text = judge.complete(
            r.messages, max_tokens=JUDGE_MAX_TOKENS, temperature=JUDGE_TEMPERATURE
        )
        return make_judgment(r, judge.name, text)

    records = judge_map(judge, one, requests)
    n_bad = sum(r["score"] == UNPARSED for r in records)
    if n_bad:
        log.warning(
            "%d of %d judgments have no [[rating]] (score -1, left out of means)",
            n_bad,
            len(records),
        )
    return records


# --- aggregation (show_result.py, single mode) ---------------------------------------------------


def aggregate(
    judgments: Sequence[Mapping] | pd.DataFrame, questions: Sequence[Mapping]
) -> pd.DataFrame:
    """Per-model MT-Bench scores, as show_result.py (single mode) and FastChat's radar compute them.

    Returns a DataFrame indexed by model, sorted by overall (descending), with columns
    turn1, turn2, overall, Writing, Roleplay, Reasoning, Math, Coding, Extraction, STEM, Humanities
    (means over rows whose score != -1; NaN where a model has no such row), n_scored, n_unparsed.
    """
    df = pd.DataFrame(list(judgments)) if not isinstance(judgments, pd.DataFrame) else judgments
    if df.empty:
        raise InputError("no judgments to score. Fix: pass non-empty judgment files.")
    category = {q["question_id"]: q["category"] for q in questions}
    unknown = sorted(set(df["question_id"]) - set(category))
    if unknown:
        raise InputError(
            f"judgments for question_id {unknown[:5]} that question.jsonl does not have. Fix: "
            "pass the question.jsonl the answers were generated from."
        )
    dup = df.duplicated(["model", "question_id", "turn"])
    if dup.any():
        log.warning(
            "%d duplicate (model, question, turn) judgments: each counts, as in FastChat", dup.sum()
        )
    models = sorted(df["model"].unique())
    valid = df[df["score"] != UNPARSED]
    by_model = valid.groupby("model")["score"]
    out = pd.DataFrame(index=pd.Index(models, name="model"))
    out["turn1"] = valid[valid["turn"] == 1].groupby("model")["score"].mean()
    out["turn2"] = valid[valid["turn"] == 2].groupby("model")["score"].mean()
    out["overall"] = by_model.mean()
    cats = valid["question_id"].map(category)
    for cat, label in CATEGORY_LABELS.items():
        out[label] = valid[cats == cat].groupby("model")["score"].mean()
    out["n_scored"] = by_model.size().reindex(out.index).fillna(0).astype(int)
    out["n_unparsed"] = (df["score"] == UNPARSED).groupby(df["model"]).sum().reindex(out.index)
    out[SCORE_COLUMNS] = out[SCORE_COLUMNS].astype(float)
    return out.sort_values("overall", ascending=False, kind="stable")


# --- CLI ---------------------------------------------------------------------------------------


def judge_settings(args: argparse.Namespace) -> tuple[dict, str]:
    """The judge's settings from --judge-config (a YAML file) or --judge-json (inline JSON),
    and a name for messages."""
    if args.judge_json:
        try:
            data = json.loads(args.judge_json)
        except json.JSONDecodeError as e:
            raise InputError(f"--judge-json is not valid JSON ({e.msg}).") from None
        if not isinstance(data, dict):
            raise InputError("--judge-json: expected a JSON object of judge settings.")
        return data, "--judge-json"
    return _load_yaml_mapping(args.judge_config), args.judge_config


def add_judge_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--judge-config", help="YAML mapping of judge settings")
    group.add_argument("--judge-json", help="the judge settings as one JSON object")


def _load_yaml_mapping(path: str) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: judge config not found. Fix: check --judge-config.")
    data = yaml.safe_load(p.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise InputError(f"{p}: expected a mapping of judge settings (model, base_url, ...).")
    return data.get("judge", data) if isinstance(data.get("judge"), dict) else data


def cmd_judge(args: argparse.Namespace) -> None:
    from distill.eval.judges import JudgeError, judge_from_config

    data = Path(args.data_dir)
    questions = read_questions(args.questions or data / "question.jsonl")
    judge_prompts = read_judge_prompts(args.judge_prompts or data / "judge_prompts.jsonl")
    ref_answers = read_answers(args.reference or data / "reference_answer" / "gpt-4.jsonl")
    answers_by_model = {}
    for path in args.answers:
        answers = read_answers(path)
        name = answers_model_name(answers, path)
        if name in answers_by_model:
            raise InputError(f"{path}: model {name} given twice. Fix: one answer file per model.")
        answers_by_model[name] = answers
    judge = judge_from_config(*judge_settings(args))
    requests = plan_requests(questions, answers_by_model, judge_prompts, ref_answers)
    log.info("%d judge calls for %d model(s)", len(requests), len(answers_by_model))
    try:
        records = judge_answers(judge, requests)
    except JudgeError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    write_judgments(args.out, records)
    log.info("wrote %s", args.out)


def cmd_score(args: argparse.Namespace) -> None:
    questions = read_questions(args.questions)
    judgments = [j for path in args.judgments for j in read_judgments(path)]
    table = aggregate(judgments, questions)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.round(4).to_string())
    if args.out:
        with atomic_path(args.out) as tmp:
            table.to_csv(tmp)
        log.info("wrote %s", args.out)


def main(argv: Sequence[str] | None = None) -> None:
    setup_logging()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    j = sub.add_parser("judge", help="judge answer files into a judgments jsonl")
    j.add_argument("--answers", nargs="+", required=True, help="model_answer jsonl, one per model")
    j.add_argument("--data-dir", default="results/eval/mtbench/data")
    j.add_argument("--questions", help="default: DATA_DIR/question.jsonl")
    j.add_argument("--judge-prompts", help="default: DATA_DIR/judge_prompts.jsonl")
    j.add_argument("--reference", help="default: DATA_DIR/reference_answer/gpt-4.jsonl")
    add_judge_arguments(j)
    j.add_argument("--out", required=True)
    j.set_defaults(fn=cmd_judge)
    s = sub.add_parser("score", help="per-model MT-Bench scores from judgment files")
    s.add_argument("--judgments", nargs="+", required=True)
    s.add_argument("--questions", required=True)
    s.add_argument("--out", help="CSV to write (model, turn1, turn2, overall, categories, counts)")
    s.set_defaults(fn=cmd_score)
    args = p.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main_guard(main)
