"""Examples for the "Deployment-scoped actors created at run time" guide.

Runs on a fresh local Ray cluster, starts Serve on a free port, checks its
results with asserts and shuts everything down again. Imports sit next to the
code that uses them, so that each snippet in the guide is complete.
"""

# ruff: noqa: E402

import asyncio
import socket
import time
from typing import Dict, List, Optional, Tuple

import ray
from ray import serve


# __begin_counter_actor__
@ray.remote
class Counter:
    """State shared by all replicas of a deployment."""

    def __init__(self, start: int = 0):
        self._value = start

    def incr(self) -> int:
        self._value += 1
        return self._value


# __end_counter_actor__


# __begin_replica_get_or_create__
from ray.exceptions import RayActorError
from ray.serve._private.common import DeploymentID
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE


async def get_counter() -> ray.actor.ActorHandle:
    """Get this deployment's counter, creating it on first use."""
    ctx = serve.get_replica_context()
    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    return await controller.get_or_create_deployment_actor.remote(
        DeploymentID(name=ctx.deployment, app_name=ctx.app_name),
        "counter",  # The actor's name within the deployment.
        Counter.options(num_cpus=0),  # Ray actor options go here.
        100,  # Constructor arguments: used only when the actor is created.
    )


@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0})
class Visits:
    def __init__(self):
        self._counter: Optional[ray.actor.ActorHandle] = None

    async def __call__(self) -> int:
        if self._counter is None:
            self._counter = await get_counter()
        try:
            return await self._counter.incr.remote()
        except RayActorError:
            # The counter died; the controller recreates it with the same
            # arguments. Ask again for the live handle on the next request.
            self._counter = None
            raise


# __end_replica_get_or_create__


# __begin_shared_cursor_router__
from ray.serve.request_router import (
    DeploymentActorMixin,
    PendingRequest,
    RequestRouter,
    RunningReplica,
)


@ray.remote(num_cpus=0)
class Cursor:
    def __init__(self):
        self._next = 0

    def next(self) -> int:
        self._next += 1
        return self._next - 1


class SharedRoundRobinRouter(DeploymentActorMixin, RequestRouter):
    """Round-robin over the replicas, shared by every router of the deployment."""

    def initialize_state(self, timeout_s: float = 1.0):
        self._timeout_s = timeout_s
        self._refresh = False

    async def choose_replicas(
        self,
        candidate_replicas: List[RunningReplica],
        pending_request: Optional[PendingRequest] = None,
    ) -> List[List[RunningReplica]]:
        if pending_request is not None:
            # Back off if the chosen replica is full and Serve asks again.
            pending_request.routing_context.should_backoff = True
        try:
            cursor = await self.get_or_create_deployment_actor(
                "cursor", Cursor, refresh=self._refresh, timeout_s=self._timeout_s
            )
            self._refresh = False
            n = await asyncio.wait_for(cursor.next.remote(), self._timeout_s)
        except RayActorError:
            # The cursor died: the controller recreates it; ask for it again.
            self._refresh = True
            return [candidate_replicas]
        except Exception:
            # Slow, or the controller is unreachable: never fail the request,
            # let Serve pick by queue length.
            return [candidate_replicas]
        ordered = sorted(candidate_replicas, key=lambda r: r.replica_id.unique_id)
        return [[ordered[n % len(ordered)]]]


# __end_shared_cursor_router__


# __begin_use_shared_cursor_router__
from ray.serve.config import RequestRouterConfig


@serve.deployment(
    num_replicas=2,
    ray_actor_options={"num_cpus": 0},
    request_router_config=RequestRouterConfig(
        request_router_class=SharedRoundRobinRouter,
        request_router_kwargs={"timeout_s": 5.0},
    ),
)
class Echo:
    def __call__(self) -> str:
        return serve.get_replica_context().replica_id.unique_id


# __end_use_shared_cursor_router__


