# Two entry points (see README): `make run` and `make test`. Both are idempotent.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SCENARIO ?= workloads/scenarios/quickstart.yaml

.PHONY: run test lint bench fidelity clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml constraints-dev.txt $(BIN)/python
	$(BIN)/python -m pip install -q -c constraints-dev.txt -e ".[dev,calibrate,ray]"
	touch $(VENV)/.installed $@

run: $(VENV)/.installed
	$(BIN)/simkit run $(SCENARIO) --out reports/quickstart

test: $(VENV)/.installed-dev
	$(BIN)/python -m ruff check simkit tests benchmarks
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-dev
	$(BIN)/python -m ruff check simkit tests benchmarks

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/serving_speed.py

fidelity: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/fidelity.py

clean:
	rm -rf $(VENV) .pytest_cache reports/quickstart
