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
.PHONY: help install lock demo docs-images docs-test test test-all test-gpu lint bench fit slurm sweep agent torchrun clean

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

LOCK := requirements/lock.txt
PARITY_LOCK := requirements/parity.txt
UV_COMPILE = $(VENV)/bin/uv pip compile --python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes --no-header

# Install exactly the committed lock (hashes checked, no resolver: what the registry serves
# today cannot change the environment), then clapkit itself without dependencies.
$(STAMP): pyproject.toml $(LOCK) $(PARITY_LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --no-deps --require-hashes -r $(LOCK)
	# Reference packages for parity tests, --no-deps: their pins (numpy<2, wget) are unnecessary.
	$(PIP) install -q --no-deps --require-hashes -r $(PARITY_LOCK)
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PY) -m clapkit --version
	touch $(STAMP)

lock: ## Regenerate requirements/lock.txt and parity.txt from pyproject.toml (docs/INSTALL.md)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -x $(VENV)/bin/uv || $(PIP) install -q uv==0.13.9
	$(UV_COMPILE) pyproject.toml --extra dev -o $(LOCK)
	$(UV_COMPILE) requirements/parity.in --no-deps -o $(PARITY_LOCK)

install: $(STAMP) ## Create .venv and install clapkit with dev and parity extras

demo: install ## Train a small CLAP on the synthetic corpus (CPU, offline) and print the evaluation table
	$(PY) -m clapkit demo --config configs/quickstart/clap.yaml

docs-images: install ## Rerun the CLAP and CLAPSep demos and refresh the pictures under docs/images/
	$(PY) -m clapkit demo clap --output-dir outputs/docs_images/clap --pictures docs/images/clap
	$(PY) -m clapkit demo clapsep --output-dir outputs/docs_images/clapsep --pictures docs/images/clapsep

test: install ## Run the test suite (excludes slow and gpu tests)
	$(PY) -m pytest -q $(PYTEST_ARGS)

docs-test: install ## Run every command and snippet of README.md and docs/*.md, slow (training) blocks included
	$(PY) -m pytest -q -m "not gpu" tests/test_docs.py $(PYTEST_ARGS)

test-all: install ## Run every test, slow ones included
	$(PY) -m pytest -q -m "not gpu" $(PYTEST_ARGS)

test-gpu: install ## Run the GPU tests (on a machine with CUDA)
	$(PY) -m pytest -q -m gpu $(PYTEST_ARGS)

lint: install ## Lint with ruff
	$(PY) -m ruff check src tests benchmarks

bench: install ## Run the CPU benchmarks (GPU ones run with DEVICE=cuda)
	$(PY) benchmarks/frontend.py
	$(PY) benchmarks/dataloader.py

fit: install ## Train with CONFIG on this machine: make fit CONFIG=configs/clap/htsat_roberta.yaml
	$(VENV)/bin/clapkit fit --config $(CONFIG) $(ARGS)

