# Patched Ray 2.60.0: controller-managed deployment actors for Serve.
# `make demo` is the main job; `make test` is what CI (.ci/run) runs.

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
TOOLS := build/tools-venv
RAY_LINT := build/ray-lint-venv
RAYPATCH := $(PYTHON) ci/raypatch.py
# The patched tree: the pristine wheel sources with the series applied by
# `git am` (`make tree`). The wheel is built from it, the tests run from it.
TREE := build/tree
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
PYTEST := $(VPY) -m pytest -c pyproject.toml
LINT_PATHS := conftest.py $(wildcard ci release demo bench)

WORKLOADS := release/serve_tests/workloads
SOAK_DURATION_S ?= 1800
SCALE_DEPLOYMENTS ?= 50

.PHONY: all tree wheel dev patches-import patches-export check-patches lint \
	test demo clean redis chaos chaos-smoke release release-smoke bench bench-smoke

all: wheel

$(TOOLS)/.stamp:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q --disable-pip-version-check $(WHEEL_PIN) $(LINT_PINS)
	touch $@

$(RAY_LINT)/.stamp:
	$(PYTHON) -m venv $(RAY_LINT)
	$(RAY_LINT)/bin/pip install -q --disable-pip-version-check $(RAY_LINT_PINS)
	touch $@

tree:
	$(RAYPATCH) tree

wheel: $(TOOLS)/.stamp
	$(RAYPATCH) wheel --wheel-python $(TOOLS)/bin/python

dev: wheel
	$(PYTHON) ci/dev_env.py --venv $(VENV) --dist dist -- $(TEST_PINS) $(DEV_PINS)

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

# The README's test command; .ci/run calls it.
test: lint check-patches dev
	$(PYTHON) ci/run_tests.py --python $(VPY) --tree $(TREE)

demo: dev
	$(VPY) demo/prefix_router_demo.py $(DEMO_ARGS)

clean:
	rm -rf build dist $(VENV)
