"""Two processes (gloo on the CPU) train like one process with the same global batch.

`accelerate launch` starts one process on a CPU machine; the workflow starts CPU processes with
`torchrun --standalone --nproc_per_node N -m distill.train --distributed <d>` (as here), and GPU
processes with `accelerate launch`; the loop is the same.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO
from safetensors.torch import load_file

# Per-step losses agree to float rounding: the two runs sum the same per-token terms in another
# order (two partial sums + an all-reduce vs one sum).
TOLERANCE = 1e-4


def launch(nproc, objective, objective_settings, student, data, out, batch_size,
           distributed="ddp", env=None, check=True):  # fmt: skip
    settings = {"steps": 4, "batch_size": batch_size, "grad_accum": 2, "checkpoint_every": 2,
                "eval_every": 4, "warmup_steps": 1, "max_len": 48, "lr": 3e-3,
                "keep_checkpoints": True}  # fmt: skip
    args = ["--objective", objective, "--student", str(student), "--train", str(data[0]),
            "--valid", str(data[1]), "--settings", json.dumps(settings), "--objective-settings",
            json.dumps(objective_settings), "--seed", "5", "--precision", "fp32",
            "--ckpt-dir", str(out) + "_ckpt", "--out", str(out)]  # fmt: skip
    if nproc == 1:
        command = [sys.executable, "-m", "distill.train", *args]
    else:
        # The workflow's CPU launch: torchrun --standalone ... -m distill.train --distributed <d>
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc_per_node", str(nproc), "-m", "distill.train",
                   "--distributed", distributed, *args]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})  # fmt: skip
    if not check:
        return result
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out / "train_log.csv") as f:
        return list(csv.DictReader(f)), result.stderr


def assert_same_run(one, two):
    assert len(one) == len(two) == 4
    for a, b in zip(one, two, strict=True):
        assert a["tokens"] == b["tokens"]
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=TOLERANCE, abs=1e-6)
    assert float(one[-1]["valid_ce"]) == pytest.approx(float(two[-1]["valid_ce"]), rel=TOLERANCE)


@pytest.fixture(scope="module")
def two_fsdp(tiny_student_dir, small_dataset, tmp_path_factory):
    """SFT on 2 gloo processes with the FSDP settings (DDP on CPUs, with a warning)."""
    out = tmp_path_factory.mktemp("fsdp") / "two"
    rows, log = launch(2, "sft", {}, tiny_student_dir, small_dataset, out, 2, "fsdp")
    return rows, log, out


@pytest.mark.slow  # two training runs, about 35 s
def test_two_fsdp_processes_match_one(two_fsdp, tmp_path, tiny_student_dir, small_dataset):
    one, _ = launch(1, "sft", {}, tiny_student_dir, small_dataset, tmp_path / "one", 4)
    two, log, _ = two_fsdp
    assert "x 2 processes" in log
    # accelerate cannot run FSDP on CPUs (distill.distributed): the fallback is DDP, logged once.
    assert log.count("--distributed fsdp on a CPU machine") == 1 and "runs as DDP" in log
    assert_same_run(one, two)


@pytest.mark.slow  # two training runs with an online teacher, about 45 s
def test_kd_hidden_projection_is_trained_on_the_global_batch(
    tmp_path, tiny_student_dir, small_dataset
):
    """The projection is outside DDP: the loop averages its gradients over processes. Then rank
    0's projection (saved in the checkpoint) equals the one-process run's, which sees the same
    global batch; stepped on its own half of the batch it would not."""
    settings = {"teacher": str(tiny_student_dir), "teacher_source": "online", "w_hid": 1.0}
    one, _ = launch(1, "kd", settings, tiny_student_dir, small_dataset, tmp_path / "one", 4)
    two, _ = launch(2, "kd", settings, tiny_student_dir, small_dataset, tmp_path / "two", 2)
    assert_same_run(one, two)
    assert all(float(row["hid"]) > 0 for row in two)
    a, b = (torch.load(tmp_path / f"{n}_ckpt" / "checkpoint.pt", weights_only=False)
            for n in ("one", "two"))  # fmt: skip
    for key, value in a["objective"]["projection"].items():
        assert torch.allclose(value, b["objective"]["projection"][key], atol=1e-5), key
    assert b["extra_optimizer"]["state"], "the projection's AdamW state is checkpointed"


@pytest.mark.slow  # two training runs, about 35 s
def test_two_process_run_resumes_after_a_kill(two_fsdp, tmp_path, tiny_student_dir, small_dataset):
    """Killed after step 3 (checkpoint at step 2), rerun: the same losses and weights as the
    uninterrupted two-process run, optimizer state included."""
    out = tmp_path / "resumed"
    run = (2, "sft", {}, tiny_student_dir, small_dataset, out, 2, "fsdp")
    killed = launch(*run, env={"DISTILL_KILL_AFTER_STEP": "3"}, check=False)
    assert killed.returncode != 0 and "step 2: checkpoint saved" in killed.stderr
    rows, log = launch(*run)
    assert "resumed from" in log and "at step 2 of 4" in log
    straight_rows, _, straight = two_fsdp
    assert_same_run(straight_rows, rows)
    a, b = load_file(straight / "model.safetensors"), load_file(out / "model.safetensors")
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
