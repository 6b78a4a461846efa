# Two commands on a fresh machine: `make demo` and `make test` (both set up .venv when missing).
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
PYTHON ?= python3
export PATH := $(BIN):$(PATH)

.PHONY: setup demo test test-cluster lint format clean

setup: $(STAMP)

# torch is pinned to the CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: setup
	snakemake --cores all --workflow-profile workflow/profiles/default

# The tests spread over the cores (pytest-xdist; whole-workflow tests dominate, so at most 4);
# a plain `pytest` runs them one after another.
test: setup
	pytest -n auto --maxprocesses 4 --dist worksteal

# The demo through a real single-node SLURM on this machine, against a local run (needs root:
# installs slurm-wlm and munge where missing; skips with a message otherwise).
test-cluster: setup
	tests/cluster/run.sh

lint: setup
	ruff check phasepipe tests benchmarks
	ruff format --check phasepipe tests benchmarks

format: setup
	ruff format phasepipe tests benchmarks
	ruff check --fix phasepipe tests benchmarks

clean:
	rm -rf results .snakemake
