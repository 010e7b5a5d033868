"""Helpers shared by every job: atomic writes, validated jsonl, logging setup, the pad id.

Every output of the workflow is written through `atomic_path` (write to a temporary file in the
same folder, fsync, rename) so that a killed job never leaves a half-written file that a rerun
would take for finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


class InputError(ValueError):
    """Bad input from the user: the message names the file/line/key and the fix."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; outputs are shared on clusters
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


ROLES = ("system", "user", "assistant")


def check_example(row: Any, require_response: bool = True) -> str | None:
    """Return what is wrong with one dataset row, or None if it follows the contract.

    The dataset contract (README, "What it makes"), two kinds of row:
      - chat: {"id": str, "domain": str, "messages": [{"role", "content"}, ...]} with at least one
        user turn and, when `require_response`, a final assistant turn (the training target);
        "answer" optional;
      - plain text (pretraining data): {"id": str, "domain": str, "text": str}, every token a
        target (distill.batching says how each kind is masked).
    """
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    for key in ("id", "domain"):
        if key not in row:
            return f'missing key "{key}"'
    if not isinstance(row["id"], str | int):
        return '"id" must be a string'
    if not isinstance(row["domain"], str) or not row["domain"]:
        return '"domain" must be a non-empty string'
    if "messages" in row and "text" in row:
        return 'both "messages" and "text": a row is either a chat row or a plain-text row'
    if "text" in row:
        return (
            None
            if isinstance(row["text"], str) and row["text"]
            else '"text" must be a non-empty string'
        )
    if "messages" not in row:
        return 'missing key "messages" (a chat row) or "text" (a plain-text row)'
    return _check_messages(row["messages"], require_response)


def _check_messages(messages: Any, require_response: bool) -> str | None:
    if not isinstance(messages, list) or not messages:
        return '"messages" must be a non-empty list'
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) - {"role", "content"} or "role" not in m:
            return f'messages[{i}] must be {{"role": ..., "content": ...}}'
        if m["role"] not in ROLES:
            return f'messages[{i}].role is "{m["role"]}", expected one of {", ".join(ROLES)}'
        if not isinstance(m.get("content"), str):
            return f"messages[{i}].content must be a string"
    if require_response and messages[-1]["role"] != "assistant":
        return "the last message must be the assistant's response (the training target)"
    if not any(m["role"] == "user" for m in messages):
        return "no user message"
    return None


def read_jsonl(path: str | os.PathLike, what: str = "example") -> list[tuple[int, dict]]:
    """(line number, object) for each non-empty line; bad JSON stops with the file and line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} file not found. Fix: check the path in your config.")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(
                    f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}). "
                    f"Fix: one JSON {what} object per line."
                ) from None
            if not isinstance(row, dict):
                raise InputError(f"{path}:{lineno}: expected a JSON object ({what}).")
            rows.append((lineno, row))
    return rows


def read_examples(path: str | os.PathLike, require_response: bool = True) -> list[dict]:
    """Read a dataset jsonl, stopping at the first bad row with the file, line and the fix.

    With `require_response=False` rows may end on a user turn (prompt-only sets).
    """
    rows = []
    for lineno, row in read_jsonl(path):
        problem = check_example(row, require_response)
        if problem:
            raise InputError(
                f"{path}:{lineno}: {problem}. Fix this row or remove it; each row must be "
                '{"id": ..., "domain": ..., "messages": [..., {"role": "assistant", ...}]} '
                '(a chat row) or {"id": ..., "domain": ..., "text": ...} (a plain-text row).'
            )
        rows.append(row)
    if not rows:
        raise InputError(f"{path}: no rows. Fix: the file must hold at least one example.")
    return rows


def pad_id(tokenizer) -> int:
    """The id that pads batches: the tokenizer's pad token, else its EOS, else 0.

    Padded positions are masked out of attention and of every loss, so any id in the vocabulary
    works; the pad token is preferred so that padded batches read naturally when decoded.
    """
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def setup_logging() -> logging.Logger:
    """Log to stderr (Snakemake's `log:` captures it) with timestamps."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    return logging.getLogger("distill")


def main_guard(main):
    """Run `main()`; print an InputError as one paragraph and exit 2 instead of a traceback."""
    try:
        return main()
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
