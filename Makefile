# The README's two first commands: `make demo` and `make test`. Both work from a clean clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint format bench services clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

services:
	bash scripts/services.sh

demo: $(STAMP)
	$(BIN)/crmmaint demo

test: $(STAMP) services
	$(BIN)/ruff check crmmaint tests tasks.py bench
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP) services
	$(BIN)/python bench/fanout.py
	$(BIN)/python bench/backup.py

clean:
	rm -rf $(VENV) build dist *.egg-info .demo
