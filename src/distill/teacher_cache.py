"""The teacher cache: the teacher's next-token distribution at every target token, on disk.

The teacher runs once over a training set; offline KD objectives then read its distribution
from here instead of running it at every step. Two kinds (`--kind`, config `kd.cache.kind`):

  topk     the k most likely tokens' log-probs and the mass left over (a biased summary: the
           loss sees k + 1 buckets; see distill.losses.TopKTeacher);
  sampled  N tokens drawn from the teacher with replacement (Random-Sampling KD, arXiv
           2503.16870), stored as distinct ids + counts, with the teacher's entropy: an unbiased
           estimate of the forward KL and its gradient (distill.losses.SampledTeacher).

    python -m distill.teacher_cache --teacher results/models/teacher \
        --data results/data/instructions/train.jsonl --kind sampled --samples 24 --seed 0 \
        --k 32 --temperature 1.0 --max-len 160 --batch-size 8 --shard-examples 64 \
        --precision bf16 --student results/models/student_init \
        --heldout results/data/instructions/valid.jsonl --error-examples 16 \
        --out results/cache/teacher

Layout of `--out`:
  shard-00000.safetensors ...  each covers a contiguous range of encoded examples (in data order)
                               and holds, for the TARGET rows of those examples only (rows where
                               `target_mask` is true, see distill.batching; no loss reads others):
                                 example_index (n_examples,)   int64  Encoded.index (jsonl line)
                                 offsets       (n_examples+1,) int64  example i's rows are
                                                                      offsets[i]:offsets[i+1]
                               kind topk, per row:
                                 logprobs    (N_rows, k) float16  top-k log-probs, descending
                                 indices     (N_rows, k) int32    their vocabulary ids
                                 leftover    (N_rows,)   float32  mass outside the top-k
                               kind sampled, ragged (a row with d distinct ids costs 5·d + 8 B):
                                 ids         (M,)        int32    distinct drawn ids, ascending
                                 counts      (M,)        uint8    draws of each (N <= 255)
                                 row_offsets (N_rows+1,) int32    row r's ids are
                                                                  row_offsets[r]:row_offsets[r+1]
                                 entropy     (N_rows,)   float32  H(p_T) in nats
  progress.json                finished shards + their sha256 (updated atomically after each shard)
  manifest.json                written LAST: its presence means the cache is complete. Records
                               kind, k or samples/seed, bytes_per_token, the histogram of distinct
                               ids per row (sampled), `quality` (see `cache_quality`) and the
                               command that built it.

ROW -> TOKEN CONTRACT: row j holds the teacher's prediction of token j+1; only target rows are
stored, in order (the `target_mask` of distill.batching, same tokenizer, same max_len).

Why float16 for the top-k log-probs (not bfloat16): top-k log-probs lie in about [-30, 0], far
inside fp16's range, where fp16 has 3 more mantissa bits than bf16 (8x smaller error for the
same 2 bytes). The leftover is a probability that can be tiny (1e-9), below fp16's normal range,
and is one number per token, so it stays float32; so does the entropy.

Sampling: the temperature is applied before sampling; each example draws from its own CPU
generator seeded by (--seed, its jsonl line), so the same seed and settings give the same cache
on any device and a resumed build is byte-identical to an uninterrupted one. (Another batch size
pads differently, which can move the teacher's logits in their last bits and so a few draws.)

Resume: a rerun after a kill keeps every shard whose file still matches the sha256 recorded in
progress.json (for the same teacher/data/settings) and computes only the rest. For tests,
DISTILL_KILL_AFTER_SHARD=N makes the build SIGKILL itself right after shard N (0-based) is
recorded. Snakemake: declare `manifest.json` (not the directory) as the rule's output, so that a
failed job's shards survive for the rerun. A reader that finds a damaged or missing shard
removes manifest.json (the cache is no longer complete), so rerunning the same snakemake command
reruns the cache rule, which recomputes only that shard.

Reading: `TeacherCache(out).batch(index, target_mask)` gives a `distill.losses.TopKTeacher` or
a `distill.losses.SampledTeacher`. Manifests written before `kind` existed read as top-k.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import logging
import os
import shlex
import signal
import sys
from collections import Counter, OrderedDict
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass
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
from distill.losses import (
    SampledRows,
    SampledTeacher,
    TopKTeacher,
    sample_rows,
    sampled_teacher,
    topk_teacher,
)

FORMAT = "distill.teacher_cache/1"
CONTRACT = (
    "row j holds the teacher's prediction of token j+1; only target rows are stored, in order"
)
KINDS = ("topk", "sampled")
LOGPROB_DTYPE = torch.float16  # see the module docstring for why not bfloat16
LEFTOVER_DTYPE = torch.float32
MAX_SAMPLES = 255  # counts are stored as uint8
MANIFEST = "manifest.json"
PROGRESS = "progress.json"
KILL_ENV = "DISTILL_KILL_AFTER_SHARD"

log = logging.getLogger("distill.teacher_cache")


@dataclass(frozen=True)
class CacheSettings:
    """What a cache is built with (all of it goes into the resume key and the manifest)."""

    kind: str
    k: int
    samples: int
    seed: int
    temperature: float
    max_len: int
    precision: str

    def check(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"teacher cache: --kind `{self.kind}`; expected topk or sampled.")
        if self.precision not in ("bf16", "fp32"):
            raise InputError(f"teacher cache: precision `{self.precision}`; expected bf16 or fp32.")
        if self.k < 1 or self.max_len < 2 or not self.temperature > 0:
            raise InputError(
                f"teacher cache: need k >= 1, max_len >= 2 and temperature > 0; got k={self.k}, "
                f"max_len={self.max_len}, temperature={self.temperature}."
            )
        if not 1 <= self.samples <= MAX_SAMPLES:
            raise InputError(
                f"teacher cache: --samples {self.samples}; must be in 1..{MAX_SAMPLES} (counts "
                "are stored as uint8). Fix: set kd.cache.samples within that range."
            )

    def key(self) -> dict:
        """The settings that decide the shards' bytes (top-k ignores samples/seed and v.v.)."""
        drop = ("samples", "seed") if self.kind == "topk" else ("k",)
        return {k: v for k, v in asdict(self).items() if k not in drop}


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


