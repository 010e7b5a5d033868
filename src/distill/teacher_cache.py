"""The teacher cache: the teacher's top-k next-token log-probs at every target token, on disk.

The teacher runs once over a training set; offline KD objectives then read its distribution
from here instead of running it at every step.

    python -m distill.teacher_cache --teacher results/models/teacher \
        --data results/data/instructions/train.jsonl --k 32 --temperature 1.0 --max-len 160 \
        --batch-size 8 --shard-examples 64 [--precision bf16] \
        [--student results/models/student_init --heldout results/data/instructions/valid.jsonl] \
        --out results/cache/teacher

Layout of `--out`:
  shard-00000.safetensors ...  each covers a contiguous range of encoded examples (in data order)
                               and holds, for the TARGET rows of those examples only (rows where
                               `target_mask` is true, see distill.batching; no loss reads others):
                                 logprobs      (N_targets, k) float16  top-k log-probs, descending
                                 indices       (N_targets, k) int32    their vocabulary ids
                                 leftover      (N_targets,)   float32  mass outside the top-k
                                 example_index (n_examples,)  int64    Encoded.index (jsonl line)
                                 offsets       (n_examples+1,) int64   example i's rows are
                                                               offsets[i]:offsets[i+1]
  progress.json                finished shards + their sha256 (updated atomically after each shard)
  manifest.json                written LAST: its presence means the cache is complete.

ROW -> TOKEN CONTRACT: row j holds the teacher's prediction of token j+1; only target rows are
stored, in order (the `target_mask` of distill.batching, same tokenizer, same max_len).

Why float16 for the log-probs (not bfloat16): top-k log-probs lie in about [-30, 0], far inside
fp16's range, where fp16 has 3 more mantissa bits than bf16 (spacing 2^-6 vs 2^-3 at |x| in
[16, 32), 2^-11 vs 2^-8 near -1), i.e. 8x smaller error for the same 2 bytes; bf16's wide exponent
buys nothing here. The leftover is a probability that can be tiny (1e-9), below fp16's normal
range, and is one number per token, so it stays float32 (4 bytes against 6·k for the top-k).

Resume: a rerun after a kill keeps every shard whose file still matches the sha256 recorded in
progress.json (for the same teacher/data/k/temperature/max_len/precision) and computes only the
rest; the result is byte-identical to an uninterrupted build. For tests,
DISTILL_KILL_AFTER_SHARD=N makes the build SIGKILL itself right after shard N (0-based) is
recorded. Snakemake: declare `manifest.json` (not the directory) as the rule's output, so that a
failed job's shards survive for the rerun.

Reading: `TeacherCache(out).batch(index, target_mask)` gives a `distill.losses.TopKTeacher`.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import logging
import os
import signal
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import safetensors.torch
import torch

from distill.batching import Encoded, collate, encode_examples
from distill.io import (
    InputError,
    atomic_path,
    main_guard,
    read_examples,
    setup_logging,
    sha256_file,
    write_json,
)
from distill.losses import TopKTeacher, forward_kl, topk_teacher

FORMAT = "distill.teacher_cache/1"
CONTRACT = (
    "row j holds the teacher's prediction of token j+1; only target rows are stored, in order"
)
LOGPROB_DTYPE = torch.float16  # see the module docstring for why not bfloat16
LEFTOVER_DTYPE = torch.float32
MANIFEST = "manifest.json"
PROGRESS = "progress.json"
KILL_ENV = "DISTILL_KILL_AFTER_SHARD"

log = logging.getLogger("distill.teacher_cache")


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.safetensors"


# --------------------------------------------------------------------------------------------
# Pure packing: per-example top-k rows <-> shard tensors <-> a (B, T, k) TopKTeacher
# --------------------------------------------------------------------------------------------


def pack_shard(example_indices: list[int], rows: list[TopKTeacher]) -> dict[str, torch.Tensor]:
    """The tensors of one shard from each example's target rows.

    Args:
        example_indices: Encoded.index of each example, ascending.
        rows: per example a TopKTeacher of its target rows only: logprobs (n_i, k),
            indices (n_i, k), leftover (n_i,).

    Returns:
        logprobs (N, k) float16, indices (N, k) int32, leftover (N,) float32 with N = sum n_i,
        example_index (n,) int64, offsets (n+1,) int64.
    """
    counts = [r.logprobs.shape[0] for r in rows]
    return {
        "logprobs": torch.cat([r.logprobs for r in rows]).to(LOGPROB_DTYPE).contiguous(),
        "indices": torch.cat([r.indices for r in rows]).to(torch.int32).contiguous(),
        "leftover": torch.cat([r.leftover for r in rows]).to(LEFTOVER_DTYPE).contiguous(),
        "example_index": torch.tensor(example_indices, dtype=torch.int64),
        "offsets": torch.tensor([0, *counts], dtype=torch.int64).cumsum(0),
    }


def unpack_rows(
    per_example: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], target_mask: torch.Tensor
) -> TopKTeacher:
    """Scatter each example's stored target rows to its target positions in a (B, T, k) teacher.

    Args:
        per_example: for each of the B examples, (logprobs (n_b, k), indices (n_b, k),
            leftover (n_b,)) as stored, with n_b = target_mask[b].sum().
        target_mask: (B, T) bool.

    Returns:
        TopKTeacher with logprobs (B, T, k) float32, indices (B, T, k) int64, leftover (B, T)
        float32. Non-target rows hold logprobs 0, indices 0, leftover 1: not a distribution, but
        every loss masks those rows out before reading them.
    """
    B, T = target_mask.shape
    k = per_example[0][0].shape[-1] if per_example else 1
    logprobs = torch.zeros((B, T, k), dtype=torch.float32)
    indices = torch.zeros((B, T, k), dtype=torch.int64)
    leftover = torch.ones((B, T), dtype=torch.float32)
    for b, (lp, idx, left) in enumerate(per_example):
        row_mask = target_mask[b].bool()
        logprobs[b, row_mask] = lp.float()
        indices[b, row_mask] = idx.long()
        leftover[b, row_mask] = left.float()
    return TopKTeacher(logprobs, indices, leftover)


# --------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------


def teacher_logits(teacher, batch: dict, precision: str) -> torch.Tensor:
    """(B, T, V) teacher logits, under bf16 autocast when `precision` is bf16."""
    device = next(teacher.model.parameters()).device
    on_device = {k: v.to(device) for k, v in batch.items()}
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    )
    with autocast:
        return teacher.distribution(on_device)


def targets_topk(
    logits: torch.Tensor, target_mask: torch.Tensor, k: int, temperature: float
) -> list[TopKTeacher]:
    """Per example, the top-k teacher of its target rows only: logprobs (n_b, k) etc."""
    out = []
    for b in range(logits.shape[0]):
        rows = logits[b][target_mask[b].to(logits.device)]  # (n_b, V), selected before upcasting
        top = topk_teacher(rows.unsqueeze(0), k, temperature)
        out.append(TopKTeacher(top.logprobs[0].cpu(), top.indices[0].cpu(), top.leftover[0].cpu()))
    return out


def batches(examples: list[Encoded], size: int) -> Iterator[list[Encoded]]:
    for start in range(0, len(examples), size):
        yield examples[start : start + size]


def teacher_info(teacher_dir: Path) -> dict:
    source = teacher_dir / "source.json"
    return {
        "dir": str(teacher_dir),
        "source": json.loads(source.read_text()) if source.is_file() else None,
    }


def build_key(teacher_dir: Path, data_sha: str, fingerprint: str, settings: dict) -> dict:
    """What the shards depend on: progress made under another key is discarded."""
    config = (teacher_dir / "config.json").read_text()
    return {
        "format": FORMAT,
        "teacher": teacher_info(teacher_dir),
        "teacher_config": json.loads(config),
        "tokenizer": fingerprint,
        "data_sha256": data_sha,
        **settings,
    }


def load_progress(out_dir: Path, key: dict) -> dict:
    """Finished shards {name: entry} of an earlier build with the same key, else {}."""
    path = out_dir / PROGRESS
    if not path.is_file():
        return {}
    try:
        progress = json.loads(path.read_text())
    except json.JSONDecodeError:
        log.warning("%s: unreadable; recomputing every shard", path)
        return {}
    if progress.get("key") != key:
        log.warning("%s: made with other settings/teacher/data; recomputing every shard", path)
        for old in out_dir.glob("shard-*.safetensors"):
            old.unlink()
        return {}
    return progress.get("shards", {})


def remove_stale_temporaries(out_dir: Path) -> None:
    """atomic_path's temporaries left by a SIGKILL mid-write (never renamed, never valid)."""
    for name in (PROGRESS, MANIFEST):
        for tmp in out_dir.glob(f".{name}.*.tmp"):
            tmp.unlink()
    for tmp in out_dir.glob(".shard-*.safetensors.*.tmp"):
        tmp.unlink()


