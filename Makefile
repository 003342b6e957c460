# One word per habit: make run, make test, make lint, make bench, make mutate.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test test-floor lint bench bench-limits mutate docs clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10) and "Python 3.10+ is needed: set PYTHON=python3.x")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $@

run: install  ## serve the example app on 127.0.0.1:8000 (embedded PostgreSQL unless DATABASE_URL is set)
	$(BIN)/python -m example_app

test: install  ## everything CI runs
	$(BIN)/python -m pytest

FLOOR := .venv-floor
test-floor:  ## unit and integration tests on the lowest versions pyproject.toml allows
	$(PYTHON) -m venv $(FLOOR)
	$(FLOOR)/bin/python -m pip install --quiet --disable-pip-version-check uv
	$(FLOOR)/bin/uv pip install --quiet --python $(FLOOR)/bin/python --resolution lowest-direct -e ".[dev]"
	$(FLOOR)/bin/python -m pytest -q tests/unit tests/integration -p no:cacheprovider

lint: install  ## ruff + mypy --strict
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(VENV)/.bench-installed  ## the benchmark harness (never part of make test), ~30 min
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		apt-get install -y -qq wrk >/dev/null; } || { echo "make bench needs wrk: apt-get install wrk"; exit 1; }
	$(BIN)/python -m bench $(BENCH_ARGS)
	$(BIN)/python -m bench.limits $(LIMITS_ARGS)

bench-limits: $(VENV)/.bench-installed  ## only CPU/request, network, round trips, our frames (~20 min)
	@command -v wrk >/dev/null || { echo "needs wrk: apt-get install wrk"; exit 1; }
	$(BIN)/python -m bench.limits $(LIMITS_ARGS)

$(VENV)/.bench-installed: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev,bench]"
	@touch $@

mutate: install  ## hand-made mutants of the core against the request-path tests (never part of make test), ~40 min
	$(BIN)/python -m tests.mutation.mutate $(MUTATE_ARGS)

docs: install  ## regenerate the settings tables in README.md and docs/configuration.md
	$(BIN)/python -m fastapi_dbpool._docs --write README.md docs/configuration.md

clean:
	rm -rf $(VENV) $(FLOOR) .mypy_cache .ruff_cache .pytest_cache *.egg-info
