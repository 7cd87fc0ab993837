# Precondition Watch: `make run` tries it out, `make test` checks everything on a fresh Debian machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEPS := .deps
export PATH := $(CURDIR)/$(DEPS)/bin:$(CURDIR)/$(BIN):$(PATH)

.PHONY: run test lint typecheck pytest bench bench-ingest bench-settle soak deps venv clean packages dashboards screenshots alerts rules-test stack

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

deps: $(DEPS)/bin/redis-server
$(DEPS)/bin/redis-server: .ci/fetch-binaries
	bash .ci/fetch-binaries $(DEPS)

# chromium and docker-compose, installed with apt-get (see the script).
packages:
	bash .ci/install-packages

run: venv
	$(BIN)/precondition-watch serve

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

pytest: venv deps packages
	$(BIN)/pytest -q

# promtool checks the alert rules and runs their unit tests (alerts/tests/).
rules-test: deps
	promtool check rules alerts/rules.yml
	promtool test rules alerts/tests/*.test.yml

test: lint typecheck rules-test pytest

# Rebuild alerts/rules.yml from alerts/build.py.
alerts: venv
	$(BIN)/python -m alerts.build

# redis-server, the collector, Prometheus with the rules, Alertmanager and the demo, until Ctrl-C.
stack: venv deps
	$(BIN)/python -m tests.stack

# Rebuild dashboards/json/ from dashboards/*.py.
dashboards: venv
	$(BIN)/python -m dashboards.build

# Retake the README's screenshots of the drill-down pages (docs/img/) in headless Chromium.
screenshots: venv deps packages
	PW_SCREENSHOT_DIR=docs/img $(BIN)/pytest -q tests/api/test_ui.py -k chromium

# End to end on a real Redis, classification included, against mtail on the same lines: five
# runs, a profiled one (py-spy) and one on the embedded fakeredis (tests/bench_e2e.py).
bench: venv deps | $(DEPS)/bin/mtail
	$(BIN)/python -m tests.bench_e2e --runs 5 --profile --embedded

# Ingest only: events stored per second (tests/bench_ingest.py).
bench-ingest: venv deps
	$(BIN)/python -m tests.bench_ingest

# Settling alone: a stored stream settled in this process, CPU per failure in Python and Redis.
bench-settle: venv deps
	$(BIN)/python -m tests.bench_settle

# Ten minutes at half the measured rate with ever new resources; every process's RSS every 10 s.
soak: venv deps
	$(BIN)/python -m tests.bench_e2e --soak 600

# A .deps unpacked before mtail was added to .ci/fetch-binaries gets it on the next bench
# (order-only: the symlink's target keeps the Debian package's old mtime).
$(DEPS)/bin/mtail:
	bash .ci/fetch-binaries $(DEPS)

clean:
	rm -rf $(VENV) $(DEPS) .pytest_cache .mypy_cache .ruff_cache
