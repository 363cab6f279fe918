# Two commands: `make demo` and `make test`. Each sets up .venv once (torch first, pinned),
# then runs. A second run skips the install unless pyproject.toml changed.
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

.PHONY: setup demo test test-fast bench clean-state

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

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# Everything but the slow tests: for a quick local loop, never for CI.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	@set -e; for script in benchmarks/bench_*.py; do \
		echo "== $$script"; $(PY) $$script; \
	done

clean-state:
	rm -rf .rayloop