clean: ## Remove build outputs (keeps .venv)
	rm -rf build dist src/*.egg-info .pytest_cache lightning_logs outputs

# --- cluster recipes: make slurm | sweep | agent | torchrun ----------------------------------
# Every recipe accepts DRY_RUN=1 to print what it would submit or run instead of doing it.
JOB_NAME ?= clapkit-$(basename $(notdir $(CONFIG)))
OVERLAYS ?=
CKPT_EVERY ?= 1000
CPUS_PER_TASK ?= 8
RUN_ROOT ?= runs
LOG_DIR ?= logs/slurm
SBATCH ?= sbatch
WANDB_PROJECT ?= clapkit
SWEEP_ID ?=
AGENTS ?=
COUNT ?=
NODE_RANK ?= 0
MASTER_ADDR ?= 127.0.0.1
DRY_RUN ?=
# {{NAME}} in a template -> $SB_NAME (awk reads values from the environment, so any characters are safe)
RENDER_SBATCH = awk '{ while (match($$0, /[{][{][A-Z_]+[}][}]/)) { key = substr($$0, RSTART + 2, RLENGTH - 4); $$0 = substr($$0, 1, RSTART - 1) ENVIRON["SB_" key] substr($$0, RSTART + RLENGTH) } print }'
SB_COMMON = SB_JOB_NAME='$(JOB_NAME)' SB_PARTITION='$(PARTITION)' SB_TIME='$(TIME)' SB_CPUS_PER_TASK='$(CPUS_PER_TASK)' \
	SB_LOG_DIR='$(abspath $(LOG_DIR))' SB_WORKDIR='$(CURDIR)'

slurm: ## Submit multi-node DDP training: make slurm CONFIG=... NODES=4 GPUS=8 PARTITION=gpu TIME=48:00:00 [OVERLAYS=...] [DRY_RUN=1]
	@script="$$($(SB_COMMON) SB_NODES='$(NODES)' SB_GPUS='$(GPUS)' SB_CONFIG='$(CONFIG)' \
		SB_OVERLAYS='$(foreach o,$(OVERLAYS),--config $(o))' SB_RUN_ROOT='$(abspath $(RUN_ROOT))' \
		SB_CKPT_EVERY='$(CKPT_EVERY)' SB_CLAPKIT='$(abspath $(VENV))/bin/clapkit' SB_ARGS='$(ARGS)' \
		$(RENDER_SBATCH) scripts/slurm/train.sbatch)"; \
	if [ -n "$(DRY_RUN)" ]; then printf '%s\n' "$$script"; \
	else mkdir -p '$(LOG_DIR)' && printf '%s\n' "$$script" | $(SBATCH); fi

sweep: ## Create a W&B sweep from SWEEP (needs network): make sweep SWEEP=configs/sweeps/clap_lr.yaml
	@cmd="WANDB_MODE=online $(VENV)/bin/wandb sweep --project $(WANDB_PROJECT) $(SWEEP)"; \
	if [ -n "$(DRY_RUN)" ]; then echo "$$cmd"; else eval "$$cmd"; fi

agent: ## Run a sweep agent here, or AGENTS=n of them as a SLURM array: make agent SWEEP_ID=entity/project/id [COUNT=10] [AGENTS=8]
	@test -n "$(SWEEP_ID)" || { echo "make agent: set SWEEP_ID=entity/project/sweep_id (printed by make sweep)" >&2; exit 2; }
	@if [ -n "$(AGENTS)" ]; then \
		script="$$($(SB_COMMON) SB_AGENTS='$(AGENTS)' SB_SWEEP_ID='$(SWEEP_ID)' SB_VENV_BIN='$(abspath $(VENV))/bin' \
			SB_AGENT_COUNT_FLAG='$(if $(COUNT),--count $(COUNT))' $(RENDER_SBATCH) scripts/slurm/sweep_agent.sbatch)"; \
		if [ -n "$(DRY_RUN)" ]; then printf '%s\n' "$$script"; \
		else mkdir -p '$(LOG_DIR)' && printf '%s\n' "$$script" | $(SBATCH); fi; \
	else \
		cmd="PATH=$(abspath $(VENV))/bin:\$$PATH WANDB_MODE=online wandb agent $(if $(COUNT),--count $(COUNT)) $(SWEEP_ID)"; \
		if [ -n "$(DRY_RUN)" ]; then echo "$$cmd"; else eval "$$cmd"; fi; \
	fi

# GPUS defaults to 8 for slurm; torchrun counts the GPUs itself unless GPUS or NPROC is given.
TORCHRUN_PROCS = $(or $(NPROC),$(if $(filter command line environment,$(origin GPUS)),$(GPUS)))

torchrun: ## DDP without SLURM, CPU or GPU from the machine: make torchrun CONFIG=... [NPROC=2] [NODES=2 NODE_RANK=0 MASTER_ADDR=host]
	@NODES='$(NODES)' NODE_RANK='$(NODE_RANK)' MASTER_ADDR='$(MASTER_ADDR)' NPROC='$(TORCHRUN_PROCS)' \
		ACCELERATOR='$(ACCELERATOR)' RUN_DIR='$(RUN_DIR)' VENV='$(VENV)' \
		CKPT_EVERY='$(CKPT_EVERY)' DRY_RUN='$(DRY_RUN)' scripts/torchrun.sh $(CONFIG) $(foreach o,$(OVERLAYS),--config $(o)) $(ARGS)
