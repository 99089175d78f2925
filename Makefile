# Two commands on a fresh machine: `make dev` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Exact versions with their hashes (`make lock` writes both): the runtime, local-stack and dev
# dependencies here, the runtime ones alone for the Docker image.
LOCK := requirements-dev.lock
RUNTIME_LOCK := requirements.lock
# PyPI only and no uv config, so the hashes are PyPI's whatever a machine's config adds.
LOCK_FLAGS := --no-config --generate-hashes --python-version 3.11 \
	--index-url https://pypi.org/simple --custom-compile-command "make lock"

.PHONY: dev test test-busy test-fast lint bench lock browser

# The locked versions (every file checked against its hash), then Durapay itself on top.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# After changing pyproject.toml's dependencies: resolve again, keeping every pin that still
# fits. `make lock LOCK_ARGS=--upgrade` moves everything to its newest version. The runtime
# lock is resolved within the dev one, so both pin the same versions.
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra local $(LOCK_FLAGS) $(LOCK_ARGS) -o $(LOCK)
	$(BIN)/uv pip compile pyproject.toml $(LOCK_FLAGS) $(LOCK_ARGS) -c $(LOCK) \
		-o $(RUNTIME_LOCK)

dev: $(STAMP)
	$(BIN)/durapay dev

# The Web UI test drives Debian's chromium with Playwright, which downloads no browser:
# installed here once (with sudo unless root), a no-op when it is present. It says so first,
# since sudo may ask for a password.
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
browser:
	@test -x $(CHROMIUM) || { \
		echo "make browser: installing chromium ($(strip $(SUDO) apt-get install chromium)) for tests/integration/test_web_ui.py, which drives the Temporal Web UI"; \
		$(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y --no-install-recommends chromium; }

# Lint and type check (what `make lint` runs), then the whole suite: unit, workflow
# (time-skipping server) and integration (the real stack). CI runs this (.ci/run).
test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -ra

# The whole suite with two CPU-burning processes beside it (tests/busy_machine.py): a test that
# passes only on an idle machine leans on a wall-clock margin that load can eat.
test-busy: $(STAMP) browser
	$(BIN)/python -m tests.busy_machine -- $(MAKE) test

# Unit, workflow (time-skipping server) and tests/api; the tests that start processes of their
# own run in `make test` only. Three processes: most of the time is waiting (holds, timeouts,
# servers), so they overlap on two cores; every tests/api test in one of them (one session
# Postgres and Temporal server, see tests/conftest.py).
TEST_FAST_WORKERS ?= 3
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_FAST_WORKERS) --dist loadgroup \
		-m "not integration and not slow and not processes"

# Throughput, latency, CPU and database statements per operation of the real stack, as ratios
# against baselines of the same run, and a burst at 3x capacity on a fresh stack; then how often
# one busy merchant makes Postgres backends wait on a lock (bench/lock_waits.py), unless
# BENCH_ARGS asks for one step only (--write-path-only, --burst-only).
bench: $(STAMP)
	$(BIN)/python -m bench.charges $(BENCH_ARGS)
	$(if $(findstring -only,$(BENCH_ARGS)),,$(BIN)/python -m bench.lock_waits)

# Ruff's lint and its format check (`ruff format .` fixes the format), then mypy over every
# first-party folder ([tool.mypy] in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
