# Patched Ray 2.60.0: controller-managed deployment actors for Serve.
# `make demo` is the main job; `make test` is what CI (.ci/run) runs.

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
# Stock Ray 2.60.0 (the PyPI wheel, unpatched): the baseline of `make bench`.
STOCK := build/stock-venv
SPY := $(STOCK)/bin/python
TOOLS := build/tools-venv
RAY_LINT := build/ray-lint-venv
RAYPATCH := $(PYTHON) ci/raypatch.py
# The patched tree: the pristine wheel sources with the series applied by
# `git am` (`make tree`). The wheel is built from it, the tests run from it.
TREE := build/tree
BASE_DIST := .cache/base/e227f6b2af8ab462
WHEEL_PIN := wheel==0.45.1
# Ray's CI test pins (python/requirements/test-requirements.txt).
TEST_PINS := pytest==7.4.4 pytest-asyncio==0.17.2 pytest-timeout==2.1.0 httpx==0.28.1
# The fork's tooling is linted with current tools; the series with Ray's own
# pin (python/requirements/lint-requirements.txt), so patched upstream files
# keep upstream's formatting.
LINT_PINS := ruff==0.11.13 black==25.1.0
RAY_LINT_PINS := black==22.10.0
# Plots for the demo and benchmark reports.
DEV_PINS := matplotlib==3.9.2
# Serve LLM's OpenAI path without vLLM or torch (see ci/llm_deps.py), and the
# small tokenizer the simulated engine and upstream's benchmark client share,
# trained offline from local text.
LLM_DEPS := $(PYTHON) ci/llm_deps.py --cache-dir build/wheels
TOKENIZER := build/sim-tokenizer
LINT_PATHS := conftest.py ci demo bench
PIP := pip install -qq --disable-pip-version-check

# The chaos release workload is created by the series
# (release/serve_tests/workloads); ci/run_tests.py runs it on Serve LLM's
# OpenAI app around the simulated engine of bench/sim_llm.
CHAOS_DURATION_S ?= 600

.PHONY: all tree wheel dev stock-venv patches-import patches-export check-patches \
	lint test demo chaos-smoke chaos bench clean

all: wheel

$(TOOLS)/.stamp:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/$(PIP) $(WHEEL_PIN) $(LINT_PINS)
	touch $@

$(RAY_LINT)/.stamp:
	$(PYTHON) -m venv $(RAY_LINT)
	$(RAY_LINT)/bin/$(PIP) $(RAY_LINT_PINS)
	touch $@

tree:
	$(RAYPATCH) tree

wheel: $(TOOLS)/.stamp
	$(RAYPATCH) wheel --wheel-python $(TOOLS)/bin/python

$(TOKENIZER)/.stamp: bench/sim_llm/make_tokenizer.py
	$(VPY) bench/sim_llm/make_tokenizer.py --out $(TOKENIZER)
	touch $@

dev: wheel
	$(PYTHON) ci/dev_env.py --venv $(VENV) --dist dist -- $(TEST_PINS) $(DEV_PINS)
	$(LLM_DEPS) --python $(VPY)
	$(MAKE) --no-print-directory $(TOKENIZER)/.stamp

stock-venv: tree
	$(PYTHON) ci/dev_env.py --venv $(STOCK) --dist $(BASE_DIST) -- $(TEST_PINS)
	$(LLM_DEPS) --python $(SPY) --stock

patches-import:
	$(RAYPATCH) import $(if $(FORCE),--force,)

patches-export:
	$(RAYPATCH) export

check-patches:
	$(RAYPATCH) check

lint: $(TOOLS)/.stamp $(RAY_LINT)/.stamp tree
	$(TOOLS)/bin/ruff check $(LINT_PATHS)
	$(TOOLS)/bin/black --check --quiet $(LINT_PATHS)
	$(PYTHON) ci/lint_series.py --tree $(TREE) --black $(RAY_LINT)/bin/black \
	  --ruff $(TOOLS)/bin/ruff
	$(PYTHON) ci/lint_tests.py

# The README's test command; .ci/run calls it. Lint, the patch checks, unit,
# integration, doc code and the chaos smoke run.
test: lint check-patches dev
	$(PYTHON) ci/run_tests.py --python $(VPY) --tree $(TREE)

# The chaos release workload: tree, controller and replica kills in a loop
# under OpenAI-client load, perf_metrics in out/chaos/.
chaos: dev
	$(PYTHON) ci/run_tests.py --python $(VPY) --tree $(TREE) --only chaos \
	  --chaos-duration-s $(CHAOS_DURATION_S)

chaos-smoke: dev
	$(PYTHON) ci/run_tests.py --python $(VPY) --tree $(TREE) --only "chaos smoke"

# Stock 2.60.0 against the patched wheel in one run: the routing bench through
# handles and upstream's benchmark client on the OpenAI path; prints ratios.
bench: dev stock-venv
	$(PYTHON) bench/run.py --patched $(VPY) --stock $(SPY) --out out/bench $(BENCH_ARGS)

demo: dev
	$(VPY) demo/prefix_router_demo.py $(DEMO_ARGS)

clean:
	rm -rf build dist out $(VENV)
