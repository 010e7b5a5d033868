"""Model answers for MT-Bench and outputs for AlpacaEval, from a model directory.

Launch:

    # the MT-Bench questions to ask (a subset spread over the 8 categories, or all 80)
    python -m distill.eval.answers questions --questions results/eval/mtbench/data/question.jsonl \\
        --n-questions 8 --out results/eval/mtbench/questions.jsonl

    # both turns of every question -> FastChat's model_answer format
    python -m distill.eval.answers mtbench --model-dir results/models/teacher --name teacher \\
        --questions results/eval/mtbench/questions.jsonl --max-new-tokens 64 --batch-size 8 \\
        --backend auto --seed 0 --precision bf16 \\
        --out results/eval/mtbench/seed0/answers/teacher.jsonl

    # one output per instruction -> alpaca_eval's model_outputs.json
    python -m distill.eval.answers alpaca --model-dir results/models/teacher --name teacher \\
        --instructions results/data/instructions/heldout.jsonl --n-instructions 16 \\
        --max-new-tokens 96 --temperature 0 --batch-size 8 --backend auto --seed 0 \\
        --precision bf16 --out results/eval/alpaca/seed0/outputs/teacher.json

MT-Bench as FastChat's gen_model_answer.py runs it: the model's own chat template (no system
message of ours), turn 1 first, then turn 2 on the conversation that holds turn 1's answer; the
sampling temperature of each question's category (FastChat's table, `mtbench.TEMPERATURE_CONFIG`:
greedy where it is 0); one answer per question. Questions that share a temperature are generated
together in batches.

AlpacaEval: `--instructions` is a dataset jsonl of prompt-only rows (the held-out instructions of
the embedded default; the instruction is the last user message) or an alpaca_eval-style JSON list
of {"instruction", ...} (the official 805, alpaca_eval.json, as distill.eval.alpaca_data writes it).

Backends: `transformers` (distill.generation: batched, left-padded) or `vllm` (only when vLLM is
installed and a GPU is visible); `auto` picks vLLM when both hold, else transformers.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from distill.config import schema_defaults
from distill.eval import mtbench
from distill.eval.alpaca import read_model_outputs, write_model_outputs
from distill.io import InputError, main_guard, read_examples, setup_logging, write_jsonl

log = logging.getLogger(__name__)

# generate(conversations, max_new_tokens, temperature) -> one reply per conversation
GenerateFn = Callable[[list[list[dict]], int, float], list[str]]


# --- which questions and instructions ----------------------------------------------------------


def select_questions(
    questions: Sequence[dict], question_ids: Sequence[int] = (), n_questions: int | None = None
) -> list[dict]:
    """The questions to ask, in question.jsonl order.

    question_ids (non-empty) wins: exactly those. Otherwise the first `n_questions` of a
    round-robin over the categories in FastChat's order (writing, roleplay, reasoning, math,
    coding, extraction, stem, humanities; each category's questions in file order), so 8 takes one
    question per category and 16 two; None or >= len(questions) takes all.
    """
    if question_ids:
        by_id = {q["question_id"]: q for q in questions}
        unknown = [i for i in question_ids if i not in by_id]
        if unknown:
            raise InputError(
                f"eval.mtbench.question_ids: {unknown} are not in question.jsonl (ids "
                f"{min(by_id)}..{max(by_id)}). Fix: list ids from the file."
            )
        wanted = set(question_ids)
        return [q for q in questions if q["question_id"] in wanted]
    if n_questions is None or n_questions >= len(questions):
        return list(questions)
    order = [
        *mtbench.CATEGORIES,
        *sorted({q["category"] for q in questions} - {*mtbench.CATEGORIES}),
    ]
    queues = {c: [q for q in questions if q["category"] == c] for c in order}
    picked: list[dict] = []
    while len(picked) < n_questions:
        for c in order:
            if queues[c] and len(picked) < n_questions:
                picked.append(queues[c].pop(0))
    keep = {q["question_id"] for q in picked}
    return [q for q in questions if q["question_id"] in keep]


def load_instructions(source: str, n_instructions: int = 0) -> list[dict]:
    """[{"instruction", "dataset", "messages"}] from a dataset jsonl or an alpaca_eval JSON list;
    the first `n_instructions` (0: all)."""
    if source == "hub":  # jobs never download: the local rule alpaca_data writes the file
        raise InputError(
            "--instructions hub: generation reads local files only. Fix: pass the file that "
            "`python -m distill.eval.alpaca_data --source hub` wrote."
        )
    if source.endswith(".json"):
        rows = [
            {
                "instruction": r["instruction"],
                "dataset": r.get("dataset", Path(source).stem),
                "messages": [{"role": "user", "content": r["instruction"]}],
            }
            for r in read_instruction_list(source)
        ]
    else:
        rows = []
        for r in read_examples(source, require_response=False):
            messages = list(r["messages"])
            if messages[-1]["role"] == "assistant":  # a full row: ask its prompt again
                messages = messages[:-1]
            user = [m["content"] for m in messages if m["role"] == "user"]
            rows.append({"instruction": user[-1], "dataset": r["domain"], "messages": messages})
    return rows[:n_instructions] if n_instructions else rows


def read_instruction_list(path: str) -> list[dict]:
    """An alpaca_eval JSON list with at least "instruction" per record (e.g. alpaca_eval.json)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: instructions file not found. Fix: check eval.alpaca.instructions.")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{p}: not valid JSON ({e.msg}, line {e.lineno}).") from None
    if not isinstance(data, list) or not all(
        isinstance(r, dict) and isinstance(r.get("instruction"), str) for r in data
    ):
        raise InputError(f'{p}: expected a JSON list of {{"instruction": ...}} records.')
    return data


