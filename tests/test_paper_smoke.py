"""The paper DAG, executed end to end on a CPU (the "paper smoke").

`--configfile configs/paper.yaml configs/paper-smoke.yaml` runs configs/paper.yaml's DAG with
tiny random models of the papers' architectures (Mistral, Mixtral, Qwen2, Llama; `tiny:` model
sources), local files in the hub datasets' formats, small counts and steps, an in-process judge,
and the CPU as hardware: training in 2 processes through the same training entry point and
distributed settings (torchrun + gloo instead of accelerate launch on GPUs). Every method
setting stays the paper's: the first test checks which keys the overlay is allowed to change.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from conftest import REPO, copy_checkout

from distill.config import effective_config

BIN = Path(sys.executable).parent
CONFIGS = ("configs/paper.yaml", "configs/paper-smoke.yaml")
# What the smoke may change: model and data sources, sizes, counts, steps, the judge's kind or
# endpoint, and the hardware. Everything else (divergences, λ, T, attention weight, DAE share,
# DDK modes/α/γ, the λ' values, the AlpacaEval annotator, ...) must stay the paper's.
ALLOWED = (
    "models.", "data.", "dae.expert.source", "sweep.student_sizes", "sweep.data.",
    "sweep.heldout_examples", "sweep.max_new_tokens", "sweep.smooth",
    "gpus", "model_gpus", "launch.", "sft.launch.", "kd.launch.", "dae.launch.", "ddk.launch.",
    "sweep.launch.", "train.", "sft.train.", "kd.train.", "dae.train.", "ddk.train.",
    "sweep.train.", "kd.cache.", "ddk.interval", "ddk.valid_per_domain", "eval.judge.",
    "eval.batch_size", "eval.backend", "eval.mtbench.n_questions", "eval.mtbench.question_ids",
    "eval.mtbench.max_new_tokens", "eval.alpaca.n_instructions", "eval.alpaca.max_new_tokens",
    "eval.alpaca.instructions", "eval.alpaca.data_source", "eval.alpaca.reference_outputs",
)  # fmt: skip
# Changed only in the sizes of their units: steps between re-weightings, not the method.
TRAIN_METHOD_KEYS = ("train.lr", "train.weight_decay", "train.seed", "train.max_grad_norm")


def flatten(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_smoke_changes_no_method_setting():
    paper = flatten(effective_config([str(REPO / c) for c in CONFIGS[:1]]))
    smoke = flatten(effective_config([str(REPO / c) for c in CONFIGS]))
    changed = {k for k in paper.keys() | smoke.keys() if paper.get(k) != smoke.get(k)}
    assert changed, "the smoke overlay changes nothing"
    not_allowed = sorted(
        k for k in changed if not k.startswith(ALLOWED) or k.endswith(TRAIN_METHOD_KEYS)
    )
    assert not not_allowed, f"the smoke changes method settings: {not_allowed}"
    assert smoke["launch.processes"] == 2 and smoke["launch.distributed"] == "fsdp"
    assert smoke["eval.alpaca.annotator"] == "alpaca_eval_gpt4"


@pytest.mark.slow
def test_paper_dag_runs_end_to_end_on_cpu(tmp_path):
    repo = copy_checkout(tmp_path / "repo")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # nothing may come from a hub
    started = time.time()
    run = subprocess.run(
        [str(BIN / "snakemake"), "-c2", "--configfile", *CONFIGS], cwd=repo,
        capture_output=True, text=True, env=env, timeout=1800,
    )  # fmt: skip
    minutes = (time.time() - started) / 60
    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]
    print(f"paper smoke: {minutes:.1f} min")  # BENCHMARKS.md quotes it (pytest -s)
    figures = {p.stem for p in (repo / "results/figures").glob("*.png")}
    assert {"sft_loss", "training_curves", "ddk_weights", "ddk_domain_ppl", "lambda_sweep",
            "radar", "evaluation"} <= figures, figures  # fmt: skip
    # Training went through 2 processes with the paper's FSDP settings.
    kd_log = (repo / "results/logs/train/student_kd/seed0.log").read_text()
    assert "torchrun" in run.stdout + run.stderr and "2 processes" in kd_log
    # Every architecture the paper names was built and trained from.
    architectures = {"teacher": "mistral", "expert": "mixtral", "qwen15_14b": "qwen2"}
    architectures["llama31_8b_instruct"] = "llama"
    for name, model_type in architectures.items():
        assert (
            f'"model_type": "{model_type}"'
            in (repo / "results/models" / name / "config.json").read_text()
        )
    report = subprocess.run(
        [str(BIN / "snakemake"), "--configfile", *CONFIGS, "--report", "results/report.zip"],
        cwd=repo, capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr[-3000:]
    assert "never awaited" not in report.stderr  # profiles/default fixes disk_mb (why: there)
    with zipfile.ZipFile(repo / "results/report.zip") as z:
        assert sum(n.endswith(".png") for n in z.namelist()) >= 7