def pack_sampled_shard(example_indices: list[int], rows: list[SampledRows]) -> dict:
    """The tensors of one sampled shard from each example's `SampledRows` (see the layout)."""
    counts = [r.entropy.shape[0] for r in rows]
    row_offsets = [torch.zeros(1, dtype=torch.int64)]
    base = 0
    for r in rows:
        row_offsets.append(r.offsets[1:] + base)
        base += int(r.offsets[-1])
    return {
        "ids": torch.cat([r.ids for r in rows]).to(torch.int32).contiguous(),
        "counts": torch.cat([r.counts for r in rows]).to(torch.uint8).contiguous(),
        "row_offsets": torch.cat(row_offsets).to(torch.int32).contiguous(),
        "entropy": torch.cat([r.entropy for r in rows]).to(torch.float32).contiguous(),
        "example_index": torch.tensor(example_indices, dtype=torch.int64),
        "offsets": torch.tensor([0, *counts], dtype=torch.int64).cumsum(0),
    }


def unpack_sampled_example(tensors: dict, lo: int, hi: int, samples: int) -> SampledRows:
    """Rows lo:hi of a sampled shard (one example's target rows) as `SampledRows`."""
    start, stop = int(tensors["row_offsets"][lo]), int(tensors["row_offsets"][hi])
    return SampledRows(
        ids=tensors["ids"][start:stop].long(),
        counts=tensors["counts"][start:stop].long(),
        offsets=tensors["row_offsets"][lo : hi + 1].long() - start,
        entropy=tensors["entropy"][lo:hi],
        samples=samples,
    )


