"""Two processes (gloo on the CPU) train like one process with the same global batch.

`accelerate launch --cpu` starts one process on these machines; `torchrun --nproc_per_node 2`
around the same Accelerator code gives two gloo ranks (FACTS.md). On GPUs the workflow uses
`accelerate launch` with one process per GPU; the loop is the same.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

# Per-step losses agree to float rounding: the two runs sum the same per-token terms in another
# order (two partial sums + an all-reduce vs one sum).
TOLERANCE = 1e-4


def launch(nproc, objective, objective_settings, student, data, out, batch_size):
    settings = {"steps": 4, "batch_size": batch_size, "grad_accum": 2, "checkpoint_every": 2,
                "eval_every": 4, "warmup_steps": 1, "max_len": 48, "lr": 3e-3}  # fmt: skip
    args = ["--objective", objective, "--student", str(student), "--train", str(data[0]),
            "--valid", str(data[1]), "--settings", json.dumps(settings), "--objective-settings",
            json.dumps(objective_settings), "--seed", "5", "--precision", "fp32",
            "--ckpt-dir", str(out) + "_ckpt", "--out", str(out)]  # fmt: skip
    if nproc == 1:
        command = [sys.executable, "-m", "distill.train", *args]
    else:
        port = str(29500 + os.getpid() % 1000)
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                   "--master_port", port, "-m", "distill.train", *args]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out / "train_log.csv") as f:
        return list(csv.DictReader(f)), result.stderr


@pytest.mark.parametrize("objective", ["sft", "kd"])
def test_two_processes_match_one(objective, tmp_path, tiny_student_dir, small_dataset):
    settings = (
        {"teacher": str(tiny_student_dir), "teacher_source": "online"} if objective == "kd" else {}
    )
    one, _ = launch(1, objective, settings, tiny_student_dir, small_dataset, tmp_path / "one", 4)
    two, log = launch(2, objective, settings, tiny_student_dir, small_dataset, tmp_path / "two", 2)
    assert "x 2 processes" in log
    assert len(one) == len(two) == 4
    for a, b in zip(one, two, strict=True):
        assert a["tokens"] == b["tokens"]
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=TOLERANCE, abs=1e-6)
    assert float(one[-1]["valid_ce"]) == pytest.approx(float(two[-1]["valid_ce"]), rel=TOLERANCE)
