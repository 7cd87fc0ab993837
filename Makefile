# Precondition Watch: `make run` tries it out, `make test` checks everything on a fresh Debian machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEPS := .deps
export PATH := $(CURDIR)/$(DEPS)/bin:$(CURDIR)/$(BIN):$(PATH)

.PHONY: run test lint typecheck pytest bench deps venv clean

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

deps: $(DEPS)/bin/redis-server
$(DEPS)/bin/redis-server: .ci/fetch-binaries
	bash .ci/fetch-binaries $(DEPS)

run: venv
	$(BIN)/precondition-watch serve

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

pytest: venv deps
	$(BIN)/pytest -q

test: lint typecheck pytest

bench: venv deps
	$(BIN)/python -m tests.bench_ingest

clean:
	rm -rf $(VENV) $(DEPS) .pytest_cache .mypy_cache .ruff_cache
