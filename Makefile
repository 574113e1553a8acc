# samam — every target is one line; `make help` lists them.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# One intra-op thread: on a loaded 2-core box, 2 threads made the scan loop 50x slower.
THREADS ?= OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
.DEFAULT_GOAL := help
.PHONY: help install demo test test-gpu gpu-check lint format bench bench-scan clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements-cpu.txt
	$(PY) -m venv $(VENV) && $(BIN)/pip install -q --upgrade pip && $(BIN)/pip install -q -r requirements-cpu.txt && $(BIN)/pip install -q -e '.[cpu,train,dev]' && touch $@

install: $(STAMP) ## create or reuse .venv with everything the CPU path needs

demo: $(STAMP) ## train the demo experiment on CPU (a few minutes), print the checkpoint and sample grid
	$(THREADS) WANDB_MODE=offline $(BIN)/python train.py experiment=demo

test: $(STAMP) ## run the whole CPU test suite (offline, minutes)
	$(THREADS) $(BIN)/python -m pytest -q tests

# GPU targets run the active (conda) environment's python, where mamba-ssm is built: GPU_PY=... to choose.
GPU_PY  ?= python
test-gpu: ## run only the GPU-marked tests in the active env (needs CUDA; mamba-ssm for the kernel tests)
	$(GPU_PY) -m pytest -q -m gpu tests

gpu-check: ## on a CUDA machine, active env: GPU tests + CUDA benchmark (eager, CUDA graphs, StyTr², 8192²)
	PY=$(GPU_PY) bash experiments/gpu_check.sh

lint: $(STAMP) ## ruff lint + format check
	$(BIN)/ruff check src tests experiments *.py && $(BIN)/ruff format --check src tests experiments *.py

format: $(STAMP) ## ruff autoformat
	$(BIN)/ruff format src tests experiments *.py && $(BIN)/ruff check --fix src tests experiments *.py

bench: $(STAMP) ## full-network benchmark (see experiments/benchmark.py --help)
	$(THREADS) $(BIN)/python experiments/benchmark.py

bench-scan: $(STAMP) ## selective-scan kernel benchmark (numba vs pure-torch scan, CPU)
	$(THREADS) $(BIN)/python experiments/bench_scan.py

clean: ## delete caches, outputs/ and multirun/ (every trained checkpoint!) and data/demo; keeps .venv
	rm -rf outputs multirun .pytest_cache .ruff_cache data/demo
