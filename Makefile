# clapkit: `make help` lists the targets. Two commands do everything on a fresh machine:
#   make demo   installs (if needed) and trains + evaluates a small CLAP offline on CPU
#   make test   installs (if needed) and runs the test suite
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
CONFIG ?= configs/quickstart/clap.yaml
NODES ?= 1
GPUS ?= 8
PARTITION ?= gpu
TIME ?= 48:00:00
SWEEP ?= configs/sweeps/clap_lr.yaml
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM := false

.DEFAULT_GOAL := help
.PHONY: help install demo test test-all lint bench fit slurm sweep agent torchrun clean

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	# Reference packages for parity tests: their pins (numpy<2, wget) are unnecessary.
	$(PIP) install -q --no-deps laion-clap==1.1.7 torchlibrosa==0.1.0 msclap
	$(PIP) install -q braceexpand ftfy h5py scikit-learn
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install clapkit with dev and parity extras

demo: install ## Train a small CLAP on the synthetic corpus (CPU, offline) and print the evaluation table
	$(PY) -m clapkit demo --config configs/quickstart/clap.yaml

test: install ## Run the test suite (excludes slow and gpu tests)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-all: install ## Run every test, slow ones included
	$(PY) -m pytest -q -m "not gpu" $(PYTEST_ARGS)

lint: install ## Lint with ruff
	$(PY) -m ruff check src tests benchmarks

bench: install ## Run the CPU benchmarks (GPU ones run with DEVICE=cuda)
	$(PY) benchmarks/frontend.py
	$(PY) benchmarks/dataloader.py

fit: install ## Train with CONFIG on this machine: make fit CONFIG=configs/clap/htsat_roberta.yaml
	$(VENV)/bin/clapkit fit --config $(CONFIG) $(ARGS)

clean: ## Remove build outputs (keeps .venv)
	rm -rf build dist src/*.egg-info .pytest_cache lightning_logs outputs
