# Two commands on a fresh machine: `make demo` (install + embedded demo) and `make test` (install + tests).
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin

.PHONY: install demo test bench
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	# The CPU build of torch; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

demo: install
	$(BIN)/hoi-factory demo

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python -m benchmarks