# __begin_routing_token_router__
from ray.serve.experimental.routing_token_router import RoutingTokenRouter


@serve.deployment(
    num_replicas=2,
    max_ongoing_requests=100,
    ray_actor_options={"num_cpus": 0},
    request_router_config=RequestRouterConfig(
        request_router_class=RoutingTokenRouter,
        request_router_kwargs={
            # At most 4 requests holding a token per replica, across all routers.
            "max_tokens_per_replica": 4,
            # Timeout of each call to the controller or the token manager.
            "manager_timeout_s": 1.0,
        },
    ),
)
class Model:
    async def __call__(self, x: int) -> int:
        await asyncio.sleep(0.1)
        return 2 * x


# __end_routing_token_router__


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _deployment_actor_states() -> Dict[Tuple[str, str, str], str]:
    return {
        (app_name, deployment_name, name): info["state"]
        for app_name, app in serve.status().applications.items()
        for deployment_name, deployment in app.deployments.items()
        for name, info in deployment.deployment_actors.items()
    }


def _wait_until_actor_exists(ray_name: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            actor = ray.get_actor(ray_name, namespace="serve")
            ray.get(actor.__ray_ready__.remote(), timeout=timeout_s)
            return
        except ValueError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main() -> None:
    # A fresh local cluster, and Serve on a free port (not 8000).
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": _free_port()})
    try:
        # __begin_run_counter__
        visits = serve.run(Visits.bind(), name="visits", route_prefix=None)
        responses = [visits.remote() for _ in range(20)]
        counts = sorted(r.result() for r in responses)
        # One counter, created once (start=100), shared by both replicas.
        assert counts == list(range(101, 121)), counts
        # __end_run_counter__

        # __begin_run_shared_cursor_router__
        echo = serve.run(Echo.bind(), name="echo", route_prefix=None)
        # The first request creates the cursor.
        echo.remote().result()
        _wait_until_actor_exists("SERVE_DEPLOYMENT_ACTOR::echo::Echo::cursor")
        served = [echo.remote().result() for _ in range(10)]
        # Strict round-robin between the two replicas.
        assert len(set(served)) == 2, served
        assert all(a != b for a, b in zip(served, served[1:])), served
        # __end_run_shared_cursor_router__

        model = serve.run(Model.bind(), name="tokens", route_prefix=None)
        responses = [model.remote(i) for i in range(20)]
        assert [r.result() for r in responses] == [2 * i for i in range(20)]

        expected = {
            ("visits", "Visits", "counter"): "RUNNING",
            ("echo", "Echo", "cursor"): "RUNNING",
            ("tokens", "Model", "routing-token-manager"): "RUNNING",
        }
        # The token manager may still be STARTING (its first requests were
        # routed without tokens): wait until the controller saw it ready.
        deadline = time.monotonic() + 60
        while _deployment_actor_states() != expected:
            assert time.monotonic() < deadline, _deployment_actor_states()
            time.sleep(0.5)

        # __begin_status__
        for app_name, app in serve.status().applications.items():
            for deployment_name, deployment in app.deployments.items():
                for name, info in deployment.deployment_actors.items():
                    print(
                        f"{app_name}/{deployment_name}: {name} is {info['state']} "
                        f"(actor {info['actor_id']}, restarts: {info['restarts']})"
                    )
        # __end_status__

        # __begin_lifecycle__
        # A detached actor in the "serve" namespace with a deterministic name.
        counter = ray.get_actor(
            "SERVE_DEPLOYMENT_ACTOR::visits::Visits::counter", namespace="serve"
        )
        assert ray.get(counter.incr.remote()) == 121

        # Deleting the deployment (here: its app) kills its actors once its
        # replicas have stopped.
        serve.delete("visits")
        try:
            ray.get(counter.incr.remote(), timeout=60)
            raise AssertionError("the counter should be dead")
        except RayActorError:
            pass
        # __end_lifecycle__
        print("deployment_scoped_actors examples: OK")
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
