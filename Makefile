# Patched Ray 2.60.0: controller-managed deployment-scoped actors for Serve.
# `make demo` is the main job; `make test` is what CI (.ci/run) runs.

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
TOOLS := build/tools-venv
RAYPATCH := $(PYTHON) ci/raypatch.py
WHEEL_PIN := wheel==0.45.1
# Ray's CI test pins (python/requirements/test-requirements.txt).
TEST_PINS := pytest==7.4.4 pytest-asyncio==0.17.2 pytest-timeout==2.1.0 httpx==0.28.1
LINT_PINS := ruff==0.11.13 black==25.1.0
# Plots for the demo, chaos and benchmark reports; psutil for process checks.
DEV_PINS := matplotlib==3.9.2
PYTEST := $(VPY) -m pytest -c pyproject.toml
LINT_PATHS := conftest.py $(wildcard python ci release demo doc bench)

.PHONY: all wheel dev patches-import patches-export check-patches lint \
	test test-tools test-unit test-integration demo clean

all: wheel

$(TOOLS)/.stamp:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q --disable-pip-version-check $(WHEEL_PIN) $(LINT_PINS)
	touch $@

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

lint: $(TOOLS)/.stamp
	$(TOOLS)/bin/ruff check $(LINT_PATHS)
	$(TOOLS)/bin/black --check --quiet $(LINT_PATHS)
	$(PYTHON) ci/lint_tests.py

test-tools: dev
	$(PYTEST) ci

test-unit: dev
	$(PYTEST) python/ray/serve/tests/unit

test-integration: dev
	$(PYTEST) python/ray/serve/tests -m "not chaos" --ignore=python/ray/serve/tests/unit

# The README's test command; .ci/run calls it.
test: lint check-patches dev
	$(PYTHON) ci/run_tests.py --python $(VPY)

demo: dev
	$(VPY) demo/prefix_router_demo.py $(DEMO_ARGS)

clean:
	rm -rf build dist $(VENV)
