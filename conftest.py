"""Stand-ins for the fixtures of Ray's own test conftests (fork tooling).

Ray wheels ship no tests and no conftest.py, so the tests the patch series adds
(run from ``build/tree``, the pristine sources with the series applied) get the
fixtures they use from upstream's conftests from here, under upstream's names:

* ``python/ray/serve/tests/unit/conftest.py``: unit tests never start Ray
  (``disallow_ray_init``, autouse for every ``*/tests/unit/*``), and
  ``mock_deployment_state_manager``.
* ``python/ray/serve/tests/conftest.py``: ``ray_start_stop``-style local
  clusters are made by the tests themselves; ``serve_instance`` is Serve on a
  local Ray cluster for a module; after each test every app is deleted and
  the cached handles are shut down, as upstream's fixture does.

Serve always binds a free port here, never the default 8000, so runs on a
shared machine do not collide.

Test helpers the series adds under a ``tests`` package (e.g.
``ray.llm.tests.serve.mocks``) import as they do in upstream's source tree:
the tree's ``python/ray/llm`` joins the installed ``ray.llm`` package's path.
"""

import os
from pathlib import Path
from typing import Tuple
from unittest.mock import Mock, patch

import pytest

import ray
from ray._common.network_utils import find_free_port


def _is_unit_test(path: str) -> bool:
    return "/tests/unit/" in path


def pytest_collect_file(file_path: Path, parent):
    """Let ``ray.llm.tests...`` resolve in the tree a collected test lives in."""
    parts = file_path.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 4] == ("python", "ray", "llm", "tests"):
            import ray.llm

            llm = str(Path(*parts[: i + 3]))
            if llm not in ray.llm.__path__:
                ray.llm.__path__.append(llm)
            break
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _is_unit_test(str(item.fspath)):
            item.add_marker(pytest.mark.usefixtures("disallow_ray_init"))


@pytest.fixture
def disallow_ray_init(monkeypatch):
    def raise_on_init(*args, **kwargs):
        raise RuntimeError("Unit tests should not depend on Ray being initialized.")

    monkeypatch.setattr(ray, "init", raise_on_init)
    monkeypatch.setattr(ray, "get_runtime_context", Mock())


@pytest.fixture
def mock_deployment_state_manager() -> Tuple:
    """A DeploymentStateManager on Serve's shipped mocks (no Ray).

    Yields (create_deployment_state_manager, timer, cluster_node_info_cache,
    autoscaling_state_manager); calling the factory twice over the same
    MockKVStore simulates a controller restart.
    """
    from ray._raylet import NodeID
    from ray.serve._private.autoscaling_state import AutoscalingStateManager
    from ray.serve._private.deployment_state import DeploymentStateManager
    from ray.serve._private.test_utils import (
        MockClusterNodeInfoCache,
        MockDeploymentActorWrapper,
        MockKVStore,
        MockReplicaActorWrapper,
        MockTimer,
        dead_replicas_context,
        replica_rank_context,
    )

    timer = MockTimer()
    with (
        patch(
            "ray.serve._private.deployment_state.ActorReplicaWrapper",
            new=MockReplicaActorWrapper,
        ),
        patch(
            "ray.serve._private.deployment_state.DeploymentActorWrapper",
            new=MockDeploymentActorWrapper,
        ),
        patch("time.time", new=timer.time),
        patch("ray.serve._private.long_poll.LongPollHost") as long_poll_host,
        patch("ray.get_runtime_context"),
    ):
        kv_store = MockKVStore()
        node_info_cache = MockClusterNodeInfoCache()
        node_info_cache.add_node(NodeID.from_random().hex())
        autoscaling_state_manager = AutoscalingStateManager()

        def create(actor_names=None, placement_group_names=None):
            return DeploymentStateManager(
                kv_store,
                long_poll_host,
                actor_names or [],
                placement_group_names or [],
                node_info_cache,
                autoscaling_state_manager,
                head_node_id_override="fake-head-node-id",
            )

        yield create, timer, node_info_cache, autoscaling_state_manager
        dead_replicas_context.clear()
        replica_rank_context.clear()


@pytest.fixture(scope="module")
def _ray_for_module():
    if ray.is_initialized():
        ray.shutdown()
    # Deployment actors are health-checked every second (the controller reads
    # it at start), so recreation tests do not wait out the default period.
    name = "RAY_SERVE_DEPLOYMENT_ACTOR_HEALTH_CHECK_PERIOD_S"
    saved = os.environ.get(name)
    os.environ[name] = "1"
    ctx = ray.init(
        address="local",
        num_cpus=8,
        include_dashboard=False,
        namespace="default_test_namespace",
        log_to_driver=False,
    )
    yield ctx
    ray.shutdown()
    if saved is None:
        del os.environ[name]
    else:
        os.environ[name] = saved


@pytest.fixture
def serve_instance(_ray_for_module):
    """Serve on a free port, shared by a module's tests (as upstream's).

    Started again if a test shut it down; every application is deleted after
    each test.
    """
    from ray import serve
    from ray.serve.context import _check_cached_client_alive, _get_global_client

    client, _ = _check_cached_client_alive()
    if client is None:
        serve.start(http_options={"host": "127.0.0.1", "port": find_free_port()})
        client = _get_global_client()
    yield client
    client, _ = _check_cached_client_alive()
    if client is not None:
        apps = list(serve.status().applications)
        if apps:
            client.delete_apps(apps, blocking=True)
        client.shutdown_cached_handles()


@pytest.fixture(scope="module", autouse=True)
def _shutdown_serve_after_module():
    yield
    from ray import serve

    if ray.is_initialized():
        serve.shutdown()
