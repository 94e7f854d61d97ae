# Two commands set everything up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DBT_VENV := .venv-dbt
DBT_STAMP := $(DBT_VENV)/.installed

.PHONY: serve test lint bench bench-full clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# dbt pins libraries that conflict with the dev tools, so it lives in a venv of its own.
$(DBT_STAMP):
	$(PYTHON) -m venv $(DBT_VENV)
	$(DBT_VENV)/bin/pip install -q "dbt-postgres~=1.9.0" "dbt-core~=1.9.0"
	touch $(DBT_STAMP)

serve: $(STAMP)
	$(BIN)/fig serve

test: $(STAMP) $(DBT_STAMP)
	$(BIN)/ruff check fig_server tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check fig_server tests benchmarks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run --scale quick

bench-full: $(STAMP)
	$(BIN)/python -m benchmarks.run --scale full

clean:
	rm -rf $(VENV) $(DBT_VENV) .fig
