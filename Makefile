# The README's two commands live here: `make demo` (the main job) and `make test` (everything CI runs).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.s2s-installed

.PHONY: test lint typecheck unit bench system-deps clean

## test: install what is missing, then lint, type-check, check the import layers, run every test
test: system-deps $(STAMP)
	$(BIN)/ruff check s2s tests bench
	$(BIN)/ruff format --check s2s tests bench
	$(BIN)/mypy s2s
	$(BIN)/lint-imports
	$(BIN)/pytest

## unit: only the fast unit tests (no servers)
unit: $(STAMP)
	$(BIN)/pytest tests/unit

## bench: every benchmark, each figure beside its baseline from the same run
bench: system-deps $(STAMP)
	$(BIN)/python -m bench

## soak: the whole system as real processes for 30 minutes (ARGS="--duration 600"), as root:
##       rotations, revocations, faults; a JSON report and exit 1 on any failed legitimate call
.PHONY: soak
soak: system-deps $(STAMP)
	$(BIN)/python -m bench.soak $(ARGS)

## demo: a trust domain on this machine: CA, agent and two mTLS workloads with a live log
##       (ARGS="--fast" rotates every ~15 s; Ctrl-C stops everything)
.PHONY: demo
demo: system-deps $(STAMP)
	$(BIN)/python -m s2s.demo $(ARGS)

system-deps:
	@sh scripts/system-deps

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,dev]'
	touch $@

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis build *.egg-info
