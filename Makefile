# The README's two commands live here: `make demo` (the main job) and `make test` (everything CI runs).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.s2s-installed

.PHONY: test lint typecheck unit bench system-deps clean

# The Debian packages each command needs (scripts/system-deps installs those that are missing):
# promtool (prometheus) checks deploy/monitoring, etcd-server backs the etcd store tests, the
# bench and the soak; openssl cross-checks certificates in tests; the demo needs only the venv.
DEPS_DEMO := python3-venv
DEPS_UNIT := python3-venv
DEPS_TEST := python3-venv openssl etcd-server prometheus
DEPS_BENCH := python3-venv etcd-server
DEPS_SOAK := python3-venv etcd-server

## test: install what is missing, then lint, type-check, check the import layers, run every test
test: deps-test $(STAMP)
	$(BIN)/ruff check s2s tests bench
	$(BIN)/ruff format --check s2s tests bench
	$(BIN)/mypy s2s
	$(BIN)/lint-imports
	$(BIN)/pytest

## unit: only the fast unit tests (no servers)
unit: deps-unit $(STAMP)
	$(BIN)/pytest tests/unit

## bench: every benchmark, each figure beside its baseline from the same run
bench: deps-bench $(STAMP)
	$(BIN)/python -m bench

## soak: the whole system as real processes for 30 minutes (ARGS="--duration 600"), as root:
##       rotations, revocations, faults; a JSON report and exit 1 on any failed legitimate call
.PHONY: soak
soak: deps-soak $(STAMP)
	$(BIN)/python -m bench.soak $(ARGS)

## demo: a trust domain on this machine: CA, agent and two mTLS workloads with a live log
##       (ARGS="--fast" rotates every ~15 s; Ctrl-C stops everything)
.PHONY: demo
demo: deps-demo $(STAMP)
	$(BIN)/python -m s2s.demo $(ARGS)

## system-deps: every Debian package any command here needs
system-deps:
	@sh scripts/system-deps $(sort $(DEPS_TEST) $(DEPS_BENCH) $(DEPS_SOAK) $(DEPS_DEMO))

.PHONY: deps-test deps-unit deps-bench deps-soak deps-demo
deps-test:
	@sh scripts/system-deps $(DEPS_TEST)
deps-unit:
	@sh scripts/system-deps $(DEPS_UNIT)
deps-bench:
	@sh scripts/system-deps $(DEPS_BENCH)
deps-soak:
	@sh scripts/system-deps $(DEPS_SOAK)
deps-demo:
	@sh scripts/system-deps $(DEPS_DEMO)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,dev]'
	touch $@

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis build *.egg-info
