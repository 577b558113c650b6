"""Helpers shared by the benchmark workloads (routing, lifecycle, scale).

Each workload runs alone as a script (its folder is then on ``sys.path``) or is
imported by ``ci/bench.py --smoke``, which puts this folder on ``sys.path``
first, under stock Ray 2.60.0 or the patched wheel.
"""

import contextlib
import json
import socket
import sys
from typing import Any, Dict, Iterator, Optional

import ray
from ray import cloudpickle, serve
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

# Replicas and actors cannot import the workload folder: anything of this
# module that reaches them travels by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def free_port() -> int:
    """A free local TCP port (for Serve's HTTP proxy, never 8000)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def controller():
    """A handle to the Serve controller (whichever instance is current)."""
    return ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)


def is_patched() -> bool:
    """Whether this Ray has controller-managed deployment-scoped actors."""
    try:
        import ray.serve._private.deployment_scoped_actor_utils  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def local_serve() -> Iterator[None]:
    """Serve on a free port, in a local Ray started here unless one is running.

    Inside an existing Ray (``ci/bench.py --smoke`` runs several workloads in
    one cluster) Ray is left running; Serve is shut down when the body ends.
    """
    owns_ray = not ray.is_initialized()
    if owns_ray:
        ray.init(
            address="local", num_cpus=4, include_dashboard=False, log_to_driver=False
        )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
        yield
        serve.shutdown()
    finally:
        if owns_ray:
            ray.shutdown()


def write_json(path: Optional[str], results: Dict[str, Any]) -> None:
    """Write a workload's results to ``path`` (if given)."""
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=2)
