# Two commands on a fresh machine with only python3 and make:
#   make demo   creates .venv, installs lossdsl, runs examples/lesion.py
#   make test   creates .venv if needed, installs the dev extra, lints, runs the suite
#               (TensorFlow, and JAX in subprocesses); make test-all adds torch
#   make bench  every speed measurement, written to benchmarks/RESULTS.md
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test test-all bench lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[tf]'
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(VENV)/.installed $@

demo: $(VENV)/.installed
	$(BIN)/python examples/lesion.py

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The suite runs on TensorFlow; tests/test_backends.py and tests/test_distribute.py
# run the same checks on JAX (and torch, when installed) in their own processes.
test: lint
	LOSSDSL_REQUIRE=jax $(BIN)/python -m pytest

# Also torch (CPU): exactly 2.13.0, which pip takes from a local file here; any
# other version downloads a multi-GB CUDA build.
test-all: lint
	$(BIN)/python -m pip install --quiet torch==2.13.0
	LOSSDSL_REQUIRE=jax,torch $(BIN)/python -m pytest

# Every measurement in one run (minutes, not a test): prints a table of medians and
# ratios and writes benchmarks/RESULTS.md with the date and the machine.
bench: $(VENV)/.dev-installed
	$(BIN)/python benchmarks/bench.py

format: $(VENV)/.dev-installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build dist *.egg-info
