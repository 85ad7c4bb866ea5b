# The two commands of the README:
#   make run   - set up, then run tillwatch's main job on the embedded defaults
#   make test  - set up (system services included), then run the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup system-deps run test bench lint

$(BIN)/tillwatch: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "tillwatch needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(BIN)/tillwatch

system-deps:
	scripts/install-system-deps.sh

run: setup
	$(BIN)/tillwatch demo

test: system-deps setup
	$(BIN)/pytest

bench: setup
	$(BIN)/python bench/spine.py

lint: setup
	$(BIN)/ruff check .
