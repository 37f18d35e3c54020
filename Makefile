# Silkfire: `make run` sets up the environment if missing and runs the pipeline on the embedded shapes world;
# `make test` sets it up and runs the tests. Everything else is in README.md.
PYTHON ?= python3
VENV   := .venv
BIN    := $(abspath $(VENV))/bin
STAMP  := $(VENV)/.installed

# Stage commands run by DVC find `silkfire` on PATH; tools stay offline and quiet.
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: run test test-all ui setup clean

run: $(STAMP)  ## run the default pipeline (Prefect flow over the DVC stages, tracked in MLflow)
	$(BIN)/silkfire run $(ARGS)

test: $(STAMP)  ## the default test suite (slow tests excluded)
	$(BIN)/pytest $(ARGS)

test-all: $(STAMP)  ## every test, slow ones included
	$(BIN)/pytest -m "" $(ARGS)

ui: $(STAMP)  ## MLflow UI on the project's store: http://127.0.0.1:5000
	$(BIN)/silkfire ui

setup: $(STAMP)

# torch first, pinned: its CPU wheel lies on these machines; an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	$(VENV)/bin/pip check
	touch $(STAMP)

clean:  ## remove pipeline outputs (data, models, reports, metrics); keeps the MLflow store and DVC cache
	rm -rf data models reports metrics
