# hexbook: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.hexbook-installed
PKGS   := engine actors gateway simulators loadtests

.PHONY: help install test lint types unit bench demo clean

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "hexbook needs Python 3.11+ (set PYTHON=python3.11)"'
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install hexbook with its dev extras

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(STAMP) ## mypy (strict) on the packages
	$(BIN)/mypy

unit: $(STAMP) ## the tests only
	$(BIN)/pytest

test: lint types unit ## lint, types and the whole test suite (what CI runs)

bench: $(STAMP) ## benchmarks: print figures and ratios measured in one run
	$(BIN)/python tests/bench/run.py

demo: $(STAMP) ## start hexbook with a demo city (Ctrl-C stops it; ./data keeps bookings)
	$(BIN)/hexbook up --demo

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
