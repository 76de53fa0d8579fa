# Two commands matter: `make demo` and `make test`. Both create or reuse .venv and install the exact pinned
# versions of python_core/constraints.txt. TORCH is the torch requirement installed first: the default takes
# the CPU build; a GPU user passes their own (README, "Using your own torch"), or TORCH=skip to keep the
# torch already in .venv.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
CONSTRAINTS := python_core/constraints.txt
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --disable-pip-version-check -q

.PHONY: demo test lint setup setup-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.core-installed: $(BIN)/python python_core/pyproject.toml $(CONSTRAINTS)
	@if [ "$(TORCH)" != "skip" ]; then $(PIP) $(TORCH); fi
	$(PIP) -c $(CONSTRAINTS) -e python_core
	@touch $@

$(VENV)/.test-installed: $(VENV)/.core-installed
	$(PIP) -c $(CONSTRAINTS) -e 'python_core[test,dev]'
	@touch $@

setup: $(VENV)/.core-installed

setup-test: $(VENV)/.test-installed

demo: setup
	$(BIN)/mafm3 doctor

lint: setup-test
	$(BIN)/ruff check --config python_core/pyproject.toml python_core MAFM3Slicer Testing
	$(BIN)/ruff format --check --config python_core/pyproject.toml python_core MAFM3Slicer Testing

test: lint
	$(BIN)/python -m pytest -c python_core/pyproject.toml --rootdir . python_core/tests Testing

clean:
	rm -rf $(VENV)
