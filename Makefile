# Two commands on a fresh machine: `make dev` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test test-fast lint bench clean-state

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

dev: $(STAMP)
	$(BIN)/durapay dev

# The whole suite: unit, workflow (time-skipping server) and integration (the real stack).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -ra

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration and not slow"

# Throughput and latency of the real stack, as ratios against baselines of the same run.
bench: $(STAMP)
	$(BIN)/python -m bench.charges $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