# --- generation ---------------------------------------------------------------------------------


def mtbench_answers(
    generate: GenerateFn, questions: Sequence[dict], model_id: str, max_new_tokens: int
) -> list[dict]:
    """Answer every turn of every question with `generate`; FastChat answer records.

    Turn t of a question is asked on the conversation [user q1, assistant a1, ..., user qt], so
    turn 2 sees turn 1's answer. Each turn is one `generate` call per category temperature.
    """
    turns: dict[int, list[str]] = {q["question_id"]: [] for q in questions}
    for t in range(max(len(q["turns"]) for q in questions)):
        asked = [q for q in questions if len(q["turns"]) > t]
        by_temperature: dict[float, list[dict]] = {}
        for q in asked:
            by_temperature.setdefault(mtbench.sampling_temperature(q["category"]), []).append(q)
        for temperature, group in sorted(by_temperature.items()):
            conversations = []
            for q in group:
                conv = []
                for question, answer in zip(q["turns"][:t], turns[q["question_id"]], strict=True):
                    conv += [
                        {"role": "user", "content": question},
                        {"role": "assistant", "content": answer},
                    ]
                conversations.append(conv + [{"role": "user", "content": q["turns"][t]}])
            replies = generate(conversations, max_new_tokens, temperature)
            for q, reply in zip(group, replies, strict=True):
                turns[q["question_id"]].append(reply)
            log.info("turn %d, temperature %.1f: %d answers", t + 1, temperature, len(group))
    return [
        mtbench.make_answer(q["question_id"], model_id, turns[q["question_id"]]) for q in questions
    ]


def alpaca_outputs(
    generate: GenerateFn,
    instructions: Sequence[dict],
    generator: str,
    max_new_tokens: int,
    temperature: float,
) -> list[dict]:
    """alpaca_eval model_outputs records: one output per instruction, in the given order."""
    replies = generate([r["messages"] for r in instructions], max_new_tokens, temperature)
    return [
        {
            "instruction": r["instruction"],
            "output": reply,
            "generator": generator,
            "dataset": r["dataset"],
        }
        for r, reply in zip(instructions, replies, strict=True)
    ]


def vllm_usable() -> bool:
    import torch

    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def make_generator(
    model_dir: str, backend: str, precision: str, batch_size: int, seed: int
) -> GenerateFn:
    """A GenerateFn for `backend` (auto | transformers | vllm)."""
    if backend == "auto":
        backend = "vllm" if vllm_usable() else "transformers"
    if backend == "vllm":
        if not vllm_usable():
            raise InputError(
                "eval.backend is vllm, but vLLM is not installed or no GPU is visible. Fix: "
                "install vllm on the GPU machine, or set eval.backend: auto."
            )
        return _vllm_generator(model_dir, precision, seed)
    from distill.generation import generate, load_for_generation

    model, tokenizer = load_for_generation(model_dir, precision)
    log.info("transformers backend on %s", model.device)

    def run(conversations: list[list[dict]], max_new_tokens: int, temperature: float) -> list[str]:
        return generate(
            model, tokenizer, conversations, max_new_tokens, temperature, batch_size, seed
        )

    return run