def distinct_histogram(tensors: dict) -> Counter:
    """{distinct ids in a row: number of rows} of a sampled shard."""
    per_row = (tensors["row_offsets"][1:] - tensors["row_offsets"][:-1]).tolist()
    return Counter(per_row)


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


def example_generator(seed: int, example_index: int) -> torch.Generator:
    """The CPU generator of one example: its draws depend on (seed, jsonl line) only."""
    return torch.Generator().manual_seed((seed << 32) + example_index)


def targets_sampled(
    logits: torch.Tensor, batch: dict, settings: CacheSettings
) -> list[SampledRows]:
    """Per example, `settings.samples` draws at each of its target rows (see `sample_rows`)."""
    mask = batch["target_mask"].to(logits.device)
    return [
        sample_rows(
            logits[b][mask[b]],
            settings.samples,
            settings.temperature,
            example_generator(settings.seed, int(batch["index"][b])),
        )  # fmt: skip
        for b in range(logits.shape[0])
    ]


def compute_shard(teacher, part: list[Encoded], settings: CacheSettings, pad_id, batch_size):
    """The tensors of one shard: the teacher over the examples `part`, packed for `kind`."""
    rows = []
    for chunk in batches(part, batch_size):
        batch = collate(chunk, pad_id)
        logits = teacher_logits(teacher, batch, settings.precision)
        if settings.kind == "topk":
            rows += targets_topk(logits, batch["target_mask"], settings.k, settings.temperature)
        else:
            rows += targets_sampled(logits, batch, settings)
    indices = [e.index for e in part]
    return (
        pack_shard(indices, rows) if settings.kind == "topk" else pack_sampled_shard(indices, rows)
    )


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


# --------------------------------------------------------------------------------------------
# Quality: the cache's forward KL and gradient against the full teacher, on held-out examples
# --------------------------------------------------------------------------------------------


