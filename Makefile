# Quickstart: `make train` (train the MNIST DDPM, write samples) and `make test`.
# Each installs what it needs into .venv first (CPU torch; see README for GPUs).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Local copies of the data sets (offline machines); unset it to download from the Hub instead.
export HF_DDPM_DATA_DIR ?= $(abspath ../shared/data)
CONFIG ?= training/configs/mnist.yaml
ARGS ?=

.PHONY: install train test lint

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

train: install
	$(BIN)/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		--num_cpu_threads_per_process $(shell nproc) training/train.py --config $(CONFIG) $(ARGS)

test: install
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
