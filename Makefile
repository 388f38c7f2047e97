# Two commands on a fresh machine:
#   make run    - the service on its embedded default (SQLite file, in-process limiter),
#                 the API and the worker in one process
#   make test   - lint, type-check and the whole test suite (needs PostgreSQL and Redis)
# make test-random runs the suite in a shuffled order (pytest-randomly prints the
# seed; PYTEST_ARGS=--randomly-seed=N replays one).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
# Lint what exists: bench/ may be absent in a partial checkout.
LINT_PATHS := app tests migrations $(wildcard bench)

.PHONY: run test test-random lint typecheck pytest pytest-random install bench clean

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

# A fixed order, so a failure reproduces with the same command.
pytest: $(STAMP)
	$(BIN)/python -m pytest -p no:randomly $(PYTEST_ARGS)

pytest-random: $(STAMP)
	$(BIN)/python -m pytest -p randomly $(PYTEST_ARGS)

test: lint typecheck pytest

test-random: lint typecheck pytest-random

bench: $(STAMP)
	$(BIN)/python bench/ingress.py

clean:
	rm -rf $(VENV) data .mypy_cache .ruff_cache .pytest_cache
