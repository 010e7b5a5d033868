"""The conda environment of the rules (envs/distill.yaml) pins what pyproject.toml pins."""

from __future__ import annotations

import tomllib

import yaml
from conftest import REPO


def test_conda_environment_pins_the_project_dependencies():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((REPO / "envs/distill.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pins = {line for line in pip if "==" in line}
    assert pins == set(project["dependencies"])
    assert all("==" in pin for pin in project["dependencies"])  # exact pins: no CUDA surprise
