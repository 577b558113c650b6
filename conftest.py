"""Test harness shared by every test in this repository.

Stands in for the fixtures of Ray's own ``python/ray/serve/tests/conftest.py``
(Ray wheels ship no tests): the names match upstream's, so the tests move to the
Ray repo as they are.

* Unit tests (``*/tests/unit/*``) must never start Ray: ``ray.init`` raises.
* ``ray_instance`` is one real local Ray cluster for the whole session; the
  Serve fixtures start Serve on a free HTTP port (never the default 8000), so
  runs on a shared machine do not collide, and always shut Serve down again.
"""

import os
import socket
from pathlib import Path

import pytest

import ray

ROOT = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/unit/" in str(item.fspath):
            item.add_marker(pytest.mark.usefixtures("_forbid_ray_init"))


@pytest.fixture
def _forbid_ray_init(monkeypatch):
    def _raise(*args, **kwargs):
        raise RuntimeError("Unit tests must not start Ray (ray.init was called).")

    monkeypatch.setattr(ray, "init", _raise)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_instance():
    """One local Ray cluster for the session, ended by its own handle."""
    if ray.is_initialized():
        ray.shutdown()
    os.environ.setdefault("RAY_SERVE_DEPLOYMENT_ACTOR_HEALTH_CHECK_PERIOD_S", "1")
    ctx = ray.init(
        address="local",
        num_cpus=8,
        include_dashboard=False,
        namespace="default_test_namespace",
        log_to_driver=False,
    )
    yield ctx
    ray.shutdown()


@pytest.fixture
def serve_instance(ray_instance):
    """Serve on a free port for one test; shut down (all apps) afterwards."""
    from ray import serve

    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    yield serve.context._get_global_client()
    serve.shutdown()
