"""The teacher cache: round trip against the live teacher, resume after SIGKILL, damage found."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import safetensors.torch
import torch
from conftest import chat_row, run_module
from transformers import AutoTokenizer

from distill.batching import collate, encode_examples
from distill.io import InputError, read_examples
from distill.losses import SampledTeacher, forward_kl, topk_teacher
from distill.teacher_cache import (
    KILL_ENV,
    MANIFEST,
    TeacherCache,
    build_cache,
    pack_shard,
    targets_topk,
    unpack_rows,
)
from distill.teachers import LocalTeacher

SETTINGS = dict(k=8, temperature=1.0, max_len=64, batch_size=4, shard_examples=4)
TOPK = dict(kind="topk", samples=1, seed=0)
SAMPLED = dict(kind="sampled", samples=40, seed=3)
LONG_QUESTION = "Describe, in detail, " + "the history of bread and its many variants, " * 8


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """12 short chats (row 5 has no target within max_len and is dropped, row 9 is truncated)."""
    folder = tmp_path_factory.mktemp("cache_data")
    rows = [chat_row(i, "math", f"What is {i} + {i + 2}?", str(2 * i + 2)) for i in range(12)]
    rows[5] = chat_row(5, "writing", LONG_QUESTION, "Bread is old.")
    rows[9] = chat_row(9, "writing", "Name some fruits.", "Apple, pear, plum, " * 10)
    heldout = [chat_row(i, "math", f"What is {i} * 2?", str(2 * i)) for i in range(4)]
    for name, part in (("train", rows), ("heldout", heldout)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return folder / "train.jsonl", folder / "heldout.jsonl"


def build(teacher_dir, tiny_student_dir, data, out, kind=TOPK, **overrides):
    train, heldout = data
    return build_cache(
        teacher_dir, train, out, **{**SETTINGS, **kind, **overrides}, precision="fp32",
        student_dir=tiny_student_dir, heldout_jsonl=heldout, error_examples=2,
    )  # fmt: skip


@pytest.fixture(scope="module")
def cache(teacher_dir, tiny_student_dir, data, tmp_path_factory):
    """An uninterrupted build: (cache dir, manifest)."""
    out = tmp_path_factory.mktemp("cache") / "teacher"
    return out, build(teacher_dir, tiny_student_dir, data, out)


def encoded_batch(teacher_dir, train, positions=None):
    """(tokenizer, collated batch) of the encoded examples at `positions` (default: all)."""
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    examples = encode_examples(tokenizer, read_examples(train), SETTINGS["max_len"])
    assert [e.index for e in examples] == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11]  # row 5 dropped
    if positions is not None:
        examples = [examples[p] for p in positions]
    return tokenizer, collate(examples, tokenizer.eos_token_id)


def file_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_round_trip_matches_the_live_teacher(teacher_dir, tiny_student_dir, data, cache):
    out, manifest = cache
    # One example from each shard (4 examples each), the truncated row 9 among them.
    tokenizer, batch = encoded_batch(teacher_dir, data[0], positions=[0, 4, 8, 10])
    assert batch["index"].tolist() == [0, 4, 9, 11]
    mask = batch["target_mask"]
    logits = LocalTeacher(str(teacher_dir), "cpu").distribution(batch)
    reference = topk_teacher(logits, SETTINGS["k"], SETTINGS["temperature"])

    reader = TeacherCache(
        out, expect_tokenizer=tokenizer, expect_max_len=64, expect_temperature=1.0,
        expect_data=data[0], max_loaded_shards=1,
    )  # fmt: skip
    reader.verify_all()
    cached = reader.batch(batch["index"], mask)
    assert len(reader._loaded) == 1  # LRU bound held while the batch spanned 3 shards

    assert cached.logprobs.shape == reference.logprobs.shape
    # Values (tie-proof): fp16 rounding of log-probs down to about -20 is < 0.01.
    torch.testing.assert_close(cached.logprobs[mask], reference.logprobs[mask], atol=2e-2, rtol=0)
    log_p = torch.log_softmax(logits.float(), -1)[mask]
    torch.testing.assert_close(
        cached.logprobs[mask], log_p.gather(-1, cached.indices[mask]), atol=2e-2, rtol=0
    )
    agree = (cached.indices[mask] == reference.indices[mask]).float().mean()
    assert agree > 0.98, f"only {agree:.3f} of the cached indices are the live teacher's top-k"
    torch.testing.assert_close(
        cached.leftover[mask], reference.leftover[mask], atol=1e-4, rtol=1e-3
    )
    # Non-target rows are the documented filler.
    assert (cached.logprobs[~mask] == 0).all() and (cached.indices[~mask] == 0).all()
    assert (cached.leftover[~mask] == 1).all()

    # What a loss sees: the same KD value from the cache as from the live top-k teacher.
    student = LocalTeacher(str(tiny_student_dir), "cpu").distribution(batch)
    torch.testing.assert_close(
        forward_kl(student, cached, mask), forward_kl(student, reference, mask), rtol=1e-3, atol=0
    )
    _, everything = encoded_batch(teacher_dir, data[0])
    assert manifest["target_tokens"] == int(everything["target_mask"].sum())


def test_k_equal_to_vocab_is_the_full_distribution():
    """Pure path (the real vocab at k = V would be 300 kB/token): pack -> bytes -> unpack."""
    torch.manual_seed(0)
    logits, student = torch.randn(2, 6, 11) * 3, torch.randn(2, 6, 11)
    mask = torch.tensor([[0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]], dtype=torch.bool)
    rows = targets_topk(logits, mask, k=11, temperature=1.5)
    blob = safetensors.torch.save(pack_shard([3, 7], rows))
    stored = safetensors.torch.load(blob)
    offsets = stored["offsets"].tolist()
    per_example = [
        tuple(
            stored[key][offsets[b] : offsets[b + 1]] for key in ("logprobs", "indices", "leftover")
        )
        for b in range(2)
    ]
    cached = unpack_rows(per_example, mask)
    assert (cached.leftover[mask] == 0).all()
    full = forward_kl(student, logits, mask, temperature=1.5)
    torch.testing.assert_close(
        forward_kl(student, cached, mask, temperature=1.5), full, rtol=2e-3, atol=0
    )


@pytest.mark.slow
def test_resume_after_sigkill_recomputes_only_the_rest(
    teacher_dir, tiny_student_dir, data, cache, tmp_path, caplog
):
    out = tmp_path / "teacher"
    train, heldout = data
    args = [
        "--teacher", teacher_dir, "--data", train, "--kind", "topk", "--k", 8, "--temperature", 1.0,
        "--max-len", 64, "--batch-size", 4, "--shard-examples", 4, "--precision", "fp32",
        "--student", tiny_student_dir, "--heldout", heldout, "--error-examples", 2, "--out", out,
    ]  # fmt: skip
    killed = run_module("distill.teacher_cache", *args, env={KILL_ENV: "1"}, check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    names = sorted(p.name for p in out.iterdir())
    assert names == ["progress.json", "shard-00000.safetensors", "shard-00001.safetensors"]
    mtimes = {n: (out / n).stat().st_mtime_ns for n in names if n.startswith("shard")}

    caplog.set_level(logging.INFO, logger="distill.teacher_cache")
    build(teacher_dir, tiny_student_dir, data, out)
    assert "shard-00000.safetensors: kept" in caplog.text
    assert "shard-00001.safetensors: kept" in caplog.text
    assert "shard-00002.safetensors: computed" in caplog.text
    assert caplog.text.count(": computed") == 1
    assert {n: (out / n).stat().st_mtime_ns for n in mtimes} == mtimes
    assert file_bytes(out) == file_bytes(cache[0])  # as if never interrupted


@pytest.mark.slow
def test_missing_shard_is_named_and_rebuilt(
    teacher_dir, tiny_student_dir, data, cache, tmp_path, caplog
):
    out = tmp_path / "teacher"
    shutil.copytree(cache[0], out)
    (out / "shard-00001.safetensors").unlink()
    with pytest.raises(InputError, match=r"shard-00001\.safetensors: missing"):
        TeacherCache(out).verify_all()
    caplog.set_level(logging.INFO, logger="distill.teacher_cache")
    build(teacher_dir, tiny_student_dir, data, out)
    assert (
        caplog.text.count(": computed") == 1 and "shard-00001.safetensors: computed" in caplog.text
    )
    assert file_bytes(out) == file_bytes(cache[0])


@pytest.mark.parametrize("damage", ["truncate", "flip_one_byte"])
def test_damaged_shard_is_named_on_read(teacher_dir, data, cache, tmp_path, damage):
    out = tmp_path / "teacher"
    shutil.copytree(cache[0], out)
    shard = out / "shard-00002.safetensors"
    blob = bytearray(shard.read_bytes())
    if damage == "truncate":
        blob = blob[: len(blob) // 2]
    else:
        blob[-3] ^= 0x01  # inside the tensor data: the file still parses
    shard.write_bytes(bytes(blob))
    expected = (
        rf"{shard}: sha256 mismatch \(truncated or altered\)\. {out / MANIFEST} has been removed"
        r".*Fix: run the same snakemake command again.*keeps the other 2 shards"
    )
    _, batch = encoded_batch(teacher_dir, data[0])
    reader = TeacherCache(out)
    reader.batch(batch["index"][:4], batch["target_mask"][:4])  # shard 0 is intact
    with pytest.raises(InputError, match=expected):
        reader.batch(batch["index"][-2:], batch["target_mask"][-2:])
    assert not (out / MANIFEST).exists()  # the cache rule reruns on the next snakemake call
    with pytest.raises(InputError, match="manifest.json: missing"):
        TeacherCache(out)


def test_mismatches_are_refused(teacher_dir, data, cache):
    out, _ = cache
    with pytest.raises(
        InputError, match=r"`max_len` is 64 in the cache but this run expects 65.*rebuild"
    ):
        TeacherCache(out, expect_max_len=65)
    with pytest.raises(InputError, match="`tokenizer`"):
        TeacherCache(out, expect_tokenizer="0" * 64)
    with pytest.raises(InputError, match="`temperature`"):
        TeacherCache(out, expect_temperature=2.0)

    _, batch = encoded_batch(teacher_dir, data[0])
    reader = TeacherCache(out)
    with pytest.raises(InputError, match="example 5 .* not in the teacher cache"):
        reader.batch(torch.tensor([5]), batch["target_mask"][:1])
    shorter = batch["target_mask"][:1].clone()
    shorter[0, shorter[0].nonzero()[-1]] = False
    with pytest.raises(InputError, match="target tokens in the cache but .* in this batch"):
        reader.batch(batch["index"][:1], shorter)
    with pytest.raises(InputError, match="manifest.json: missing"):
        TeacherCache(out / "nowhere")


def test_manifest_records_size_and_quality(cache):
    out, manifest = cache
    assert json.loads((out / MANIFEST).read_text()) == manifest
    assert manifest["contract"].startswith("row j holds the teacher's prediction of token j+1")
    assert manifest["kind"] == "topk" and "samples" not in manifest
    assert manifest["k"] == 8 and manifest["dtype"]["logprobs"] == "float16"
    assert [s["examples"] for s in manifest["shards"]] == [4, 4, 3]
    assert manifest["teacher"]["parameters"] > 1e8
    assert manifest["bytes_per_token"] < manifest["full_fp16_logits_bytes_per_token"]
    quality = manifest["quality"]
    # merging tokens into one bucket can only lower the KL: top-k sits below the full KL
    assert 0 < quality["kl_mean"] <= quality["kl_full_mean"]
    assert quality["kl_relative_error"] == pytest.approx(
        (quality["kl_full_mean"] - quality["kl_mean"]) / quality["kl_full_mean"]
    )
    assert 0.5 < quality["grad_cosine"] <= 1 + 1e-9
    assert "topk_same_bytes" not in quality


# ----------------------------------------------------------------------------------------------
# The sampled cache
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sampled(teacher_dir, tiny_student_dir, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("sampled") / "teacher"
    return out, build(teacher_dir, tiny_student_dir, data, out, kind=SAMPLED)


@pytest.mark.slow
def test_sampled_cache_round_trip_and_manifest(teacher_dir, data, sampled):
    out, manifest = sampled
    assert manifest["kind"] == "sampled" and manifest["samples"] == 40 and "k" not in manifest
    histogram = manifest["distinct_ids_per_row"]["histogram"]
    assert sum(histogram.values()) == manifest["target_tokens"]
    assert 1 <= manifest["distinct_ids_per_row"]["mean"] <= 40
    # bytes/token = 5 per distinct id + 8 per row + per-example/shard overhead
    assert manifest["bytes_per_token"] >= 5 * manifest["distinct_ids_per_row"]["mean"] + 8
    quality = manifest["quality"]
    assert quality["topk_same_bytes"]["k"] == (manifest["bytes_per_token"] - 4) // 6
    assert 0 <= quality["kl_relative_error"] < 1 and quality["grad_cosine"] > 0.5

    tokenizer, batch = encoded_batch(teacher_dir, data[0], positions=[0, 4, 8, 10])
    mask = batch["target_mask"]
    cached = TeacherCache(out, expect_tokenizer=tokenizer, expect_temperature=1.0).batch(
        batch["index"], mask
    )
    assert isinstance(cached, SampledTeacher)
    torch.testing.assert_close(cached.weights.sum(-1)[mask], torch.ones(int(mask.sum())))
    assert (cached.weights[~mask] == 0).all()
    logits = LocalTeacher(str(teacher_dir), "cpu").distribution(batch).float()
    log_p = torch.log_softmax(logits, -1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    torch.testing.assert_close(cached.entropy[mask], entropy[mask], atol=1e-4, rtol=1e-4)
    # Every sampled id has real teacher probability; on average the draws sit where p_T does.
    drawn_logp = log_p.gather(-1, cached.indices)[mask][cached.weights[mask] > 0]
    assert drawn_logp.min() > -25
    estimate = -(cached.weights * log_p.gather(-1, cached.indices)).sum(-1)[mask].mean()
    assert float(estimate) == pytest.approx(float(entropy[mask].mean()), rel=0.15)


@pytest.mark.slow
def test_sampled_cache_same_seed_same_bytes(teacher_dir, tiny_student_dir, data, sampled, tmp_path):
    again = tmp_path / "again"
    build(teacher_dir, None, (data[0], None), again, kind=SAMPLED)
    shards = sorted(p.name for p in sampled[0].glob("shard-*"))
    assert [(again / n).read_bytes() for n in shards] == [
        (sampled[0] / n).read_bytes() for n in shards
    ]  # the same seed: the same cache
    other = tmp_path / "other"
    build(teacher_dir, None, (data[0], None), other, kind={**SAMPLED, "seed": 4})
    assert (other / shards[0]).read_bytes() != (sampled[0] / shards[0]).read_bytes()


def test_cache_of_another_vocabulary_or_old_manifest(cache, tmp_path):
    out = tmp_path / "teacher"
    shutil.copytree(cache[0], out)
    with pytest.raises(InputError, match=r"`teacher.vocab_size` is 49152 .* expects 32000"):
        TeacherCache(out, expect_vocab=32000)
    manifest = json.loads((out / MANIFEST).read_text())
    del manifest["kind"]  # as written before sampled caches existed
    (out / MANIFEST).write_text(json.dumps(manifest))
    assert TeacherCache(out).kind == "topk"
