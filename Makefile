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

.PHONY: run test test-all ui setup clean seeds plateau bench bench-sft dvc-yaml

run: $(STAMP)  ## run the default pipeline (Prefect flow over the DVC stages, tracked in MLflow)
	$(BIN)/silkfire run $(ARGS)

test: $(STAMP)  ## the default test suite (slow tests excluded)
	$(BIN)/pytest $(ARGS)

test-all: $(STAMP)  ## every test, slow ones included
	$(BIN)/pytest -m "" $(ARGS)

# Whole-pipeline seeds (issue 14): the foundation and both branches at SEEDS, then the results tables with CIs into
# results/seeds and the README's results block, merged with the foundation-only seeds of `make plateau` (run it first:
# the report's plateau rate and foundation figures then cover PLATEAU_SEEDS; a seed in both sweeps counts once, from
# its newest run; `make seeds PLATEAU_SWEEP=` reports the whole-pipeline seeds alone). The report refuses a sweep
# with no runs, so the first line catches a missing plateau sweep before the hours of training. ~40 min per whole
# seed on 2 cores (SFT 2000 steps ~14 min, DPO ~7, the FIRE models ~10). Every seed re-trains its foundation: the
# SFT output is `persist` (for resume), and DVC keeps no run cache for such stages.
SEEDS       ?= 0,1,2
SEEDS_SWEEP ?= seeds-2000
seeds: $(STAMP)  ## whole-pipeline seeds + `silkfire report` (mean +- 95% CI, paired bootstrap differences)
	$(if $(PLATEAU_SWEEP),$(BIN)/silkfire report --sweep $(PLATEAU_SWEEP) --out $(shell mktemp -d) >/dev/null)
	$(BIN)/silkfire sweep seed=$(SEEDS) 'pipeline.branches=[silkie,fire]' --mode flow \
		--metric evaluate.val.mme.sft.perception --name $(SEEDS_SWEEP)
	$(BIN)/silkfire report --sweep $(SEEDS_SWEEP) $(if $(PLATEAU_SWEEP),--sweep $(PLATEAU_SWEEP)) --out results/seeds \
		--readme README.md

# Does SFT leave the constant-answer plateau on every seed at the default budget (issue 14)? The foundation alone at
# PLATEAU_SEEDS, then its report into results/foundation and the README's `foundation` block. ~17 min per seed.
PLATEAU_SEEDS ?= 0,1,2,3,4
PLATEAU_SWEEP ?= foundation-2000
plateau: $(STAMP)  ## the foundation at 5 seeds + `silkfire report` (plateau escape rate, MME-style spread)
	$(BIN)/silkfire sweep seed=$(PLATEAU_SEEDS) --mode flow --metric evaluate.val.mme.sft.perception \
		--name $(PLATEAU_SWEEP)
	$(BIN)/silkfire report --sweep $(PLATEAU_SWEEP) --out results/foundation --readme README.md --block foundation

# After changing a stage's declaration (PARAMS, DEPS, OUTS, CURVE_NAMES in src/silkfire/stages/<name>.py) or its
# imports: the dvc.yaml files are generated from the stage registry (a test fails while they differ).
dvc-yaml: $(STAMP)  ## regenerate dvc.yaml and pipelines/*/dvc.yaml from the stage registry
	$(BIN)/python -m silkfire.stages.dvc_yaml --write

ui: $(STAMP)  ## MLflow UI on the project's store: http://127.0.0.1:5000
	$(BIN)/silkfire ui

# Our DPO trainer vs TRL 1.16's DPOTrainer (issue 16): the bench extra (trl, datasets) on top of the setup, then
# benchmarks/dpo_vs_trl.py with its defaults (5 interleaved rounds, ~7-8 min on 2 cores; run it on a quiet machine:
# a round that starts at a 1-minute load above 1.5 is refused). Table on stdout, raw JSON in benchmarks/results/.
BENCH_STAMP := $(VENV)/.installed-bench
bench: $(BENCH_STAMP)  ## DPO vs TRL benchmark (BENCH_ARGS: e.g. --rounds 7); writes benchmarks/results/dpo_vs_trl-*.json
	$(BIN)/python benchmarks/dpo_vs_trl.py $(BENCH_ARGS)

# Our SFT vs TRL's SFTTrainer vs a plain torch loop, same protocol (~3 min on 2 cores).
bench-sft: $(BENCH_STAMP)  ## SFT vs TRL benchmark; writes benchmarks/results/sft_vs_trl-*.json
	$(BIN)/python benchmarks/sft_vs_trl.py $(BENCH_ARGS)

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(VENV)/bin/pip install --quiet -e '.[dev,bench]'
	$(VENV)/bin/pip check
	touch $(BENCH_STAMP)

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
