# The README's two first commands: `make demo` and `make test`. Both work from a clean clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Test processes: each takes whole test files (their module fixtures, servers' objects named
# per estate), so the suite's waits on servers and subprocesses overlap.
TEST_JOBS ?= 2

.PHONY: demo test lint format bench services clean mutation

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
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP) services
	$(BIN)/python bench/fanout.py
	$(BIN)/python bench/backup.py
	$(BIN)/python bench/drill.py
	$(BIN)/python bench/maintenance.py

# Mutation check of the repository, crypto and lock code (not in CI: it takes long); the
# survivors are what no test notices. Configuration: [mutmut] in setup.cfg.
mutation: $(STAMP) services
	$(BIN)/python -m pip install -q -e '.[test,mutation]'
	$(BIN)/mutmut run --max-children 2 || true
	$(BIN)/mutmut results

clean:
	rm -rf $(VENV) build dist *.egg-info .demo
