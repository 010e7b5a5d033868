"""DDK's pretraining text: the first rows of each domain's source, streamed, as plain-text rows.

DDK (arXiv 2407.16154) distils on text from 10 domains with the loss on all tokens. Each domain of
config `data.pretrain.domains` names a source and, optionally, which of its rows belong to it:

    <domain>: {source: hf:<dataset id> | <local .jsonl/.jsonl.gz>, config: <hub config>,
               data_files: <glob inside the hub repo>, split: train, text_field: text,
               where: {<dotted field>: <value>}}

The paper's domains (the schema's default): RedPajama's 7 (CommonCrawl, C4, GitHub, Wikipedia,
Books, ArXiv, StackExchange) from `cerebras/SlimPajama-627B`, told apart by each row's
`meta.redpajama_set_name`; OpenWebMath (`open-web-math/open-web-math`); and stand-ins for DDK's
Chinese Books and Chinese Common Crawl, which are not public: Chinese Wikisource
(`wikimedia/wikisource`, config 20231201.zh: books and classical texts transcribed by volunteers)
and mC4's Chinese part (`allenai/c4`, files multilingual/c4-zh.*.json.gz: Common Crawl, cleaned
as C4). All load with today's `datasets` (json/parquet files, no dataset scripts).

Hub sources are streamed (nothing but the rows read is downloaded: SlimPajama has 627B tokens),
one pass per source shared by the domains that name it: the first `valid_per_domain` rows of a
domain go to valid.jsonl (DDK: 500 per domain), the next `n_train_per_domain` to train.jsonl, so
valid stays put when n_train changes. A local file must have the hub rows' fields (jsonl, one row
a line: SlimPajama's {"text", "meta": {"redpajama_set_name"}}, OpenWebMath's {"url", "text",
"date", "metadata"}, Wikisource's {"id", "url", "title", "text"}, mC4's {"text", "timestamp",
"url"}); a bad row stops the run with the file, the line and the fix. Documents longer than
`max_chars` characters are split into consecutive pieces of max_chars, each a row, at most
`max_chunks` of them per document (the rest is dropped); all rows of a document land in the same
split. Pieces let a domain of few, long documents fill its rows from few documents (SlimPajama
has about one book in every few thousand rows). Empty documents are skipped. SlimPajama's files
are .jsonl.zst: streaming them needs the `zstandard` package.

Each output row: {"id": "<domain>-<split>-<i>", "domain": "<domain>", "text": "..."}.

    python -m distill.data.pretrain --settings '<JSON of data.pretrain>' \
        --out-dir results/data/pretrain
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import logging
from collections.abc import Iterator
from pathlib import Path

from distill.io import InputError, atomic_path, main_guard, setup_logging

log = logging.getLogger("distill.data.pretrain")
SPLITS = ("valid", "train")


def field(record: dict, dotted: str):
    """record["a"]["b"] for "a.b"; KeyError if a part is missing (a nested JSON string counts)."""
    value = record
    for part in dotted.split("."):
        if isinstance(value, str):  # some hub sets keep nested metadata as a JSON string
            value = json.loads(value)
        if not isinstance(value, dict) or part not in value:
            raise KeyError(dotted)
        value = value[part]
    return value


def local_records(path: str) -> Iterator[tuple[str, dict]]:
    """(where, record) for each non-empty line of a .jsonl/.jsonl.gz file; bad JSON stops."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"{file}: pretraining source not found. Fix: check data.pretrain.domains.")
    opener = gzip.open if file.suffix == ".gz" else open
    with opener(file, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(
                    f"{file}:{lineno}: not valid JSON ({e.msg} at column {e.colno}). Fix: one "
                    "JSON object per line, with the fields of the hub dataset it stands for."
                ) from None
            yield f"{file}:{lineno}", record


def hub_records(spec: dict) -> Iterator[tuple[str, dict]]:
    """(where, record) for the rows of a hub dataset, streamed in the order the hub stores them."""
    from datasets import load_dataset

    dataset_id = spec["source"][3:]
    try:
        stream = load_dataset(
            dataset_id,
            name=spec["config"],
            data_files=spec["data_files"],
            split=spec["split"],
            streaming=True,
        )
        for i, record in enumerate(stream):
            yield f"hf:{dataset_id} row {i}", record
    except ImportError as e:
        raise InputError(
            f"hf:{dataset_id}: streaming it needs a package that is not installed ({e}). Fix: "
            "`pip install zstandard` (SlimPajama's files are .jsonl.zst)."
        ) from None


def records(spec: dict) -> Iterator[tuple[str, dict]]:
    return hub_records(spec) if spec["source"].startswith("hf:") else local_records(spec["source"])


def text_of(where: str, record: dict, spec: dict) -> str:
    """The document's text; a row without a string text field stops the run."""
    name = spec["text_field"]
    text = record.get(name) if isinstance(record, dict) else None
    if not isinstance(text, str):
        raise InputError(
            f"{where}: no string field `{name}` (row keys: {sorted(record)[:8]}). Fix: repair or "
            f"drop the row, or set text_field of the domain reading {spec['source']}."
        )
    return text


def belongs(where: str, record: dict, spec: dict) -> bool:
    """Whether a row matches every `where` condition of a domain (a missing field stops)."""
    for dotted, wanted in spec["where"].items():
        try:
            if field(record, dotted) != wanted:
                return False
        except (KeyError, json.JSONDecodeError):
            raise InputError(
                f"{where}: no field `{dotted}`, which the domain filter `where` reads. Fix: "
                "repair or drop the row, or correct `where` in data.pretrain.domains."
            ) from None
    return True


def group_by_source(domains: dict) -> dict[tuple, list[str]]:
    """Domains that read the same rows (source, config, files, split), in config order."""
    groups: dict[tuple, list[str]] = {}
    for name, spec in domains.items():
        key = tuple(json.dumps(spec.get(k)) for k in ("source", "config", "data_files", "split"))
        groups.setdefault(key, []).append(name)
    return groups


def pieces(text: str, count: int, n_valid: int, wanted: int, cfg: dict) -> list[str]:
    """The rows one document gives: up to max_chunks consecutive pieces of max_chars, never more
    than its split still needs (a document never straddles valid and train)."""
    size = cfg["max_chars"]
    parts = [text[k : k + size] for k in range(0, len(text), size)][: cfg["max_chunks"]]
    parts = [p for p in parts if p.strip()]
    room = n_valid - count if count < n_valid else wanted - count
    return parts[:room]


def take(domains: dict, names: list[str], wanted: dict[str, int], cfg: dict):
    """Yield (domain, i, text) for the first wanted[d] rows of each domain in `names` (pieces of
    its documents), from one pass over their shared source; stops reading as soon as every domain
    has its rows."""
    spec0 = domains[names[0]]
    count = dict.fromkeys(names, 0)
    for where, record in records(spec0):
        for name in names:
            spec = domains[name]
            if count[name] < wanted[name] and belongs(where, record, spec):
                text = text_of(where, record, spec)
                for piece in pieces(text, count[name], cfg["valid_per_domain"], wanted[name], cfg):
                    yield name, count[name], piece
                    count[name] += 1
                break  # a row belongs to one domain only
        if all(count[n] >= wanted[n] for n in names):
            return
    short = {n: count[n] for n in names if count[n] < wanted[n]}
    raise InputError(
        f"{spec0['source']}: its rows ran out with domains {short} short of the {wanted[names[0]]} "
        "rows each needs (valid_per_domain + n_train_per_domain). Fix: ask for fewer rows, or "
        "point the domain at a larger source."
    )


def settings(text: str) -> dict:
    """data.pretrain from --settings JSON, checked against the schema, its defaults filled (the
    domains' own keys too) so that the module can run without the workflow."""
    from distill.config import validate_config

    checked = validate_config({"data": {"pretrain": json.loads(text)}}, "--settings")
    return checked["data"]["pretrain"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", required=True, help="JSON of data.pretrain")
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args()
    setup_logging()
    cfg = settings(args.settings)
    domains, n_valid = cfg["domains"], cfg["valid_per_domain"]
    wanted = dict.fromkeys(domains, n_valid + cfg["n_train_per_domain"])
    out = Path(args.out_dir)
    # Rows go straight to disk (no document stays in memory); the stack closes each file before
    # its atomic_path renames it into place.
    with contextlib.ExitStack() as stack:
        files = {}
        for split in SPLITS:
            tmp = stack.enter_context(atomic_path(out / f"{split}.jsonl"))
            files[split] = stack.enter_context(open(tmp, "w", encoding="utf-8"))
        for names in group_by_source(domains).values():
            log.info("reading %s for %s", domains[names[0]]["source"], ", ".join(names))
            for name, i, text in take(domains, names, wanted, cfg):
                split, j = ("valid", i) if i < n_valid else ("train", i - n_valid)
                row = {"id": f"{name}-{split}-{j}", "domain": name, "text": text}
                files[split].write(json.dumps(row, ensure_ascii=False) + "\n")
    log.info("wrote %d domains x (%d valid + %d train) rows to %s", len(domains), n_valid,
             cfg["n_train_per_domain"], out)  # fmt: skip


if __name__ == "__main__":
    main_guard(main)
