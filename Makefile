# Developer entry points. Needs only Python 3.11+ and make: everything else goes into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# The suite mostly waits (provider latency, workers, servers): two processes halve its
# time on two cores; each starts its own Redis, PostgreSQL, provider and worker.
TEST_PROCESSES ?= 2

.DEFAULT_GOAL := help
.PHONY: help setup run test lint audit bench clean distclean

help: ## list the targets
	@echo "usage: make <target>   (PYTHON=$(PYTHON), PYTEST_ARGS='-k ...' for test)"
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# Rebuilt whenever pyproject.toml changes, so new dependencies arrive without thinking.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { \
		echo "error: '$(PYTHON)' not found; install Python 3.11+ or run make PYTHON=/path/to/python3.11" >&2; \
		exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else \
		"error: Python >= 3.11 is required but $(PYTHON) is " + sys.version.split()[0] + \
		"; run make PYTHON=python3.11 <target>")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	@touch $@

setup: $(STAMP) ## create .venv and install the project with dev tools

run: $(STAMP) ## the whole stack (Redis, provider, API, worker, beat, Flower) in the foreground
	$(BIN)/python -m ops.stack

test: $(STAMP) ## the test suite (real Redis, PostgreSQL 15, Celery); PYTEST_ARGS=... to filter
	$(BIN)/python -m pytest -n $(TEST_PROCESSES) $(PYTEST_ARGS)

lint: $(STAMP) ## ruff check, ruff format --check, mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

audit: $(STAMP) ## check the credit ledger's invariants against DATABASE_URL
	$(BIN)/python -m ops audit

bench: $(STAMP) ## the benchmarks (bench/README.md); BENCH_ARGS=--quick for a smoke run
	$(BIN)/python -m bench.e2e_throughput $(BENCH_ARGS)
	$(BIN)/python -m bench.e2e_throughput --db postgresql $(BENCH_ARGS)
	$(BIN)/python -m bench.ledger $(BENCH_ARGS)
	$(BIN)/python -m bench.sqlite_floor $(BENCH_ARGS)
	$(BIN)/python -m bench.budgets $(BENCH_ARGS)
	$(BIN)/python -m bench.slow_clients $(BENCH_ARGS)
	$(BIN)/python -m bench.usage $(BENCH_ARGS)
	$(BIN)/python -m bench.keyword_library $(BENCH_ARGS)
	$(BIN)/python -m bench.inflight $(BENCH_ARGS)
	$(BIN)/python -m bench.inflight --db postgresql $(BENCH_ARGS)
	$(BIN)/python -m bench.inflight --mode hold $(BENCH_ARGS)
	$(BIN)/python -m bench.admission $(BENCH_ARGS)
	$(BIN)/python -m bench.admission_cpu $(BENCH_ARGS)
	$(BIN)/python -m bench.audit $(BENCH_ARGS)

clean: ## remove caches, build output and var/ (the dev database); keeps .venv
	rm -rf var build dist *.egg-info .pytest_cache .ruff_cache .mypy_cache .hypothesis
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean ## clean, and remove .venv too
	rm -rf $(VENV)
