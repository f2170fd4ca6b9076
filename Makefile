# Two commands work on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Label Studio lives in its own env: its dependencies clash with ours.
LS_VENV := .venv-ls
LS_VERSION := 1.23.2
LS_STAMP := $(LS_VENV)/.installed-$(LS_VERSION)
export KEDRO_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export MPLBACKEND := Agg

.PHONY: run test lint viz bench-ingest clean-data label-studio

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

# Re-install only when the project's dependency list changes.
# The install takes about 7 GB (PyTorch's CUDA build); warn first when the disk
# is short, so a failed install says why.
$(STAMP): pyproject.toml | $(BIN)/python
	@free_mb=$$(df -Pm . | awk 'NR == 2 {print $$4}'); \
	if [ "$${free_mb:-0}" -lt 8000 ]; then \
	  echo "warning: $${free_mb} MB free here; installing into $(VENV) needs about 7000 MB" >&2; \
	fi
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(LS_STAMP):
	$(PYTHON) -m venv $(LS_VENV) || python3 -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install --quiet --upgrade pip
	$(LS_VENV)/bin/pip install --quiet 'label-studio==$(LS_VERSION)'
	touch $(LS_STAMP)

label-studio: $(LS_STAMP)  ## Label Studio for the labeling step (see README)

run: $(STAMP)  ## the default pipeline on the built-in synthetic data
	$(BIN)/kedro run

test: $(STAMP) $(LS_STAMP)  ## the whole test suite, slow tests included
	EDGELOOP_LABEL_STUDIO=$(abspath $(LS_VENV))/bin/label-studio $(BIN)/pytest -q --durations=15

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

viz: $(STAMP)
	$(BIN)/kedro viz run

bench-ingest: $(STAMP)
	$(BIN)/python benchmarks/ingest.py