def write_shard(path: Path, tensors: dict[str, torch.Tensor], metadata: dict) -> str:
    """Write a shard atomically; return the sha256 of its bytes."""
    blob = safetensors.torch.save(tensors, metadata=metadata)
    with atomic_path(path) as tmp:
        tmp.write_bytes(blob)
    return hashlib.sha256(blob).hexdigest()


def topk_error(
    teacher,
    student_dir: Path,
    heldout_jsonl: Path,
    tokenizer,
    *,
    k: int,
    temperature: float,
    max_len: int,
    batch_size: int,
    precision: str,
    error_examples: int,
    pad_id: int,
) -> dict:
    """How much the top-k truncation changes KL(teacher || student) on held-out examples.

    Per example: token-mean forward KL against the full teacher (KL_full) and against the
    top-k teacher as stored (fp16 log-probs; KL_topk); the relative error |KL_topk - KL_full| /
    KL_full, then the mean over examples. KL_topk <= KL_full (merging tokens into one bucket
    cannot raise a divergence), so the error lies in [0, 1].
    """
    from transformers import AutoTokenizer

    from distill.models.student import check_same_tokenizer
    from distill.teachers import LocalTeacher

    check_same_tokenizer(
        tokenizer, AutoTokenizer.from_pretrained(student_dir), teacher.name, str(student_dir)
    )
    # A LocalTeacher is just a frozen model with `distribution(batch) -> logits`.
    student = LocalTeacher(str(student_dir), next(teacher.model.parameters()).device)
    examples = encode_examples(tokenizer, read_examples(heldout_jsonl), max_len)[:error_examples]
    if not examples:
        raise InputError(f"{heldout_jsonl}: no example has a response token within max_len.")
    full_kls, topk_kls = [], []
    for chunk in batches(examples, batch_size):
        batch = collate(chunk, pad_id)
        t_logits = teacher_logits(teacher, batch, precision).float()
        s_logits = teacher_logits(student, batch, precision).float()
        if s_logits.shape != t_logits.shape:
            raise InputError(
                f"student {student_dir} has {s_logits.shape[-1]} logits per token, the teacher "
                f"{t_logits.shape[-1]}. Fix: use a student built from the teacher."
            )
        stored = topk_teacher(t_logits, k, temperature)
        stored = TopKTeacher(stored.logprobs.to(LOGPROB_DTYPE), stored.indices, stored.leftover)
        mask = batch["target_mask"].to(t_logits.device)
        for b in range(len(chunk)):
            one = torch.zeros_like(mask)
            one[b] = mask[b]
            full_kls.append(float(forward_kl(s_logits, t_logits, one, temperature=temperature)))
            topk_kls.append(float(forward_kl(s_logits, stored, one, temperature=temperature)))
    rel = [abs(t - f) / f for t, f in zip(topk_kls, full_kls, strict=True) if f > 0]
    return {
        "student": str(student_dir),
        "heldout": str(heldout_jsonl),
        "heldout_sha256": sha256_file(heldout_jsonl),
        "examples": len(examples),
        "kl_full_mean": sum(full_kls) / len(full_kls),
        "kl_topk_mean": sum(topk_kls) / len(topk_kls),
        "mean_relative_error": sum(rel) / len(rel) if rel else 0.0,
    }