def topk_k_for_bytes(bytes_per_token: float) -> int:
    """The k whose top-k rows cost about `bytes_per_token`: 6 B per token (fp16 + int32) + 4."""
    return max(1, int((bytes_per_token - 4) // 6))


def _estimators(settings: CacheSettings, bytes_per_token: float | None) -> dict:
    """{name: (B, T, V) logits + batch -> teacher} of the cache and its same-bytes comparison."""

    def topk(k):
        def make(logits, batch):
            top = topk_teacher(logits, k, settings.temperature)
            return TopKTeacher(top.logprobs.to(LOGPROB_DTYPE).float(), top.indices, top.leftover)

        return make

    def sampled(logits, batch):
        rows = targets_sampled(logits, batch, settings)
        return sampled_teacher(rows, batch["target_mask"]).to(logits.device)

    if settings.kind == "topk":
        return {"cache": topk(settings.k)}
    return {"cache": sampled, "topk_same_bytes": topk(topk_k_for_bytes(bytes_per_token))}


def cache_quality(
    teacher, student_dir: Path, heldout_jsonl: Path, tokenizer, settings: CacheSettings, *,
    batch_size: int, error_examples: int, pad_id: int, bytes_per_token: float,
) -> dict:  # fmt: skip
    """How well the cache stands in for the full teacher on held-out examples.

    kl_relative_error: |mean KL from the cache - mean full KL| / mean full KL, the means over
    examples of each example's token-mean forward KL(teacher || student). grad_cosine: cosine
    between the student's parameter gradients of the forward KL over all held-out targets from
    the cache and from the full teacher (same batches). For a sampled cache, `topk_same_bytes`
    holds the same two numbers for a top-k cache of about the same bytes per token.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.losses import forward_kl
    from distill.models.student import check_same_tokenizer

    check_same_tokenizer(
        tokenizer, AutoTokenizer.from_pretrained(student_dir), teacher.name, str(student_dir)
    )
    device = next(teacher.model.parameters()).device
    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32).to(device)
    params = [p for p in student.parameters() if p.requires_grad]
    examples = encode_examples(tokenizer, read_examples(heldout_jsonl), settings.max_len)
    examples = examples[:error_examples]
    if not examples:
        raise InputError(f"{heldout_jsonl}: no example has a response token within max_len.")
    estimators = {"full": lambda logits, batch: logits, **_estimators(settings, bytes_per_token)}
    kls = {name: [] for name in estimators}
    grads = {name: torch.zeros(sum(p.numel() for p in params), device=device) for name in kls}
    total_targets = sum(int(e.target_mask.sum()) for e in examples)
    for chunk in batches(examples, batch_size):
        batch = collate(chunk, pad_id)
        t_logits = teacher_logits(teacher, batch, settings.precision).float()
        on_device = {k: v.to(device) for k, v in batch.items()}
        s_logits = student(
            input_ids=on_device["input_ids"], attention_mask=on_device["attention_mask"]
        ).logits.float()
        if s_logits.shape != t_logits.shape:
            raise InputError(
                f"student {student_dir} has {s_logits.shape[-1]} logits per token, the teacher "
                f"{t_logits.shape[-1]}. Fix: use a student built from the teacher."
            )
        mask = on_device["target_mask"]
        for name, make in estimators.items():
            target = make(t_logits, on_device)
            kls[name] += _per_example_kl(s_logits.detach(), target, mask, settings.temperature)
            loss = forward_kl(
                s_logits, target, mask, temperature=settings.temperature, num_tokens=total_targets
            )
            step = torch.autograd.grad(loss, params, retain_graph=True)
            grads[name] += torch.cat([g.reshape(-1) for g in step])
    return _quality_summary(kls, grads, settings, bytes_per_token, student_dir, heldout_jsonl)


def _per_example_kl(s_logits, target, mask, temperature) -> list[float]:
    from distill.losses import forward_kl

    out = []
    for b in range(mask.shape[0]):
        one = torch.zeros_like(mask)
        one[b] = mask[b]
        out.append(float(forward_kl(s_logits, target, one, temperature=temperature)))
    return out


def _quality_summary(kls, grads, settings, bytes_per_token, student_dir, heldout_jsonl) -> dict:
    full = sum(kls["full"]) / len(kls["full"])

    def numbers(name: str) -> dict:
        mean = sum(kls[name]) / len(kls[name])
        # float64: a float32 cosine of two 10^7-long vectors can come out above 1
        cosine = torch.nn.functional.cosine_similarity(
            grads[name].double(), grads["full"].double(), dim=0
        )
        return {
            "kl_mean": mean,
            "kl_relative_error": abs(mean - full) / full,
            "grad_cosine": float(cosine),
        }

    quality = {
        "student": str(student_dir),
        "heldout": str(heldout_jsonl),
        "heldout_sha256": sha256_file(heldout_jsonl),
        "examples": len(kls["full"]),
        "kl_full_mean": full,
        **numbers("cache"),
    }
    if "topk_same_bytes" in kls:
        k = topk_k_for_bytes(bytes_per_token)
        quality["topk_same_bytes"] = {
            "k": k, "bytes_per_token": 6 * k + 4, **numbers("topk_same_bytes")
        }  # fmt: skip
    return quality


# --------------------------------------------------------------------------------------------
# The build: setup -> shards (resumable) -> quality -> manifest
# --------------------------------------------------------------------------------------------


def build_cache(
    teacher_dir, data_jsonl, out_dir, *, k: int, temperature: float, max_len: int,
    batch_size: int, shard_examples: int, precision: str, kind: str, samples: int, seed: int,
    student_dir=None, heldout_jsonl=None, error_examples: int = 0, command: str | None = None,
) -> dict:  # fmt: skip
    """Run the teacher over `data_jsonl` and write the cache to `out_dir`; return the manifest.

    Resumes shard by shard (see the module docstring). `precision` is "bf16" (autocast) or
    "fp32"; `command` (the CLI line) goes into the manifest so that a reader can name it.
    """
    settings = CacheSettings(kind, k, samples, seed, temperature, max_len, precision)
    settings.check()
    teacher_dir, data_jsonl, out_dir = Path(teacher_dir), Path(data_jsonl), Path(out_dir)
    if (student_dir is None) != (heldout_jsonl is None):
        raise InputError(
            "teacher cache: the quality estimate needs both --student and --heldout. Fix: give "
            "both, or neither to skip it."
        )
    if batch_size < 1 or shard_examples < 1:
        raise InputError(
            f"teacher cache: need batch_size >= 1 and shard_examples >= 1; got {batch_size}, "
            f"{shard_examples}."
        )
    setup = _setup(teacher_dir, data_jsonl, settings)
    shards = _build_shards(setup, out_dir, settings, batch_size, shard_examples)
    tokens = sum(s["tokens"] for s in shards)
    cache_bytes = sum((out_dir / s["file"]).stat().st_size for s in shards)
    quality = None
    if student_dir is not None:
        quality = cache_quality(
            setup.teacher, Path(student_dir), Path(heldout_jsonl), setup.tokenizer, settings,
            batch_size=batch_size, error_examples=error_examples, pad_id=setup.pad_id,
            bytes_per_token=cache_bytes / tokens,
        )  # fmt: skip
        log.info("cache quality: %s", json.dumps(quality))
    manifest = {
        "format": FORMAT,
        "contract": CONTRACT,
        "teacher": setup.describe_teacher(teacher_dir),
        "tokenizer": setup.fingerprint,
        **settings.key(),
        "dtype": DTYPES[kind],
        "data": {"file": str(data_jsonl), "sha256": setup.data_sha},
        "shard_examples": shard_examples,
        "shards": shards,
        "examples": len(setup.examples),
        "target_tokens": tokens,
        "bytes": cache_bytes,
        "bytes_per_token": cache_bytes / tokens,
        "full_fp16_logits_bytes_per_token": 2 * setup.vocab,
        "distinct_ids_per_row": _histogram(out_dir, shards) if kind == "sampled" else None,
        "quality": quality,
        "command": command,
    }
    write_json(out_dir / MANIFEST, manifest)
    log.info(
        "cache %s (%s): %d examples, %d target tokens, %.1f bytes/token (full fp16 logits: %d)",
        out_dir, kind, len(setup.examples), tokens, manifest["bytes_per_token"], 2 * setup.vocab,
    )  # fmt: skip
    return manifest


DTYPES = {
    "topk": {"logprobs": "float16", "indices": "int32", "leftover": "float32"},
    "sampled": {"ids": "int32", "counts": "uint8", "row_offsets": "int32", "entropy": "float32"},
}


@dataclass
class _Setup:
    """Everything the shards depend on, loaded once."""

    tokenizer: object
    teacher: object
    examples: list
    pad_id: int
    fingerprint: str
    data_sha: str
    key: dict
    vocab: int

    def describe_teacher(self, teacher_dir: Path) -> dict:
        n_params = sum(p.numel() for p in self.teacher.model.parameters())
        return {**teacher_info(teacher_dir), "parameters": n_params, "vocab_size": self.vocab}


def _setup(teacher_dir: Path, data_jsonl: Path, settings: CacheSettings) -> _Setup:
    """Tokenize exactly as training does, load the teacher, compute the resume key."""
    from transformers import AutoTokenizer

    from distill.models.student import tokenizer_fingerprint
    from distill.teachers import LocalTeacher

    if not (teacher_dir / "config.json").is_file():
        raise InputError(f"--teacher {teacher_dir}: not a model directory (no config.json).")
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    examples = encode_examples(tokenizer, read_examples(data_jsonl), settings.max_len)
    if not examples:
        raise InputError(f"{data_jsonl}: no example has a response token within max_len.")
    fingerprint = tokenizer_fingerprint(tokenizer)
    data_sha = sha256_file(data_jsonl)
    key = build_key(teacher_dir, data_sha, fingerprint, settings.key())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    teacher = LocalTeacher(str(teacher_dir), device)
    vocab = int(teacher.model.config.vocab_size)
    if settings.kind == "topk" and settings.k > vocab:
        raise InputError(f"teacher cache: k={settings.k} > the teacher's vocabulary size {vocab}.")
    return _Setup(tokenizer, teacher, examples, pad_id, fingerprint, data_sha, key, vocab)


def _build_shards(setup: _Setup, out_dir: Path, settings, batch_size, shard_examples) -> list:
    """Keep the shards whose sha256 matches progress.json, compute the rest; their entries."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)  # the manifest marks a COMPLETE cache
    remove_stale_temporaries(out_dir)
    done = load_progress(out_dir, setup.key)
    kill_after = os.environ.get(KILL_ENV)
    # ONE metadata key: safetensors writes several in hash order, which differs between
    # processes, and a resumed build must be byte-identical to an uninterrupted one.
    about = {"format": FORMAT, "contract": CONTRACT, **settings.key()}
    metadata = {"distill": json.dumps(about, sort_keys=True)}
    shards = []
    for number in range((len(setup.examples) + shard_examples - 1) // shard_examples):
        name, path = shard_name(number), out_dir / shard_name(number)
        part = setup.examples[number * shard_examples : (number + 1) * shard_examples]
        entry = done.get(name)
        if entry and path.is_file() and sha256_file(path) == entry["sha256"]:
            log.info("%s: kept (sha256 matches %s)", name, PROGRESS)
        else:
            tensors = compute_shard(setup.teacher, part, settings, setup.pad_id, batch_size)
            entry = {
                "file": name,
                "sha256": write_shard(path, tensors, metadata),
                "examples": len(part),
                "tokens": int(tensors["offsets"][-1]),
                "index_range": [part[0].index, part[-1].index],
            }
            done[name] = entry
            write_json(out_dir / PROGRESS, {"key": setup.key, "shards": done})
            log.info(
                "%s: computed (%d examples, %d target tokens)", name, len(part), entry["tokens"]
            )
            if kill_after is not None and number == int(kill_after):
                log.warning("%s=%s: killing myself (fault injection)", KILL_ENV, kill_after)
                os.kill(os.getpid(), signal.SIGKILL)
        shards.append(entry)
    return shards


def _histogram(out_dir: Path, shards: list) -> dict:
    """{"histogram": {distinct ids: rows}, "mean": ..., "max": ...} over every sampled shard."""
    total = Counter()
    for shard in shards:
        total.update(distinct_histogram(safetensors.torch.load_file(out_dir / shard["file"])))
    rows = sum(total.values())
    return {
        "histogram": {str(d): total[d] for d in sorted(total)},
        "mean": sum(d * n for d, n in total.items()) / max(rows, 1),
        "max": max(total, default=0),
    }


# --------------------------------------------------------------------------------------------
# Read
# --------------------------------------------------------------------------------------------


class TeacherCache:
    """Read a teacher cache: `batch(index, target_mask) -> TopKTeacher | SampledTeacher`.

    `expect_*` are what the reader was configured with; a manifest that disagrees is refused
    (the cached rows would belong to other tokens or another distribution). `expect_tokenizer`
    is a fingerprint string (distill.models.student.tokenizer_fingerprint) or a tokenizer;
    `expect_data` a jsonl path whose sha256 must be the cached data's; `expect_vocab` the
    student's vocabulary size. Shards are checked against their sha256 the first time they are
    read; at most `max_loaded_shards` stay in memory (least recently used out).
    """

    def __init__(
        self, cache_dir, *, expect_tokenizer=None, expect_max_len: int | None = None,
        expect_temperature: float | None = None, expect_data=None,
        expect_vocab: int | None = None, max_loaded_shards: int = 4,
    ):  # fmt: skip
        self.dir = Path(cache_dir)
        path = self.dir / MANIFEST
        if not path.is_file():
            raise InputError(
                f"{path}: missing, so the teacher cache is absent or incomplete (the build writes "
                "it last). Fix: rerun the cache rule (or your snakemake command); it keeps "
                "finished shards."
            )
        self.manifest = json.loads(path.read_text())
        if self.manifest.get("format") != FORMAT:
            self._refuse("format", self.manifest.get("format"), FORMAT)
        self.kind = self.manifest.get("kind", "topk")  # manifests from before `kind`: top-k
        self._check_expectations(
            expect_tokenizer, expect_max_len, expect_temperature, expect_data, expect_vocab
        )
        self.temperature = float(self.manifest["temperature"])
        self.samples = int(self.manifest.get("samples", 0))
        self.shards = self.manifest["shards"]
        self._starts = [s["index_range"][0] for s in self.shards]
        self._verified: set[str] = set()
        self._loaded: OrderedDict[str, tuple[dict, dict]] = OrderedDict()
        self.max_loaded_shards = max(1, max_loaded_shards)

    def _check_expectations(self, tokenizer, max_len, temperature, data, vocab) -> None:
        m = self.manifest
        if tokenizer is not None:
            if not isinstance(tokenizer, str):
                from distill.models.student import tokenizer_fingerprint

                tokenizer = tokenizer_fingerprint(tokenizer)
            if m["tokenizer"] != tokenizer:
                self._refuse("tokenizer", m["tokenizer"][:12], tokenizer[:12])
        if max_len is not None and m["max_len"] != max_len:
            self._refuse("max_len", m["max_len"], max_len)
        if temperature is not None and m["temperature"] != temperature:
            self._refuse("temperature", m["temperature"], temperature)
        if data is not None and sha256_file(data) != m["data"]["sha256"]:
            self._refuse("data.sha256", m["data"]["file"], str(data))
        cached_vocab = m.get("teacher", {}).get("vocab_size")
        if vocab is not None and cached_vocab is not None and cached_vocab != vocab:
            self._refuse("teacher.vocab_size", cached_vocab, vocab)

    def _refuse(self, key: str, cached, expected) -> None:
        raise InputError(
            f"{self.dir / MANIFEST}: `{key}` is {cached!r} in the cache but this run expects "
            f"{expected!r}. Fix: rebuild the cache with this run's settings (delete {self.dir} "
            "and rerun the cache rule)."
        )

    def _damaged(self, path: Path, problem: str) -> InputError:
        """Mark the cache incomplete (no manifest) and say how the cache rule recomputes it."""
        (self.dir / MANIFEST).unlink(missing_ok=True)
        kept = sum(1 for s in self.shards if s["file"] != path.name)
        command = self.manifest.get("command")
        direct = f"`{command}`" if command else "the cache's build command (see its log)"
        return InputError(
            f"{path}: {problem}. {self.dir / MANIFEST} has been removed, so the cache now counts "
            f"as incomplete. Fix: run the same snakemake command again: Snakemake reruns the "
            f"cache rule, which keeps the other {kept} shards (their sha256 matches "
            f"{self.dir / PROGRESS}) and recomputes this one, then the training. Outside "
            f"Snakemake: run {direct}."
        )

    def _check_file(self, name: str) -> bytes:
        """The bytes of shard `name`, checked against the manifest's sha256."""
        path = self.dir / name
        if not path.is_file():
            raise self._damaged(path, "missing from the teacher cache")
        blob = path.read_bytes()
        expected = next(s["sha256"] for s in self.shards if s["file"] == name)
        if hashlib.sha256(blob).hexdigest() != expected:
            raise self._damaged(path, "sha256 mismatch (truncated or altered)")
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
        """One example's target rows: (logprobs (n, k) fp16, indices (n, k) int32, leftover (n,))
        for a top-k cache, `SampledRows` with n rows for a sampled one."""
        at = bisect.bisect_right(self._starts, example_index) - 1
        shard = self.shards[at] if at >= 0 else None
        if shard is None or example_index > shard["index_range"][1]:
            raise self._not_cached(example_index)
        tensors, positions = self._shard(shard["file"])
        if example_index not in positions:
            raise self._not_cached(example_index)
        p = positions[example_index]
        lo, hi = int(tensors["offsets"][p]), int(tensors["offsets"][p + 1])
        if self.kind == "sampled":
            return unpack_sampled_example(tensors, lo, hi, self.samples)
        return tensors["logprobs"][lo:hi], tensors["indices"][lo:hi], tensors["leftover"][lo:hi]

    def _not_cached(self, example_index: int) -> InputError:
        return InputError(
            f"{self.dir}: example {example_index} (line {example_index + 1} of "
            f"{self.manifest['data']['file']}) is not in the teacher cache: it was built from "
            "other data or with another tokenizer/max_len. Fix: rebuild the cache from this "
            "training set."
        )

    def batch(self, index: torch.Tensor, target_mask: torch.Tensor) -> TopKTeacher | SampledTeacher:
        """The cached teacher for a batch: index (B,) Encoded.index, target_mask (B, T) bool.

        Returns (B, T, ·) tensors on the CPU (see `unpack_rows` / `sampled_teacher` for the
        non-target rows).
        """
        target_mask = target_mask.bool().cpu()
        per_example = []
        for b, example_index in enumerate(index.tolist()):
            rows = self.rows(int(example_index))
            stored = rows.entropy.shape[0] if self.kind == "sampled" else rows[0].shape[0]
            wanted = int(target_mask[b].sum())
            if stored != wanted:
                raise InputError(
                    f"{self.dir}: example {example_index} has {stored} target tokens in "
                    f"the cache but {wanted} in this batch: the tokenizer, chat template or "
                    "max_len changed since the cache was built. Fix: rebuild the cache with the "
                    "training run's tokenizer and max_len."
                )
            per_example.append(rows)
        if self.kind == "sampled":
            return sampled_teacher(per_example, target_mask)
        return unpack_rows(per_example, target_mask)


def main() -> None:
    # Options left out take the schema's `kd.cache` defaults (one home per default: the schema).
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="teacher model directory")
    parser.add_argument("--data", required=True, help="training set (jsonl)")
    parser.add_argument("--kind", choices=KINDS, help="kd.cache.kind")
    parser.add_argument("--k", type=int, help="kd.cache.k: top-k tokens kept per row")
    parser.add_argument("--samples", type=int, help="kd.cache.samples: draws per row (sampled)")
    parser.add_argument("--seed", type=int, help="kd.cache.seed: generator seed (sampled)")
    parser.add_argument("--temperature", type=float, required=True, help="as in training")
    parser.add_argument("--max-len", type=int, required=True, help="as in training")
    parser.add_argument("--batch-size", type=int, help="kd.cache.batch_size")
    parser.add_argument("--shard-examples", type=int, help="kd.cache.shard_examples")
    parser.add_argument("--precision", required=True, choices=["bf16", "fp32"])
    parser.add_argument("--student", help="student for the quality estimate")
    parser.add_argument("--heldout", help="held-out jsonl for the quality estimate")
    parser.add_argument("--error-examples", type=int, help="kd.cache.error_examples")
    parser.add_argument("--out", required=True, help="cache directory")
    args = parser.parse_args()
    setup_logging()
    from distill.config import schema_defaults

    cache = schema_defaults("kd.cache")
    given = {k: getattr(args, k) for k in cache if getattr(args, k, None) is not None}
    build_cache(
        args.teacher, args.data, args.out, **{**cache, **given},
        temperature=args.temperature, max_len=args.max_len, precision=args.precision,
        student_dir=args.student, heldout_jsonl=args.heldout,
        command=shlex.join(["python", "-m", "distill.teacher_cache", *sys.argv[1:]]),
    )  # fmt: skip


if __name__ == "__main__":
    main_guard(main)
