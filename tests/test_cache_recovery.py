"""A damaged teacher-cache shard, end to end: training stops with advice, following the advice
(run the same snakemake command again) recomputes only that shard and trains the student."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import copy_checkout

BIN = Path(sys.executable).parent
CONFIGS = ["config.yaml", "configs/ci.yaml"]
KD = "results/models/student_kd/seed0"
ADVICE = "Fix: run the same snakemake command again"


def snakemake(repo: Path, *args: str) -> subprocess.CompletedProcess:
    # The target comes first: --configfile takes every argument after it.
    command = [str(BIN / "snakemake"), "-c2", *args, "--configfile", *CONFIGS]
    return subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=1800)


@pytest.mark.slow
def test_damaged_shard_advice_leads_to_a_trained_model(tmp_path):
    repo = copy_checkout(tmp_path / "repo")
    first = snakemake(repo, KD)
    assert first.returncode == 0, first.stderr[-4000:]
    [manifest] = (repo / "results/cache/teacher/instructions").glob("*/manifest.json")
    shards = sorted(manifest.parent.glob("shard-*.safetensors"))
    assert len(shards) >= 2, "the CI cache should have several shards"
    blob = bytearray(shards[1].read_bytes())
    blob[-3] ^= 0x01  # inside the tensor data: the file still parses
    shards[1].write_bytes(bytes(blob))
    shutil.rmtree(repo / KD)  # the next run trains again and reads the cache

    failed = snakemake(repo, KD)
    assert failed.returncode != 0
    # Snakemake prints the failed job's log (a retry of the job may overwrite the file).
    assert ADVICE in failed.stderr, failed.stderr[-4000:]
    assert f"{shards[1].name}: sha256 mismatch" in failed.stderr
    assert not manifest.exists()

    again = snakemake(repo, KD)  # the advice, followed
    assert again.returncode == 0, again.stderr[-4000:]
    assert (repo / KD / "model.safetensors").is_file()
    [cache_log] = [
        p.read_text() for p in (repo / "results/logs/cache/teacher/instructions").rglob("*.log")
    ]
    assert f"{shards[1].name}: computed" in cache_log
    assert f"{shards[0].name}: kept" in cache_log
    assert cache_log.count(": computed") == 1
