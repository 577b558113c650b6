"""Chaos suite: the prefix-aware router on controller-managed deployment actors.

Each test runs one fault-injection scenario of
``release/serve_tests/workloads/deployment_actor_chaos.py`` (the soak release
test, which holds the scenarios, the load generator, the fault injectors and
the JSON/PNG timeline writer, so the suite and the soak run the same code):
sustained closed-loop load through the prefix router, both through a
``DeploymentHandle`` and through the HTTP proxy on loopback, one kind of
fault, and every request's outcome and serving replica recorded.

* ``CHAOS_MODE=smoke`` (default; ``make test``): a few seconds of load per
  scenario, 5 churn cycles.
* ``CHAOS_MODE=full`` (``make chaos``): ~60 s of load per scenario, 50 churn
  cycles with 12 controller kills.

Results go to ``CHAOS_OUTPUT_DIR`` (default ``out/chaos/<mode>``): one JSON
(requests ok/failed per second, fault and recovery times, leaked actors,
checks) and one PNG timeline per scenario.

Every scenario starts and stops its own Ray (a local instance, a
``ray.cluster_utils.Cluster`` or a Redis-backed head node), so these tests do
not use the session's ``ray_instance`` fixture.
"""

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Dict

import pytest

import ray
from ray import cloudpickle

ROOT = Path(__file__).resolve().parents[4]
WORKLOAD = ROOT / "release" / "serve_tests" / "workloads" / "deployment_actor_chaos.py"
MODE = os.environ.get("CHAOS_MODE", "smoke")
OUTPUT_DIR = os.environ.get("CHAOS_OUTPUT_DIR") or str(ROOT / "out" / "chaos" / MODE)
# Per test: smoke scenarios take well under a minute each on an idle 2-core
# machine; full churn runs 50 deploy/route/delete cycles.
TIMEOUT_S = 900 if MODE == "smoke" else 3600


def _load_chaos_module():
    """Load the soak workload by path.

    The tests run with ``--import-mode=importlib`` and ``ray`` must come from the
    installed wheel, so ``release/`` is never put on ``sys.path``. The module is
    registered in ``sys.modules`` (dataclasses need it) and pickled by value,
    so Ray workers, which cannot import it by name, get its deployment classes.
    """
    spec = importlib.util.spec_from_file_location("deployment_actor_chaos", WORKLOAD)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    cloudpickle.register_pickle_by_value(module)
    return module


chaos = _load_chaos_module()

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(TIMEOUT_S)]


@pytest.fixture(scope="module")
def chaos_cfg():
    """The scenarios' configuration; Ray is restored afterwards if it was up.

    A driver connects to one cluster only, so each scenario shuts down any Ray
    this process is connected to. When the session had one (another module's
    ``ray_instance``), an equivalent one is started again at the end.
    """
    restore = None
    if ray.is_initialized():
        restore = {
            "namespace": ray.get_runtime_context().namespace,
            "num_cpus": int(ray.cluster_resources().get("CPU", 8)),
        }
    yield chaos.ChaosConfig.for_mode(MODE, OUTPUT_DIR)
    if ray.is_initialized():
        ray.shutdown()
    if restore is not None:
        ray.init(
            address="local",
            num_cpus=restore["num_cpus"],
            include_dashboard=False,
            namespace=restore["namespace"],
            log_to_driver=False,
        )


def _assert_passed(summary: Dict[str, Any]) -> None:
    if summary.get("skipped"):
        pytest.skip(summary["skipped"])
    failing = {
        name: check["detail"]
        for name, check in summary["checks"].items()
        if not check["ok"]
    }
    assert not failing, f"failed checks of {summary['scenario']}: {failing}"
    assert summary["checks"], "the scenario checked nothing"
    assert summary["requests"]["ok"] > 0
    assert not summary["leaked_actors"], summary["leaked_actors"]
    assert os.path.exists(summary["files"]["json"])
    assert summary["files"]["png"] and os.path.exists(summary["files"]["png"])


def test_replica_kill(chaos_cfg):
    """ray.kill, then SIGKILL, of a replica: only its in-flight requests fail."""
    summary = chaos.scenario_replica_kill(chaos_cfg)
    _assert_passed(summary)
    assert summary["requests"]["failed"] == summary["extra"]["failures_allowed"]


def test_controller_kill(chaos_cfg):
    """One kill, then 5 in a row: no failures, same tree, delete kills it."""
    summary = chaos.scenario_controller_kill(chaos_cfg)
    _assert_passed(summary)
    assert summary["requests"]["failed"] == 0
    kills = [f for f in summary["faults"] if f["kind"] == "controller_kill"]
    assert len(kills) == 1 + chaos_cfg.controller_kills_in_a_row


def test_tree_kill(chaos_cfg):
    """Killing the tree fails nothing; it is recreated and affinity returns."""
    summary = chaos.scenario_tree_kill(chaos_cfg)
    _assert_passed(summary)
    assert summary["requests"]["failed"] == 0
    for kill in summary["extra"]["tree_kills"]:
        print(
            f"\n[tree_kill] recreated and refilled in {kill['recreated_s']:.2f}s, "
            f"affinity back in {kill['affinity_back_s']:.1f}s"
        )


def test_node_loss(chaos_cfg):
    """Removing the tree's node: routing continues, tree moves to a live node."""
    _assert_passed(chaos.scenario_node_loss(chaos_cfg))


@pytest.mark.skipif(
    shutil.which("redis-server") is None,
    reason=(
        "redis-server is not installed: `make redis` (part of `make test` and "
        "`make chaos`) installs Debian's redis-server; it may have failed here"
    ),
)
def test_gcs_restart(chaos_cfg):
    """Redis-backed GCS restart: no failures, checkpoint and tree survive."""
    summary = chaos.scenario_gcs_restart(chaos_cfg)
    _assert_passed(summary)
    assert summary["requests"]["failed"] == 0


def test_churn(chaos_cfg):
    """Deploy/route/delete cycles with controller kills leave nothing behind."""
    summary = chaos.scenario_churn(chaos_cfg)
    _assert_passed(summary)
    assert len(summary["extra"]["cycles"]) == chaos_cfg.churn_cycles
    kills = [f for f in summary["faults"] if f["kind"] == "controller_kill"]
    assert len(kills) == chaos_cfg.churn_kills


if __name__ == "__main__":
    sys.exit(pytest.main(["-v", "-s", __file__]))
