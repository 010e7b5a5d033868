"""AlpacaEval's evaluation set as a local file: the download step, run before any compute job.

    python -m distill.eval.alpaca_data --source hub --out results/eval/alpaca/data/alpaca_eval.json
    python -m distill.eval.alpaca_data --source tests/data/alpaca_eval_small.json \\
        --out results/eval/alpaca/data/alpaca_eval.json

`hub` fetches the file `alpaca_eval.json` of the hub dataset tatsu-lab/alpaca_eval (805
instructions, each with text-davinci-003's output: AlpacaEval 1.0's reference) with
huggingface_hub, into HF_HOME's cache. The file is read directly, not through `datasets`:
alpaca_eval's own loader goes through a dataset script, which datasets >= 4 refuses. Any other
source is a local file in the same format (a JSON list of {"instruction", "output", "generator",
"dataset"}). Either way the records are checked and written to --out, which the generation and
judging jobs read (they never download).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from distill.io import InputError, main_guard, setup_logging, write_json

HUB_REPO = "tatsu-lab/alpaca_eval"
HUB_FILE = "alpaca_eval.json"
HUB_SIZE = 805
KEYS = ("instruction", "output", "generator", "dataset")


def fetch_from_hub() -> Path:
    """The hub file's path in the local hub cache (downloaded once)."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=HUB_REPO, filename=HUB_FILE, repo_type="dataset"))
    except Exception as error:  # no network, no hub access, a proxy: one message for all
        raise InputError(
            f"eval.alpaca.instructions is `hub`, but {HUB_FILE} of the dataset {HUB_REPO} could "
            f"not be downloaded ({type(error).__name__}: {error}). Fix: run on a machine with hub "
            f"access (HF_HOME on shared disk keeps the file for later runs), or download "
            f"https://huggingface.co/datasets/{HUB_REPO}/resolve/main/{HUB_FILE} and set "
            "eval.alpaca.instructions to its path."
        ) from None


def check_records(data, where: str) -> list[dict]:
    """The evaluation set's records, checked: a list of {instruction, output, generator,
    dataset} strings with no instruction twice."""
    if not isinstance(data, list) or not data:
        raise InputError(f"{where}: expected a non-empty JSON list of {{{', '.join(KEYS)}}}.")
    seen = set()
    for i, row in enumerate(data):
        bad = [k for k in KEYS if not isinstance(row, dict) or not isinstance(row.get(k), str)]
        if bad:
            raise InputError(
                f"{where}: record {i} lacks the string field(s) {', '.join(bad)}. Fix: every "
                f"record needs {', '.join(KEYS)} (output: the reference model's answer), as in "
                f"{HUB_REPO}'s {HUB_FILE}."
            )
        if row["instruction"] in seen:
            raise InputError(f"{where}: record {i} repeats an instruction. Fix: one record each.")
        seen.add(row["instruction"])
    return data


def read_source(source: str) -> tuple[list[dict], str]:
    """(records, where they came from) for `hub` or a local path."""
    path = fetch_from_hub() if source == "hub" else Path(source)
    if not path.is_file():
        raise InputError(
            f"eval.alpaca.instructions: {path} is not a file. Fix: `hub`, `heldout`, or the path "
            f"of a JSON list in {HUB_FILE}'s format."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e.msg}, line {e.lineno}).") from None
    return check_records(data, str(path)), str(path)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, help="`hub` or a local alpaca_eval.json")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    log = setup_logging()
    records, where = read_source(args.source)
    if args.source == "hub" and len(records) != HUB_SIZE:
        log.warning(
            "%s has %d instructions, not the %d of AlpacaEval", where, len(records), HUB_SIZE
        )
    write_json(args.out, records)
    generators = sorted({r["generator"] for r in records})
    log.info("%d instructions (reference outputs by %s) -> %s", len(records), generators, args.out)


if __name__ == "__main__":
    main_guard(main)
