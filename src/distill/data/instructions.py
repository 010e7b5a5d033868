"""The instruction set for SFT, KD and DAE, and the held-out instructions for AlpacaEval.

Sources (config `data.instructions.source`):
  - `local` (the offline default): prompts built from templates in several domains, answered by
    the teacher (greedy), plus rows of the math training split with their true answers (domains
    `arithmetic`, `algebra`, ... as mathematics_dataset's module families name them);
  - `hf:<dataset id>`: a hub dataset with a `messages` column (e.g. HuggingFaceH4/ultrachat_200k);
    rows take the `domain` column if present, else `data.instructions.domain`;
  - a path to a jsonl in a hub chat dataset's format (UltraChat-200k's rows, {"prompt",
    "prompt_id", "messages"}: the paper smoke's stand-in) or in the project's format; rows take
    `domain` when they have one, else `data.instructions.domain` (checked row by row, a bad row
    stops with file:line).

Writes train.jsonl, valid.jsonl (held-out rows for the training loss) and heldout.jsonl (prompts
only, never trained on: the AlpacaEval instructions of the embedded default).

    python -m distill.data.instructions --source local --teacher results/models/teacher \
        --math results/data/math/train.jsonl --settings '{"n_prompts": 48, ...}' --seed 0 \
        --out-dir results/data/instructions
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
from pathlib import Path

from distill.io import (
    InputError,
    check_example,
    main_guard,
    read_examples,
    read_jsonl,
    setup_logging,
    write_jsonl,
)

# Templates x topics give a few hundred distinct prompts in four general domains. They exist so
# the embedded default can run offline; a real run names a hub dataset instead.
TEMPLATES = {
    "writing": [
        "Write a haiku about {topic}.",
        "Write a two-sentence story about {topic}.",
        "Write a short, friendly email inviting a colleague to talk about {topic}.",
        "Write a product description for a board game about {topic}.",
    ],
    "knowledge": [
        "Explain what {topic} is to a ten-year-old.",
        "Give three interesting facts about {topic}.",
        "What is the history of {topic}, in brief?",
        "Why does {topic} matter? Answer in two sentences.",
    ],
    "advice": [
        "Give me three tips for getting started with {topic}.",
        "What are common mistakes beginners make with {topic}?",
        "How should I plan a weekend around {topic}?",
    ],
    "reasoning": [
        "List two pros and two cons of {topic}.",
        "Compare {topic} with something similar and say which you would choose and why.",
        "If {topic} disappeared tomorrow, what would change?",
    ],
}
TOPICS = [
    "the ocean", "volcanoes", "bicycles", "coffee", "the moon", "honeybees", "chess",
    "rainforests", "photography", "the printing press", "gardening", "electric cars", "jazz",
    "origami", "the internet", "sleep", "mountains", "libraries", "recycling", "trains",
    "baking bread", "the solar system", "running", "dinosaurs", "winter", "robots", "music",
    "friendship", "maps", "the Roman Empire", "cooking pasta", "birds", "clouds", "painting",
]  # fmt: skip


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def local_prompts(n: int, seed: int) -> list[dict]:
    """`n` distinct (domain, prompt) rows, drawn without replacement in a seeded order."""
    pool = [
        {"domain": domain, "prompt": template.format(topic=topic)}
        for domain, templates in TEMPLATES.items()
        for template, topic in itertools.product(templates, TOPICS)
    ]
    if n > len(pool):
        raise InputError(
            f"data.instructions.n_prompts + n_heldout = {n}: the local source has {len(pool)} "
            "prompts. Fix: ask for fewer, or use a hub dataset (source: hf:<id>)."
        )
    return random.Random(seed).sample(pool, n)


def split_by_domain(rows: list[dict], rng: random.Random, valid_share: float = 0.125):
    """Shuffle, then hold out `valid_share` of each domain (at least 1 row of every domain with
    2 or more): every domain needs held-out rows for per-domain perplexity (DDK)."""
    rng.shuffle(rows)
    train, valid = [], []
    for domain in sorted({r["domain"] for r in rows}):
        part = [r for r in rows if r["domain"] == domain]
        n_valid = max(1, round(valid_share * len(part))) if len(part) >= 2 else 0
        valid += part[:n_valid]
        train += part[n_valid:]
    rng.shuffle(train)
    return train, valid


def as_chat_row(record: dict, row_id: str, default_domain: str, where: str) -> dict:
    """A row of a chat dataset (UltraChat's {"prompt", "prompt_id", "messages"}, or the project's
    own format) as the project's row; a bad row stops with `where` (file:line or hub row)."""
    messages = record.get("messages")
    if not isinstance(messages, list):
        raise InputError(
            f"{where}: no `messages` list (the row has {sorted(record)}). Fix: use a chat dataset "
            "whose rows hold `messages` (as HuggingFaceH4/ultrachat_200k), or repair the row."
        )
    row = {"id": str(record.get("id", row_id)), "domain": record.get("domain") or default_domain}
    row["messages"] = [
        {"role": m.get("role"), "content": m.get("content")} if isinstance(m, dict) else m
        for m in messages
    ]
    problem = check_example(row)
    if problem:
        raise InputError(f"{where}: {problem}. Fix this row or remove it.")
    return row


