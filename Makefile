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

# Chaos suite and release tests (see release/release_tests.yaml).
CHAOS_TESTS := python/ray/serve/tests
WORKLOADS := release/serve_tests/workloads
SOAK_DURATION_S ?= 1800
SCALE_DEPLOYMENTS ?= 50

.PHONY: all wheel dev patches-import patches-export check-patches lint \
	test test-tools test-unit test-integration demo clean \
	redis chaos chaos-smoke release release-smoke bench bench-smoke

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

# The GCS restart chaos scenario needs Debian's redis-server (the tests start
# their own on a free loopback port). Never fails: without it, that scenario
# is skipped with a reason.
redis:
	@command -v redis-server >/dev/null 2>&1 || \
	  (DEBIAN_FRONTEND=noninteractive timeout 300 sh -c \
	    'apt-get update -qq && apt-get install -y -qq redis-server' >/dev/null 2>&1 \
	   && echo "redis: installed Debian's redis-server") || \
	  echo "redis: could not install redis-server; the GCS restart scenario will be skipped"

# The full chaos suite (~60 s of load per scenario, 50 churn cycles); JSON
# results and PNG timelines in out/chaos/full.
chaos: dev redis
	CHAOS_MODE=full CHAOS_OUTPUT_DIR=out/chaos/full $(PYTEST) $(CHAOS_TESTS) -m chaos -v -s

# What `make test` runs as its "chaos smoke" suite; results in out/chaos/smoke.
chaos-smoke: dev redis
	CHAOS_MODE=smoke CHAOS_OUTPUT_DIR=out/chaos/smoke $(PYTEST) $(CHAOS_TESTS) -m chaos

# Release tests: the chaos soak (SOAK_DURATION_S, default 30 min) and the scale
# test (SCALE_DEPLOYMENTS deployments); results in out/release.
release: dev redis
	TEST_OUTPUT_JSON=out/release/deployment_actor_chaos.json \
	  CHAOS_OUTPUT_DIR=out/release/chaos \
	  $(VPY) $(WORKLOADS)/deployment_actor_chaos.py --duration-s $(SOAK_DURATION_S)
	TEST_OUTPUT_JSON=out/release/deployment_actor_scale.json \
	  $(VPY) $(WORKLOADS)/deployment_actor_scale.py --deployments $(SCALE_DEPLOYMENTS)

release-smoke: dev redis
	TEST_OUTPUT_JSON=out/release-smoke/deployment_actor_chaos.json \
	  CHAOS_OUTPUT_DIR=out/release-smoke/chaos \
	  $(VPY) $(WORKLOADS)/deployment_actor_chaos.py --smoke
	TEST_OUTPUT_JSON=out/release-smoke/deployment_actor_scale.json \
	  $(VPY) $(WORKLOADS)/deployment_actor_scale.py --smoke

# The README's test command; .ci/run calls it.
test: lint check-patches dev redis
	$(PYTHON) ci/run_tests.py --python $(VPY)

demo: dev
	$(VPY) demo/prefix_router_demo.py $(DEMO_ARGS)

# Stock Ray 2.60.0 (build/stock-venv, from the verified base wheel) vs our
# wheel, side by side; table on stdout, out/bench/bench.json and PNG plots.
# BENCH_ARGS: e.g. --enforce (fail on a missed target), --workloads routing.
bench: dev
	$(VPY) ci/bench.py --venv-python $(PYTHON) $(BENCH_ARGS)

# The same in seconds, for CI (`make test` runs it as its "bench smoke" suite).
bench-smoke: dev
	$(VPY) ci/bench.py --smoke --venv-python $(PYTHON) $(BENCH_ARGS)

clean:
	rm -rf build dist $(VENV)
