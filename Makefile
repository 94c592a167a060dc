# Entry points for a fresh clone: `make demo`, `make test` (the fast tier) and `make test-all` (every
# tier but the long science tests, what CI runs; `make test-long` runs those). Each creates .venv if missing.
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel of torch on our machines; elsewhere any torch >= 2.2 works: make TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
# Tests read the datasets from ../shared/data when it exists (CI), else from the usual search order.
SHARED_DATA := $(wildcard ../shared/data)

# the tiers are pytest markers given in tests/conftest.py (TIER_OF); the fast tier is the rest
SLOW_TIERS := science or multiprocess or packaging or deployment or slow or long
PYTEST = $(if $(SHARED_DATA),ROBUSTLR_DATA_DIR=$${ROBUSTLR_DATA_DIR:-$(abspath $(SHARED_DATA))}) $(PY) -m pytest -q --durations=15

.PHONY: demo test test-all test-slow test-long test-headline install bench clean-venv fashion-mnist docs docs-serve

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

# Fashion-MNIST: use any copy the search order finds; else download it into robustlr's cache (no root
# needed); only if that fails (offline), install Debian's dataset package (apt-get, as root or with sudo).
fashion-mnist: $(VENV)/.installed
	@$(VENV)/bin/robustlr data fashion-mnist >/dev/null 2>&1 || { \
	  echo "Fashion-MNIST not found: downloading its 4 files (30 MB) into robustlr's cache" \
	    "($${ROBUSTLR_CACHE_DIR:-~/.cache/robustlr}) with: robustlr data fashion-mnist --download"; \
	  $(VENV)/bin/robustlr data fashion-mnist --download; } || { \
	  echo "The download failed: installing Debian's dataset-fashion-mnist package instead (apt-get)"; \
	  command -v apt-get >/dev/null || { echo "no apt-get here: put Fashion-MNIST's 4 .gz files in a folder" \
	    "fashion-mnist/ under \$$ROBUSTLR_DATA_DIR (see docs/how-to/data.md)"; exit 1; }; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; }

demo: fashion-mnist
	$(VENV)/bin/robustlr demo

# the fast tier: no science, multi-process, packaging, deployment or slow test (<= 8 min on 2 cores)
test: $(VENV)/.installed
	$(PYTEST) -m "not ($(SLOW_TIERS))"

# every tier but `long` (CI): the fast tier and the rest (<= 35 min on 2 cores)
test-all: $(VENV)/.installed
	$(PYTEST) -m "not long"

# the long science tests (CIFAR-10's three attacked pairs, about 38 min on 2 cores; Table 1 on FEMNIST
# and on Fashion-MNIST, about 12 min)
test-long: $(VENV)/.installed
	$(PYTEST) -m long

# the paper's headline on real data: Table 1 iid at the demo's budget (FedAvg learns the backdoor,
# RLR keeps it out; ~6 min on 2 cores). In the long tier; CI runs it after the full tier
test-headline: $(VENV)/.installed
	$(PYTEST) -m long "tests/science/test_table1.py::test_rlr_stops_the_backdoor_that_fedavg_learns[iid]"

# only the tiers `make test-all` adds to `make test`
test-slow: $(VENV)/.installed
	$(PYTEST) -m "($(SLOW_TIERS)) and not long"

# the documentation site, built from docs/ into site/ (not committed); --strict: a broken link or
# reference fails. docs-serve: the same, served at http://127.0.0.1:8000 with live reload
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

bench: $(VENV)/.installed
	$(VENV)/bin/robustlr bench engines

clean-venv:
	rm -rf $(VENV)
