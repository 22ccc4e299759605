# Quickstart: `make train` (train the MNIST DDPM, write samples) and `make test`.
# Each installs what it needs into .venv first (CPU torch; see docs/training.md for GPUs).
# Data: $HF_DDPM_DATA_DIR when set (a folder holding mnist/ in the Hub's parquet layout), else the Hub
# dataset ylecun/mnist, else (offline) the MNIST sample bundled with the package.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= training/configs/mnist.yaml
ARGS ?=

.PHONY: install train test lint fix-copies

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

# One process on every core; Ctrl-C stops after the current step with a checkpoint (docs/training.md).
train: install
	$(BIN)/python training/train.py --config $(CONFIG) $(ARGS)

# One pytest worker per core (pytest-xdist), each test file on one worker so its fixtures are built once.
test: install
	$(BIN)/pytest -q -n auto --dist loadfile

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# The code the pipeline files repeat on purpose (`# Copied from` markers, docs/development.md): rewrite
# each copy from its original, then the pipeline files the reference checkpoints carry, which must equal
# pipelines/ byte for byte. Standard library only: no install needed.
fix-copies:
	$(PYTHON) utils/check_copies.py --fix
	for copy in checkpoints/*/class_conditional_ddpm.py checkpoints/*/latent_ddpm.py; do \
		cp pipelines/$$(basename $$copy) $$copy; \
	done
