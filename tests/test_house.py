"""House rules a newcomer relies on, checked: short functions in src/, rules as declarations,
and no reference to a file the project does not hold."""

from __future__ import annotations

import ast
import re

import pytest
from conftest import REPO

MAX_FUNCTION_LINES = 80


def test_no_function_in_src_is_over_80_lines():
    long = []
    for path in sorted((REPO / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines})")
    assert not long, long


@pytest.mark.parametrize("path", sorted((REPO / "workflow/rules").glob("*.smk")))
def test_rules_are_declarations(path):
    text = path.read_text()
    assert "lambda " not in text, f"{path.name}: a lambda (name the function in common.smk)"
    if path.name != "common.smk":
        assert not re.search(r"^def ", text, re.M), f"{path.name}: a function outside common.smk"
    assert not re.search(r"^(if|else|elif|for)\b.*:\s*$(\n\s+.*)*\n\s+rule ", text, re.M)


# Notes of the development machines, not part of the project (docs/ holds what it relies on).
MISSING = ["FACTS.md", "PUBLISHED.md", "DESIGN.md", "../shared"]


def test_no_reference_to_files_the_project_does_not_hold():
    files = [p for p in REPO.rglob("*") if p.is_file() and p.suffix in {".py", ".md", ".smk",
             ".yaml", ".rst", ".sh", ".toml"} and not set(p.parts) & {".venv", "results", ".git",
             ".snakemake"}]  # fmt: skip
    found = []
    for path in files:
        if path.name == "test_house.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for name in MISSING:
                if (
                    name in line
                    and not (REPO / "tests" / name).exists()
                    or (name == "../shared" and name in line)
                ):
                    found.append(f"{path.relative_to(REPO)}:{number}: {name}")
    assert not found, found
