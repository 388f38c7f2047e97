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

# Two sessions: everything but the exclusive group on TEST_WORKERS processes
# (pytest-xdist), then the exclusive group (load, replicas, faults, Redis Cluster,
# PgBouncer) alone, so nothing runs beside it. Each session runs its own secret-leak
# check. `make pytest` keeps a fixed order, so a failure reproduces with the same
# command (TEST_WORKERS=0 runs the first session in one process). PYTEST_ARGS may
# name tests: a session left with none to run (pytest's status 5) is not a failure.
TEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(TEST_WORKERS)),-p no:xdist,-n $(TEST_WORKERS))
NONE_SELECTED_IS_FINE := || [ $$? -eq 5 ]

pytest: $(STAMP)
	$(BIN)/python -m pytest -p no:randomly $(XDIST) -m "not exclusive" $(PYTEST_ARGS) $(NONE_SELECTED_IS_FINE)
	$(BIN)/python -m pytest -p no:randomly -p no:xdist -m exclusive $(PYTEST_ARGS) $(NONE_SELECTED_IS_FINE)

pytest-random: $(STAMP)
	$(BIN)/python -m pytest -p randomly $(XDIST) -m "not exclusive" $(PYTEST_ARGS) $(NONE_SELECTED_IS_FINE)
	$(BIN)/python -m pytest -p randomly -p no:xdist -m exclusive $(PYTEST_ARGS) $(NONE_SELECTED_IS_FINE)

test: lint typecheck pytest

test-random: lint typecheck pytest-random

bench: $(STAMP)
	$(BIN)/python bench/ingress.py

clean:
	rm -rf $(VENV) data .mypy_cache .ruff_cache .pytest_cache
