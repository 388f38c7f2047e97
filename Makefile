# Two commands on a fresh machine:
#   make run    - the service on its embedded default (SQLite file, in-process limiter),
#                 the API and the worker in one process
#   make test   - lint, type-check and the whole test suite (needs PostgreSQL and Redis)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
# Lint what exists: bench/ may be absent in a partial checkout.
LINT_PATHS := app tests migrations $(wildcard bench)

.PHONY: run test lint typecheck pytest install bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/integrations migrate
	$(BIN)/integrations serve --with-worker --host $(HOST) --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

typecheck: $(STAMP)
	$(BIN)/mypy app

pytest: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python bench/ingress.py

clean:
	rm -rf $(VENV) data .mypy_cache .ruff_cache .pytest_cache
