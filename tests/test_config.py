"""Config files are whole, and the paper config is the papers' (docs/published.md).

The Snakefile reads config.yaml only when no --configfile is given; `python -m distill.config`
prints the effective config as the Snakefile sees it. These tests run snakemake itself where
the claim is about snakemake (a dry run from a copy of the repository, in a fresh HOME).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, copy_checkout

from distill.config import effective_config
from distill.io import InputError

BIN = Path(sys.executable).parent


def dry_run(repo: Path, *args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    return subprocess.run(
        [str(BIN / "snakemake"), "-n", *args], cwd=repo, capture_output=True, text=True,
        env=env, timeout=600,
    )  # fmt: skip


def test_config_cli_prints_the_effective_config():
    help_text = subprocess.run(
        [sys.executable, "-m", "distill.config", "--help"], capture_output=True, text=True
    )
    assert help_text.returncode == 0 and "--configfile" in help_text.stdout
    printed = subprocess.run(
        [sys.executable, "-m", "distill.config", "--configfile", "config.yaml", "configs/ci.yaml"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    config = yaml.safe_load(printed.stdout)
    assert config["train"]["steps"] == 4  # from ci.yaml
    assert config["models"]["teacher"].startswith("gguf:")  # from config.yaml
    assert config["train"]["min_lr"] == 0  # from the schema's defaults


@pytest.mark.slow
def test_paper_config_takes_nothing_from_config_yaml(tmp_path):
    repo = copy_checkout(tmp_path / "repo")
    paper = effective_config([str(repo / "configs/paper.yaml")])
    # Snakemake itself: a config.yaml that cannot even be parsed is not read for the paper.
    (repo / "config.yaml").write_text("train: {steps: [unclosed\n")
    plan = dry_run(repo, "--configfile", "configs/paper.yaml", home=tmp_path / "home")
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert effective_config([str(repo / "configs/paper.yaml")]) == paper
    broken = dry_run(repo, home=tmp_path / "home")  # no --configfile: config.yaml is read
    assert broken.returncode != 0


def test_paper_config_has_the_papers_settings():
    config = effective_config([str(REPO / "configs/paper.yaml")])
    # The λ' sweep: a 0.27B student on Llama-3.1-8B-Instruct, >= 100,000 rows, >= 1,000 steps.
    sweep = config["sweep"]
    assert config["models"]["extra"][sweep["teacher"]] == "hf:meta-llama/Llama-3.1-8B-Instruct"
    sizes, vocab = sweep["student_sizes"], 128_256
    hidden, inter, layers = (
        sizes["hidden_size"],
        sizes["intermediate_size"],
        sizes["num_hidden_layers"],
    )
    kv = hidden // sizes["num_attention_heads"] * sizes["num_key_value_heads"]
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inter + 2 * hidden
    params = 2 * vocab * hidden + layers * per_layer + hidden  # untied embeddings
    assert sizes["tie_word_embeddings"] is False
    assert 0.26e9 < params < 0.28e9, params
    train = {**config["train"], **sweep["train"]}
    assert sweep["data"]["n_train"] >= 100_000
    steps = math.ceil(train["epochs"] * sweep["data"]["n_train"] / train["batch_size"])
    assert steps >= 1000
    assert config["launch"]["processes"] > 1 and sweep["launch"]["processes"] == 1
    # AlpacaEval 1.0 on all 805 instructions.
    assert config["eval"]["alpaca"]["annotator"] == "alpaca_eval_gpt4"
    assert config["eval"]["alpaca"]["n_instructions"] == 0
    assert config["eval"]["judge"]["model"] == "gpt-4"
    # DDK's schedule and about 0.5M tokens per step.
    ddk = {**config["train"], **config["ddk"]["train"]}
    launch = {**config["launch"], **config["ddk"]["launch"]}
    assert (ddk["warmup_steps"], ddk["min_lr"], ddk["steps"]) == (1000, 3e-6, 30000)
    tokens = ddk["batch_size"] * ddk["grad_accum"] * launch["processes"] * ddk["max_len"]
    assert 0.45e6 < tokens < 0.55e6
    assert 14e9 < tokens * ddk["steps"] < 17e9
    assert (config["ddk"]["alpha"], config["ddk"]["interval"], config["ddk"]["gamma"]) == (
        0.5, 1000, 0.2,
    )  # fmt: skip
    # KD-DAE: seeds 43/44, DAE's steps from its data (2 epochs), weight decay 0.1 / 0.
    assert config["kd"]["train"]["seed"] == 43 and config["dae"]["train"]["seed"] == 44
    assert config["dae"]["train"]["epochs"] == 2
    assert (config["kd"]["train"]["weight_decay"], config["dae"]["train"]["weight_decay"]) == (
        0.1, 0.0,
    )  # fmt: skip


@pytest.mark.slow
def test_paper_plans_with_the_slurm_profile_from_a_fresh_home(tmp_path):
    """What README tells a cluster user to type, from the repository root, in a fresh HOME."""
    repo = copy_checkout(tmp_path / "repo")
    plan = dry_run(repo, "--profile", "slurm", "--configfile", "configs/paper.yaml",
                   home=tmp_path / "home")  # fmt: skip
    assert plan.returncode == 0, plan.stderr[-3000:]
    text = plan.stdout + plan.stderr
    blocks = {block.split(":", 1)[0]: block for block in text.split("\nrule ")[1:]}
    assert "gpu=8" in blocks["train_kd"] and "tasks_per_gpu=0" in blocks["train_kd"]
    assert "gpu=1" in blocks["sweep_train"]
    assert "torchrun" not in text and "accelerate launch --num_processes 8" in text


def test_a_launch_the_sweep_cannot_run_under_stops_the_plan(tmp_path):
    overlay = tmp_path / "bad_launch.yaml"
    overlay.write_text("sweep: {launch: {processes: 2, gpus: 2, distributed: fsdp}}\n")
    plan = dry_run(REPO, "--configfile", "config.yaml", str(overlay), home=tmp_path / "home")
    assert plan.returncode != 0
    assert "sweep.launch" in plan.stdout + plan.stderr


def test_overlays_fill_defaults_and_reject_unknown_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {stpes: 3}\n")
    with pytest.raises(InputError, match="did you mean `steps`"):
        effective_config([str(REPO / "config.yaml"), str(bad)])


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice (PyYAML keeps the last one silently)."""


def _unique_mapping(loader, node, deep=False):
    keys = [loader.construct_object(key, deep=deep) for key, _ in node.value]
    repeated = sorted({str(k) for k in keys if keys.count(k) > 1})
    if repeated:
        raise yaml.constructor.ConstructorError(
            None, None, f"repeated keys {repeated}", node.start_mark
        )
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


YAML_FILES = ["config.yaml", "workflow/schemas/config.schema.yaml", "profiles/slurm/config.yaml"]
YAML_FILES += sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", YAML_FILES)
def test_no_key_is_given_twice(path):
    yaml.load((REPO / path).read_text(), Loader=_UniqueKeyLoader)