def _vllm_generator(model_dir: str, precision: str, seed: int) -> GenerateFn:
    # NOT TESTED HERE: vLLM is not installed on the development machine (CPU only). Kept small:
    # vLLM applies the model's chat template itself (LLM.chat) and batches everything at once.
    import vllm

    llm = vllm.LLM(
        model=model_dir, dtype="bfloat16" if precision == "bf16" else "float32", seed=seed
    )

    def run(conversations: list[list[dict]], max_new_tokens: int, temperature: float) -> list[str]:
        params = vllm.SamplingParams(temperature=temperature, max_tokens=max_new_tokens, seed=seed)
        outs = llm.chat(conversations, params, use_tqdm=False)
        return [o.outputs[0].text.strip() for o in outs]

    return run


# --- CLI ----------------------------------------------------------------------------------------


def cmd_questions(args: argparse.Namespace) -> None:
    questions = mtbench.read_questions(args.questions)
    picked = select_questions(questions, args.question_ids or (), args.n_questions)
    write_jsonl(args.out, picked)
    cats = sorted({q["category"] for q in picked})
    log.info("%d questions (%s) -> %s", len(picked), ", ".join(cats), args.out)


def cmd_mtbench(args: argparse.Namespace) -> None:
    questions = mtbench.read_questions(args.questions)
    generate = make_generator(
        args.model_dir, args.backend, args.precision, args.batch_size, args.seed
    )
    answers = mtbench_answers(generate, questions, args.name, args.max_new_tokens)
    mtbench.write_answers(args.out, answers)
    log.info("wrote %d answers to %s", len(answers), args.out)


def cmd_alpaca(args: argparse.Namespace) -> None:
    instructions = load_instructions(args.instructions, args.n_instructions)
    generate = make_generator(
        args.model_dir, args.backend, args.precision, args.batch_size, args.seed
    )
    records = alpaca_outputs(
        generate, instructions, args.name, args.max_new_tokens, args.temperature
    )
    write_model_outputs(args.out, records)
    read_model_outputs(args.out)  # the file reads back in alpaca_eval's format
    log.info("wrote %d outputs to %s", len(records), args.out)


def _generation_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", required=True)
    p.add_argument("--name", required=True, help="model_id / generator written into the records")
    p.add_argument("--max-new-tokens", type=int, required=True)
    defaults = schema_defaults()  # the schema is the one home of defaults
    p.add_argument("--batch-size", type=int, default=defaults["eval"]["batch_size"])
    p.add_argument("--backend", choices=["auto", "transformers", "vllm"],
                   default=defaults["eval"]["backend"])  # fmt: skip
    p.add_argument("--seed", type=int, default=defaults["seed"])
    p.add_argument("--precision", choices=["bf16", "fp32"], default=defaults["precision"])
    p.add_argument("--out", required=True)


def main(argv: Sequence[str] | None = None) -> None:
    setup_logging()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("questions", help="the MT-Bench questions to ask")
    q.add_argument("--questions", required=True, help="question.jsonl (all 80)")
    q.add_argument("--question-ids", type=int, nargs="*", help="exactly these (wins)")
    q.add_argument("--n-questions", type=int, help="spread over the categories; default all")
    q.add_argument("--out", required=True)
    q.set_defaults(fn=cmd_questions)
    m = sub.add_parser("mtbench", help="answer MT-Bench questions (both turns)")
    m.add_argument("--questions", required=True)
    _generation_arguments(m)
    m.set_defaults(fn=cmd_mtbench)
    a = sub.add_parser("alpaca", help="AlpacaEval model outputs")
    a.add_argument("--instructions", required=True, help="dataset jsonl or a JSON list")
    alpaca = schema_defaults("eval.alpaca")
    a.add_argument("--n-instructions", type=int, default=alpaca["n_instructions"],
                   help="the first N (0: all)")  # fmt: skip
    a.add_argument("--temperature", type=float, default=alpaca["temperature"])
    _generation_arguments(a)
    a.set_defaults(fn=cmd_alpaca)
    args = p.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main_guard(main)