def build_cache(
    teacher_dir,
    data_jsonl,
    out_dir,
    *,
    k: int,
    temperature: float,
    max_len: int,
    batch_size: int,
    shard_examples: int,
    precision: str,
    student_dir=None,
    heldout_jsonl=None,
    error_examples: int = 16,
) -> dict:
    """Run the teacher over `data_jsonl` and write the cache to `out_dir`; return the manifest.

    Resumes shard by shard (see the module docstring). `precision` is "bf16" (autocast) or "fp32".
    """
    from transformers import AutoTokenizer

    from distill.models.student import tokenizer_fingerprint
    from distill.teachers import LocalTeacher

    teacher_dir, data_jsonl, out_dir = Path(teacher_dir), Path(data_jsonl), Path(out_dir)
    if (student_dir is None) != (heldout_jsonl is None):
        raise InputError(
            "teacher cache: the top-k error needs both --student and --heldout. Fix: give both, "
            "or neither to skip the estimate."
        )
    if precision not in ("bf16", "fp32"):
        raise InputError(f"teacher cache: precision `{precision}`; expected bf16 or fp32.")
    if k < 1 or batch_size < 1 or shard_examples < 1 or max_len < 2 or not temperature > 0:
        raise InputError(
            f"teacher cache: need k >= 1, batch_size >= 1, shard_examples >= 1, max_len >= 2 and "
            f"temperature > 0; got k={k}, batch_size={batch_size}, shard_examples="
            f"{shard_examples}, max_len={max_len}, temperature={temperature}."
        )
    if not (teacher_dir / "config.json").is_file():
        raise InputError(f"--teacher {teacher_dir}: not a model directory (no config.json).")

    # --- setup: tokenize exactly as training does, load the teacher --------------------------
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    fingerprint = tokenizer_fingerprint(tokenizer)
    examples = encode_examples(tokenizer, read_examples(data_jsonl), max_len)
    if not examples:
        raise InputError(f"{data_jsonl}: no example has a response token within max_len.")
    data_sha = sha256_file(data_jsonl)
    settings = {"k": k, "temperature": temperature, "max_len": max_len, "precision": precision}
    key = build_key(teacher_dir, data_sha, fingerprint, settings)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    teacher = LocalTeacher(str(teacher_dir), device)
    vocab = int(teacher.model.config.vocab_size)
    if k > vocab:
        raise InputError(f"teacher cache: k={k} > the teacher's vocabulary size {vocab}.")
    n_params = sum(p.numel() for p in teacher.model.parameters())

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)  # the manifest marks a COMPLETE cache
    remove_stale_temporaries(out_dir)
    done = load_progress(out_dir, key)
    kill_after = os.environ.get(KILL_ENV)
    # ONE metadata key: safetensors writes several in hash order, which differs between
    # processes, and a resumed build must be byte-identical to an uninterrupted one.
    about = {"format": FORMAT, "contract": CONTRACT, "k": k, "temperature": temperature}
    metadata = {"distill": json.dumps(about, sort_keys=True)}

    # --- shards: keep the verified ones, compute the rest ------------------------------------
    shards = []
    n_shards = (len(examples) + shard_examples - 1) // shard_examples
    for number in range(n_shards):
        name = shard_name(number)
        path = out_dir / name
        part = examples[number * shard_examples : (number + 1) * shard_examples]
        entry = done.get(name)
        if entry and path.is_file() and sha256_file(path) == entry["sha256"]:
            log.info("%s: kept (sha256 matches %s)", name, PROGRESS)
        else:
            rows = []
            for chunk in batches(part, batch_size):
                batch = collate(chunk, pad_id)
                logits = teacher_logits(teacher, batch, precision)
                rows += targets_topk(logits, batch["target_mask"], k, temperature)
            tensors = pack_shard([e.index for e in part], rows)
            entry = {
                "file": name,
                "sha256": write_shard(path, tensors, metadata),
                "examples": len(part),
                "tokens": int(tensors["offsets"][-1]),
                "index_range": [part[0].index, part[-1].index],
            }
            done[name] = entry
            write_json(out_dir / PROGRESS, {"key": key, "shards": done})
            log.info(
                "%s: computed (%d examples, %d target tokens)", name, len(part), entry["tokens"]
            )
            if kill_after is not None and number == int(kill_after):
                log.warning("%s=%s: killing myself (fault injection)", KILL_ENV, kill_after)
                os.kill(os.getpid(), signal.SIGKILL)
        shards.append(entry)

    # --- the top-k error estimate, then the manifest (last) ----------------------------------
    error = None
    if student_dir is not None:
        error = topk_error(
            teacher, Path(student_dir), Path(heldout_jsonl), tokenizer, k=k,
            temperature=temperature, max_len=max_len, batch_size=batch_size,
            precision=precision, error_examples=error_examples, pad_id=pad_id,
        )  # fmt: skip
        log.info(
            "top-k error (k=%d): %.4f (KL full %.4f, top-k %.4f, %d held-out examples)",
            k, error["mean_relative_error"], error["kl_full_mean"], error["kl_topk_mean"],
            error["examples"],
        )  # fmt: skip
    tokens = sum(s["tokens"] for s in shards)
    cache_bytes = sum((out_dir / s["file"]).stat().st_size for s in shards)
    manifest = {
        "format": FORMAT,
        "contract": CONTRACT,
        "teacher": {**teacher_info(teacher_dir), "parameters": n_params, "vocab_size": vocab},
        "tokenizer": fingerprint,
        **settings,
        "dtype": {"logprobs": "float16", "indices": "int32", "leftover": "float32"},
        "data": {"file": str(data_jsonl), "sha256": data_sha},
        "shard_examples": shard_examples,
        "shards": shards,
        "examples": len(examples),
        "target_tokens": tokens,
        "bytes": cache_bytes,
        "bytes_per_token": cache_bytes / tokens,
        "full_fp16_logits_bytes_per_token": 2 * vocab,
        "topk_error": error,
    }
    write_json(out_dir / MANIFEST, manifest)
    log.info(
        "cache %s: %d examples, %d target tokens, %.1f bytes/token (full fp16 logits: %d)",
        out_dir, len(examples), tokens, manifest["bytes_per_token"], 2 * vocab,
    )  # fmt: skip
    return manifest


