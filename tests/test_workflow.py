"""The workflow itself: lint and format checks, config errors, and snakemake killed mid-training
(configs/ci.yaml in a copy of the repository): the rerun resumes from the checkpoint. The whole
CI workflow to every figure and the report runs once, through SLURM (tests/test_slurm.py); the
paper DAG runs in tests/test_paper_smoke.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, copy_checkout

BIN = Path(sys.executable).parent


def snakemake(*args, cwd=REPO, timeout=1200):
    return subprocess.run(
        [str(BIN / "snakemake"), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def test_lint_and_format_are_clean():
    lint = snakemake("--lint")
    assert "Congratulations, your workflow is in a good condition!" in lint.stdout + lint.stderr
    fmt = subprocess.run([str(BIN / "snakefmt"), "--check", "."], cwd=REPO, capture_output=True)
    assert fmt.returncode == 0, fmt.stderr.decode()
    for args in (
        ["check", "src", "tests", "bench"],
        ["format", "--check", "src", "tests", "bench"],
    ):
        ruff = subprocess.run([str(BIN / "ruff"), *args], cwd=REPO, capture_output=True, text=True)
        assert ruff.returncode == 0, ruff.stdout


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train: {stpes: 3}", "unknown config key `stpes` (did you mean `steps`?)"),
        ("train: {lr: fast}", "config key `train.lr`: 'fast' is not of type 'number'"),
        ("kd: {divergence: kl}", "config key `kd.divergence`"),
    ],
)
def test_bad_config_stops_before_any_job(tmp_path, override, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(override + "\n")
    result = snakemake("-n", "--configfile", "config.yaml", str(bad))
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


SFT = "results/models/student_sft/seed0"
CHECKPOINT = "results/checkpoints/student_sft/seed0/checkpoint.pt"
# CI's config, with a longer SFT run so that it can be killed between two checkpoints.
CONFIGS = ("config.yaml", "configs/ci.yaml", "longer_sft.yaml")


def kill_snakemake_mid_training(repo: Path) -> None:
    """Start the workflow, SIGKILL snakemake and its jobs once SFT wrote its first checkpoint."""
    checkpoint = repo / CHECKPOINT
    log = repo / "killed_run.log"
    for _attempt in range(2):  # a run that ended early (e.g. a transient failure) is retried once
        with open(log, "w") as out:
            proc = subprocess.Popen(
                # The target comes first: --configfile takes every argument after it.
                [str(BIN / "snakemake"), "-c2", SFT, "--configfile", *CONFIGS],
                cwd=repo, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.time() + 900
        while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # snakemake had already ended
        proc.wait()
        if checkpoint.exists():
            break
        snakemake("--unlock", "--configfile", *CONFIGS, cwd=repo)
    assert checkpoint.exists(), (
        "SFT never reached its first checkpoint:\n" + log.read_text()[-3000:]
    )
    assert not (repo / SFT).exists()  # no partial model


@pytest.mark.slow
def test_killed_workflow_resumes_training_and_cleans_up(tmp_path):
    repo = copy_checkout(tmp_path / "repo")
    (repo / "longer_sft.yaml").write_text("sft: {train: {steps: 12}}\n")
    kill_snakemake_mid_training(repo)
    # As after any killed run: release snakemake's lock, then rerun. The rerun redoes the
    # killed job (rerun-incomplete), which resumes from the checkpoint.
    unlock = snakemake("--unlock", "--configfile", *CONFIGS, cwd=repo)
    assert unlock.returncode == 0, unlock.stderr[-2000:]
    run = snakemake("-c2", SFT, "--configfile", *CONFIGS, cwd=repo)
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
    assert "resumed from" in (repo / "results/logs/train/student_sft/seed0.log").read_text()
    log = (repo / SFT / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("step,tokens,flops,wall_s,lr,loss")
    assert log[-1].startswith("12,")
    # The finished run leaves no resume checkpoint behind (train.keep_checkpoints: false).
    assert not (repo / CHECKPOINT).exists()
    # A rerun has nothing to do: the model is complete and up to date.
    again = snakemake("-n", "-c2", SFT, "--configfile", *CONFIGS, cwd=repo)
    assert "Nothing to be done" in again.stdout + again.stderr
