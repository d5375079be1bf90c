# Corral: `make demo` starts a local cluster, `make test` runs the tests.
# Both install what they need (Debian packages, a venv, the test guest, the node VMs' kernel).
SHELL := /bin/bash
VENV ?= $(CURDIR)/.venv
export CORRAL_GUEST_DIR ?= /var/cache/corral/guest
export CORRAL_NODEVM_DIR ?= /var/cache/corral/nodevm
PYTEST_ARGS ?=

.PHONY: deps guest nodevm test test-fast demo demo-stop bench

deps:
	@VENV=$(VENV) packaging/install-deps.sh

guest: deps
	@packaging/guest/build-guest.sh $(CORRAL_GUEST_DIR)

# The node VMs' kernel (with device-mapper and DRBD) and initramfs: tests/integration/nodevm.py.
nodevm: deps
	@packaging/nodevm/build-nodevm.sh $(CORRAL_NODEVM_DIR)

# Every Python process the tests start records coverage (packaging/install-deps.sh); the
# figure is printed at the end, per package (`$(VENV)/bin/coverage report` lists every file).
# The random failure sequences of tests/scenarios run 200 seeds here, a few in test-fast.
test: guest nodevm
	@rm -rf .cache/coverage && mkdir -p .cache/coverage
	@rc=0; CORRAL_SIM_SEEDS=200 CORRAL_GANETI_REQUIRED=1 COVERAGE_PROCESS_START=$(CURDIR)/pyproject.toml \
	  $(VENV)/bin/python -m pytest -q $(PYTEST_ARGS) || rc=$$?; \
	  VENV=$(VENV) packaging/coverage-figure.sh || true; exit $$rc

# Unit tests, scenarios and lint: seconds, no processes started.
test-fast: deps
	$(VENV)/bin/python -m pytest -q tests/unit tests/scenarios $(PYTEST_ARGS)

demo: guest
	@packaging/demo.sh start

demo-stop:
	@packaging/demo.sh stop

bench: guest
	$(VENV)/bin/python bench/instance_start.py