def hub_rows(dataset_id: str, split: str, n: int, default_domain: str) -> list[dict]:
    """The first `n` rows of a hub dataset with a `messages` column, in the project's format."""
    from datasets import load_dataset

    ds = load_dataset(dataset_id, split=f"{split}[:{n}]")
    if "messages" not in ds.column_names:
        raise InputError(
            f"data.instructions.source hf:{dataset_id}: no `messages` column (it has "
            f"{ds.column_names}). Fix: use a chat dataset, or convert it to jsonl first."
        )
    return [
        as_chat_row(r, f"{dataset_id}-{i}", default_domain, f"hf:{dataset_id} row {i}")
        for i, r in enumerate(ds)
    ]


def local_rows(path: str, n: int, default_domain: str) -> list[dict]:
    """The first `n` rows of a local jsonl in a hub chat dataset's format (UltraChat's
    {"prompt", "prompt_id", "messages"}) or the project's ({"id", "domain", "messages"})."""
    records = read_jsonl(path, what="chat row")[:n]
    if not records:
        raise InputError(f"{path}: no rows. Fix: the file must hold at least one conversation.")
    stem = Path(path).name.split(".")[0]
    return [
        as_chat_row(r, f"{stem}-{i}", default_domain, f"{path}:{lineno}")
        for i, (lineno, r) in enumerate(records)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True)
    parser.add_argument("--teacher", required=True, help="teacher model directory (local source)")
    parser.add_argument("--math", required=True, help="math training split (jsonl)")
    parser.add_argument("--settings", required=True, help="JSON of data.instructions")
    parser.add_argument("--seed", type=int, required=True, help="config `seed`")
    parser.add_argument("--precision", required=True, choices=["bf16", "fp32"])
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args()
    log = setup_logging()
    cfg = json.loads(args.settings)
    rng = random.Random(args.seed)

    if args.source == "local":
        from distill.generation import generate, load_for_generation

        drawn = local_prompts(cfg["n_prompts"] + cfg["n_heldout"], args.seed)
        heldout, train_prompts = drawn[: cfg["n_heldout"]], drawn[cfg["n_heldout"] :]
        model, tokenizer = load_for_generation(args.teacher, args.precision)
        conversations = [[user(p["prompt"])] for p in train_prompts]
        log.info("teacher answers %d local prompts", len(conversations))
        answers = generate(
            model, tokenizer, conversations, cfg["max_new_tokens"], batch_size=cfg["batch_size"]
        )
        general = [
            {"id": f"local-{i}", "domain": p["domain"], "messages": c + [assistant(a)]}
            for i, (p, c, a) in enumerate(zip(train_prompts, conversations, answers, strict=True))
        ]
        heldout_rows = [
            {"id": f"heldout-{i}", "domain": p["domain"], "messages": [user(p["prompt"])]}
            for i, p in enumerate(heldout)
        ]
    else:
        total = cfg["n_prompts"] + cfg["n_heldout"]
        if args.source.startswith("hf:"):
            rows = hub_rows(args.source[3:], cfg["split"], total, cfg["domain"])
        else:
            rows = local_rows(args.source, total, cfg["domain"])
        heldout_rows = [{**r, "messages": r["messages"][:-1]} for r in rows[: cfg["n_heldout"]]]
        general = rows[cfg["n_heldout"] :]

    math_rows = read_examples(args.math)
    rng.shuffle(math_rows)
    train, valid = split_by_domain(general + math_rows[: cfg["math_rows"]], rng)
    out = Path(args.out_dir)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "valid.jsonl", valid)
    write_jsonl(out / "heldout.jsonl", heldout_rows)
    domains = sorted({r["domain"] for r in train})
    log.info("wrote %d train, %d valid, %d held-out rows; domains %s", len(train), len(valid),
             len(heldout_rows), domains)  # fmt: skip


if __name__ == "__main__":
    main_guard(main)
