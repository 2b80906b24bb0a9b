# Baton: `make test` is the one command CI runs; `make demo` shows a supervisor at work.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
WASM_TOOLS := /usr/bin/clang /usr/bin/wasm-ld /usr/include/wasm32-wasi/stdlib.h /usr/lib/llvm-14/lib/clang/14.0.6/lib/wasi/libclang_rt.builtins-wasm32.a
PYTEST_ARGS ?=

.PHONY: all install toolchain modules lint test test-fast test-system soak demo bench clean

all: test

# Debian's clang/lld/wasi-libc build the C example modules (see modules/README.md);
# systemd-analyze (package systemd) checks the unit files in tests/test_systemd_units.py.
toolchain:
	@missing=0; for f in $(WASM_TOOLS); do [ -e $$f ] || missing=1; done; \
	if [ $$missing = 1 ]; then \
	  echo "installing the wasm32-wasi C toolchain (clang, lld, wasi-libc)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	    clang lld wasi-libc libclang-rt-14-dev-wasm32 >/dev/null; \
	fi
	@if [ ! -x /usr/bin/systemd-analyze ]; then \
	  echo "installing systemd-analyze (package systemd)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	    systemd >/dev/null; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

modules: install toolchain
	$(BIN)/python -m modules.build

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: modules lint
	$(BIN)/pytest -q $(PYTEST_ARGS)

# Skips the static checks; handy while iterating.
test-fast: modules
	$(BIN)/pytest -q -x $(PYTEST_ARGS)

# Boots real systemd in systemd-nspawn with systemd/baton-supervisor.service installed and
# checks /health, DynamicUser and the watchdog restart (tests/system). Needs root; the first
# run debootstraps a Debian root into /var/cache/baton (README, "System test").
test-system: install
	@if [ ! -x /usr/bin/systemd-nspawn ] || [ ! -x /usr/sbin/debootstrap ]; then \
	  echo "installing systemd-nspawn and debootstrap"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	    systemd-container debootstrap >/dev/null; \
	fi
	$(BIN)/pytest -q -s -m system tests/system $(PYTEST_ARGS)

# The chaos and fuzz tests at soak scale (BATON_SOAK=1: ten times the rounds, kills and
# executions; tests/chaos/knobs.py), plus the other kill -9 tests with fresh random seeds.
# Counters land in build/chaos-stats.json; -s shows each test's summary line.
soak: modules
	BATON_SOAK=1 $(BIN)/pytest -q -s tests/chaos tests/fuzz tests/test_crash.py tests/test_failover.py $(PYTEST_ARGS)

demo: modules
	$(BIN)/python -m demo $(DEMO_ARGS)

bench: modules
	$(BIN)/python -m bench

clean:
	rm -rf build .mypy_cache .pytest_cache .ruff_cache