# --------------------------------------------------------------------------------------------
# Read
# --------------------------------------------------------------------------------------------


class TeacherCache:
    """Read a teacher cache: `batch(index, target_mask) -> TopKTeacher`.

    `expect_*` are what the reader was configured with; a manifest that disagrees is refused
    (the cached rows would belong to other tokens). `expect_tokenizer` is a fingerprint string
    (distill.models.student.tokenizer_fingerprint) or a tokenizer; `expect_data` a jsonl path
    whose sha256 must be the cached data's. Shards are checked against their sha256 the first
    time they are read; at most `max_loaded_shards` stay in memory (least recently used out).
    """

    def __init__(
        self,
        cache_dir,
        *,
        expect_tokenizer=None,
        expect_max_len: int | None = None,
        expect_temperature: float | None = None,
        expect_data=None,
        max_loaded_shards: int = 4,
    ):
        self.dir = Path(cache_dir)
        path = self.dir / MANIFEST
        if not path.is_file():
            raise InputError(
                f"{path}: missing, so the teacher cache is absent or incomplete (the build writes "
                "it last). Fix: rerun the cache rule; it keeps finished shards."
            )
        self.manifest = json.loads(path.read_text())
        if self.manifest.get("format") != FORMAT:
            self._refuse("format", self.manifest.get("format"), FORMAT)
        if expect_tokenizer is not None:
            if not isinstance(expect_tokenizer, str):
                from distill.models.student import tokenizer_fingerprint

                expect_tokenizer = tokenizer_fingerprint(expect_tokenizer)
            if self.manifest["tokenizer"] != expect_tokenizer:
                self._refuse("tokenizer", self.manifest["tokenizer"][:12], expect_tokenizer[:12])
        if expect_max_len is not None and self.manifest["max_len"] != expect_max_len:
            self._refuse("max_len", self.manifest["max_len"], expect_max_len)
        if expect_temperature is not None and self.manifest["temperature"] != expect_temperature:
            self._refuse("temperature", self.manifest["temperature"], expect_temperature)
        if expect_data is not None and sha256_file(expect_data) != self.manifest["data"]["sha256"]:
            self._refuse("data.sha256", self.manifest["data"]["file"], str(expect_data))
        self.k = int(self.manifest["k"])
        self.temperature = float(self.manifest["temperature"])
        self.shards = self.manifest["shards"]
        self._starts = [s["index_range"][0] for s in self.shards]
        self._verified: set[str] = set()
        self._loaded: OrderedDict[str, tuple[dict, dict]] = OrderedDict()
        self.max_loaded_shards = max(1, max_loaded_shards)

    def _refuse(self, key: str, cached, expected) -> None:
        raise InputError(
            f"{self.dir / MANIFEST}: `{key}` is {cached!r} in the cache but this run expects "
            f"{expected!r}. Fix: rebuild the cache with this run's settings (delete {self.dir} "
            "and rerun the cache rule)."
        )

    def _check_file(self, name: str) -> bytes:
        """The bytes of shard `name`, checked against the manifest's sha256."""
        path = self.dir / name
        fix = "Fix: delete it and rerun; the cache rule recomputes missing shards."
        if not path.is_file():
            raise InputError(f"{path}: missing from the teacher cache. {fix}")
        blob = path.read_bytes()
        expected = next(s["sha256"] for s in self.shards if s["file"] == name)
        if hashlib.sha256(blob).hexdigest() != expected:
            raise InputError(f"{path}: sha256 mismatch (truncated or altered). {fix}")
        self._verified.add(name)
        return blob

    def verify_all(self) -> None:
        """Check every shard's sha256 now (before training relies on them)."""
        for shard in self.shards:
            self._check_file(shard["file"])

    def _shard(self, name: str) -> tuple[dict, dict]:
        """(tensors, {example index: position}) of one shard, through the LRU."""
        if name in self._loaded:
            self._loaded.move_to_end(name)
            return self._loaded[name]
        if name in self._verified:
            tensors = safetensors.torch.load_file(self.dir / name)
        else:
            tensors = safetensors.torch.load(self._check_file(name))
        positions = {int(i): p for p, i in enumerate(tensors["example_index"].tolist())}
        self._loaded[name] = (tensors, positions)
        while len(self._loaded) > self.max_loaded_shards:
            self._loaded.popitem(last=False)
        return self._loaded[name]

    def rows(self, example_index: int):
        """(logprobs (n, k) fp16, indices (n, k) int32, leftover (n,)) of one example's targets."""
        at = bisect.bisect_right(self._starts, example_index) - 1
        shard = self.shards[at] if at >= 0 else None
        if shard is None or example_index > shard["index_range"][1]:
            raise self._not_cached(example_index)
        tensors, positions = self._shard(shard["file"])
        if example_index not in positions:
            raise self._not_cached(example_index)
        p = positions[example_index]
        lo, hi = int(tensors["offsets"][p]), int(tensors["offsets"][p + 1])
        return tensors["logprobs"][lo:hi], tensors["indices"][lo:hi], tensors["leftover"][lo:hi]

    def _not_cached(self, example_index: int) -> InputError:
        return InputError(
            f"{self.dir}: example {example_index} (line {example_index + 1} of "
            f"{self.manifest['data']['file']}) is not in the teacher cache: it was built from "
            "other data or with another tokenizer/max_len. Fix: rebuild the cache from this "
            "training set."
        )

    def batch(self, index: torch.Tensor, target_mask: torch.Tensor) -> TopKTeacher:
        """The cached teacher for a batch: index (B,) Encoded.index, target_mask (B, T) bool.

        Returns a TopKTeacher with (B, T, k) tensors on the CPU (see `unpack_rows` for the
        non-target rows).
        """
        target_mask = target_mask.bool().cpu()
        per_example = []
        for b, example_index in enumerate(index.tolist()):
            rows = self.rows(int(example_index))
            wanted = int(target_mask[b].sum())
            if rows[0].shape[0] != wanted:
                raise InputError(
                    f"{self.dir}: example {example_index} has {rows[0].shape[0]} target tokens in "
                    f"the cache but {wanted} in this batch: the tokenizer, chat template or "
                    "max_len changed since the cache was built. Fix: rebuild the cache with the "
                    "training run's tokenizer and max_len."
                )
            per_example.append(rows)
        return unpack_rows(per_example, target_mask)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="teacher model directory")
    parser.add_argument("--data", required=True, help="training set (jsonl)")
    parser.add_argument("--k", type=int, required=True, help="teacher tokens kept per row")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max-len", type=int, required=True, help="as in training")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shard-examples", type=int, default=64)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--student", help="student for the top-k error estimate")
    parser.add_argument("--heldout", help="held-out jsonl for the top-k error estimate")
    parser.add_argument("--error-examples", type=int, default=16)
    parser.add_argument("--out", required=True, help="cache directory")
    args = parser.parse_args()
    setup_logging()
    build_cache(
        args.teacher,
        args.data,
        args.out,
        k=args.k,
        temperature=args.temperature,
        max_len=args.max_len,
        batch_size=args.batch_size,
        shard_examples=args.shard_examples,
        precision=args.precision,
        student_dir=args.student,
        heldout_jsonl=args.heldout,
        error_examples=args.error_examples,
    )


if __name__ == "__main__":
    main_guard(main)
