# Two commands: `make demo` and `make test`. Each sets up .venv once (torch first, pinned),
# then runs. A second run skips the install unless pyproject.toml changed. `make test` also
# unpacks Prometheus's binaries for the observability tests when they are not on PATH.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rayloop-installed
# torch is installed first and pinned: an unpinned torch pulls a multi-GB CUDA build.
# Point TORCH_INDEX_URL at a CPU wheel index on machines without an NVIDIA GPU if needed.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
PYTEST_ARGS ?=
# Installs the `gpu` extra when an NVIDIA GPU is visible.
EXTRAS := dev$(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo ,gpu)

.PHONY: setup demo test test-fast test-tools lint format bench clean-state

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	@touch $(STAMP)
	@echo "rayloop installed in $(VENV) (extras: $(EXTRAS))"

demo: $(STAMP)
	$(VENV)/bin/rayloop demo

# what the tests need besides Python packages (scripts/install-prometheus.sh says what it installs)
test-tools:
	@PROMETHEUS_TOOLS_DIR=$(VENV)/tools/prometheus scripts/install-prometheus.sh

test: $(STAMP) test-tools
	PATH="$(CURDIR)/$(VENV)/tools/prometheus/usr/bin:$$PATH" $(PY) -m pytest $(PYTEST_ARGS)

# Everything but the slow tests: for a quick local loop, never for CI.
test-fast: $(STAMP) test-tools
	PATH="$(CURDIR)/$(VENV)/tools/prometheus/usr/bin:$$PATH" $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# ruff (pinned in the dev extra): lint and formatting, as CI runs them
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)
	@set -e; for script in benchmarks/bench_*.py; do \
		echo "== $$script"; $(PY) $$script; \
	done

clean-state:
	rm -rf .rayloop
