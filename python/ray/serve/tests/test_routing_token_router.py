"""Tests of the experimental ``RoutingTokenRouter`` example.

The router shares per-replica concurrency tokens across all routers of a
deployment through a ``RoutingTokenManager`` that it creates as a
controller-managed deployment-scoped actor (``DeploymentActorMixin``).

The first tests exercise the manager and the router's fallback logic in
process, with fakes; the rest run a real deployment on a local Ray cluster.
"""

import asyncio
import concurrent.futures
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Union

import httpx
import pytest
from starlette.requests import Request

import ray
from ray import serve
from ray._common.test_utils import wait_for_condition
from ray.exceptions import ActorDiedError
from ray.serve._private.common import (
    DeploymentHandleSource,
    DeploymentID,
    ReplicaID,
    RequestMetadata,
)
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
from ray.serve._private.deployment_scoped_actor_utils import (
    get_deployment_scoped_actor_name,
)
from ray.serve._private.test_utils import FakeRunningReplica, get_application_url
from ray.serve.config import RequestRouterConfig
from ray.serve.experimental.routing_token_router import (
    MANAGER_ACTOR_NAME,
    RoutingTokenManager,
    RoutingTokenRouter,
    token_replica_id,
)
from ray.serve.request_router import PendingRequest

# Generous: the tests may share a 2-core machine with other Ray clusters.
TIMEOUT_S = 60

# --------------------------------------------------------------------------- #
# RoutingTokenManager (plain class, in process)
# --------------------------------------------------------------------------- #


def test_manager_grants_on_least_loaded_candidate_up_to_the_limit():
    manager = RoutingTokenManager(max_tokens_per_replica=2)
    manager.set_replicas(["a", "b"])
    tokens = [manager.acquire(["a", "b"]) for _ in range(4)]
    assert all(t is not None for t in tokens)
    # Fewest held first: the 4 grants are spread 2 and 2.
    assert sorted(token_replica_id(t) for t in tokens) == ["a", "a", "b", "b"]
    assert manager.acquire(["a", "b"]) is None
    # Only candidates count: "b" is not one.
    token_on_a = next(t for t in tokens if token_replica_id(t) == "a")
    assert manager.release("a", token_on_a) is True
    assert manager.acquire(["b"]) is None
    assert token_replica_id(manager.acquire(["a", "b"])) == "a"

    stats = manager.stats()
    assert stats["held"] == {"a": 2, "b": 2}
    assert stats["max_held"] == {"a": 2, "b": 2}
    assert stats["grants"] == 5
    assert stats["denials"] == 2
    assert stats["releases"] == 1
    assert stats["max_tokens_per_replica"] == 2


def test_manager_release_is_idempotent_and_epoch_scoped():
    manager = RoutingTokenManager(max_tokens_per_replica=1)
    token = manager.acquire(["a"])
    assert manager.release("a", token) is True
    assert manager.release("a", token) is False
    assert manager.release("unknown", token) is False
    # A token of an earlier manager instance never frees a token of this one,
    # even with the same replica and sequence number.
    other = RoutingTokenManager(max_tokens_per_replica=1)
    assert other.acquire(["a"]).rsplit(":", 1)[1] == token.rsplit(":", 1)[1]
    assert other.release("a", token) is False
    assert other.stats()["held"] == {"a": 1}


def test_manager_set_replicas_drops_tokens_of_gone_replicas():
    manager = RoutingTokenManager(max_tokens_per_replica=1)
    manager.set_replicas(["a", "b"])
    token_a = manager.acquire(["a"])
    token_b = manager.acquire(["b"])
    manager.set_replicas(["b", "c"])
    assert manager.stats()["held"] == {"b": 1, "c": 0}
    # Releasing a dropped token is a no-op; other tokens are kept.
    assert manager.release("a", token_a) is False
    assert manager.acquire(["b"]) is None
    assert manager.release("b", token_b) is True
    # The history of the gone replica stays in the stats.
    assert manager.stats()["max_held"] == {"a": 1, "b": 1}


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True, None])
def test_manager_rejects_bad_limits(bad):
    with pytest.raises(ValueError, match="max_tokens_per_replica"):
        RoutingTokenManager(max_tokens_per_replica=bad)


def test_manager_limit_of_the_caller_overrides_the_constructor():
    manager = RoutingTokenManager(max_tokens_per_replica=1)
    assert manager.acquire(["a"], 2) is not None
    assert manager.acquire(["a"], 2) is not None
    assert manager.acquire(["a"], 2) is None
    assert manager.acquire(["a"]) is None
    assert manager.stats()["max_held"] == {"a": 2}


def test_manager_acquire_without_candidates():
    manager = RoutingTokenManager()
    assert manager.acquire([]) is None
    assert manager.stats()["denials"] == 1


# --------------------------------------------------------------------------- #
# RoutingTokenRouter with a fake manager (in process, no Ray)
# --------------------------------------------------------------------------- #

FAKE_DEPLOYMENT_ID = DeploymentID(name="fake", app_name="fake_app")


class _FakeMethod:
    def __init__(self, manager: "FakeManagerHandle", name: str):
        self._manager, self._name = manager, name

    def remote(self, *args):
        return self._manager.call(self._name, args)


class _FakeRef:
    def __init__(self, fut: concurrent.futures.Future):
        self._fut = fut

    def future(self) -> concurrent.futures.Future:
        return self._fut


class FakeManagerHandle:
    """Stands in for the manager's actor handle; runs a real manager.

    Modes: "ok" answers at once; "hang" keeps acquires pending until
    ``finish_hung()``; "dead" fails every call with ActorDiedError.
    """

    def __init__(self, max_tokens_per_replica: int = 2):
        self.manager = RoutingTokenManager(max_tokens_per_replica)
        self.mode = "ok"
        self.calls: List[str] = []
        self._hung: List[Any] = []

    def __getattr__(self, name: str) -> _FakeMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        return _FakeMethod(self, name)

    def call(self, name: str, args) -> _FakeRef:
        self.calls.append(name)
        fut: concurrent.futures.Future = concurrent.futures.Future()
        if self.mode == "dead":
            fut.set_exception(ActorDiedError())
        elif self.mode == "hang" and name == "acquire":
            self._hung.append((fut, args))
        else:
            fut.set_result(getattr(self.manager, name)(*args))
        return _FakeRef(fut)

    def finish_hung(self) -> None:
        for fut, args in self._hung:
            fut.set_result(self.manager.acquire(*args))
        self._hung = []


def _fake_replicas(*unique_ids: str) -> List[FakeRunningReplica]:
    replicas = [FakeRunningReplica(unique_id) for unique_id in unique_ids]
    for replica in replicas:
        # Answer the router's queue length probes.
        replica.set_queue_len_response(0)
    return replicas


def _request(request_id: str) -> PendingRequest:
    return PendingRequest(
        args=[],
        kwargs={},
        metadata=RequestMetadata(request_id=request_id, internal_request_id=request_id),
    )


def _fake_router(
    monkeypatch, handles: List[FakeManagerHandle], **kwargs
) -> RoutingTokenRouter:
    """A router whose controller returns ``handles`` in turn (the last sticks)."""
    router = RoutingTokenRouter(
        deployment_id=FAKE_DEPLOYMENT_ID,
        handle_source=DeploymentHandleSource.REPLICA,
        use_replica_queue_len_cache=False,
        get_curr_time_s=time.time,
    )
    router.initialize_state(**kwargs)
    router.controller_calls = []

    async def fake_get_or_create(actor_name, actor_class, *args, refresh, **kw):
        router.controller_calls.append((actor_name, args, refresh))
        return handles[min(len(router.controller_calls), len(handles)) - 1]

    monkeypatch.setattr(router, "get_or_create_deployment_actor", fake_get_or_create)
    return router


async def _choose(router, candidates, request) -> List[List[Any]]:
    return await asyncio.wait_for(
        router.choose_replicas(candidates, request), timeout=10
    )


def _ids(ranks) -> List[List[str]]:
    return [[r.replica_id.unique_id for r in rank] for rank in ranks]


async def test_router_routes_to_token_and_releases_on_completion(monkeypatch):
    fake = FakeManagerHandle(max_tokens_per_replica=1)
    router = _fake_router(monkeypatch, [fake], max_tokens_per_replica=1)
    replicas = _fake_replicas("r1", "r2")
    router.update_replicas(replicas)

    first = await _choose(router, replicas, _request("q1"))
    second = await _choose(router, replicas, _request("q2"))
    assert sorted(_ids(first) + _ids(second)) == [["r1"], ["r2"]]
    # The constructor argument and the replicas reach the manager.
    assert router.controller_calls == [(MANAGER_ACTOR_NAME, (1,), False)]
    # The router's own limit goes with every acquire.
    fake.manager._max_tokens_per_replica = 100
    assert _ids(await _choose(router, replicas, _request("q3"))) == [["r1", "r2"]]
    fake.manager._max_tokens_per_replica = 1
    assert "set_replicas" in fake.calls
    assert fake.manager.stats()["held"] == {"r1": 1, "r2": 1}

    # Both at the limit: all candidates, Serve's queue lengths decide.
    assert _ids(await _choose(router, replicas, _request("q3"))) == [["r1", "r2"]]
    # A completion reported for another replica does not release the token.
    other = "r2" if _ids(first) == [["r1"]] else "r1"
    router.on_request_completed(
        ReplicaID(unique_id=other, deployment_id=FAKE_DEPLOYMENT_ID), "q1"
    )
    assert fake.manager.stats()["releases"] == 0
    for rid in ("q1", "q2"):
        replica = (first if rid == "q1" else second)[0][0]
        router.on_request_completed(replica.replica_id, rid)
    assert fake.manager.stats()["held"] == {"r1": 0, "r2": 0}
    assert fake.manager.stats()["releases"] == 2


async def test_router_reentry_releases_previous_token(monkeypatch):
    fake = FakeManagerHandle(max_tokens_per_replica=1)
    router = _fake_router(monkeypatch, [fake], max_tokens_per_replica=1)
    replicas = _fake_replicas("r1")
    router.update_replicas(replicas)
    request = _request("q1")
    assert _ids(await _choose(router, replicas, request)) == [["r1"]]
    # Serve asks again for the same request (e.g. the replica was full).
    assert _ids(await _choose(router, replicas, request)) == [["r1"]]
    stats = fake.manager.stats()
    assert stats["held"] == {"r1": 1} and stats["grants"] == 2


async def test_router_releases_token_of_cancelled_request(monkeypatch):
    fake = FakeManagerHandle()
    router = _fake_router(monkeypatch, [fake])
    replicas = _fake_replicas("r1")
    router.update_replicas(replicas)
    request = _request("q1")
    await _choose(router, replicas, request)
    assert fake.manager.stats()["held"] == {"r1": 1}
    request.future.cancel()
    await asyncio.sleep(0)
    assert fake.manager.stats()["held"] == {"r1": 0}


async def test_router_falls_back_when_manager_hangs(monkeypatch):
    fake = FakeManagerHandle()
    router = _fake_router(
        monkeypatch, [fake], manager_timeout_s=0.2, manager_retry_interval_s=0.5
    )
    replicas = _fake_replicas("r1", "r2")
    router.update_replicas(replicas)
    fake.mode = "hang"
    start = time.monotonic()
    assert _ids(await _choose(router, replicas, _request("q1"))) == [["r1", "r2"]]
    assert time.monotonic() - start < 5
    # Within the retry interval the manager is not asked at all.
    n_calls = len(fake.calls)
    assert _ids(await _choose(router, replicas, _request("q2"))) == [["r1", "r2"]]
    assert len(fake.calls) == n_calls
    # The late grant of the timed-out acquire is given back.
    fake.finish_hung()
    await asyncio.sleep(0.05)
    assert sum(fake.manager.stats()["held"].values()) == 0
    assert fake.manager.stats()["grants"] == 1
    # After the interval the manager is used again.
    fake.mode = "ok"
    await asyncio.sleep(0.5)
    assert len(_ids(await _choose(router, replicas, _request("q3")))[0]) == 1


async def test_router_re_resolves_dead_manager(monkeypatch):
    dead, live = FakeManagerHandle(), FakeManagerHandle()
    dead.mode = "dead"
    router = _fake_router(
        monkeypatch, [dead, live], manager_timeout_s=1.0, manager_retry_interval_s=0
    )
    replicas = _fake_replicas("r1", "r2")
    router.update_replicas(replicas)
    assert _ids(await _choose(router, replicas, _request("q1"))) == [["r1", "r2"]]
    assert len(_ids(await _choose(router, replicas, _request("q2")))[0]) == 1
    assert [c[2] for c in router.controller_calls] == [False, True]
    # The recreated manager learned the replicas.
    assert set(live.manager.stats()["held"]) == {"r1", "r2"}


async def test_router_falls_back_when_controller_fails(monkeypatch):
    router = _fake_router(monkeypatch, [], manager_retry_interval_s=0)

    async def failing(*args, **kwargs):
        raise ValueError("deployment is being deleted")

    monkeypatch.setattr(router, "get_or_create_deployment_actor", failing)
    replicas = _fake_replicas("r1")
    router.update_replicas(replicas)
    assert _ids(await _choose(router, replicas, _request("q1"))) == [["r1"]]
    # Without a request there is nothing to hold a token for.
    assert _ids(await _choose(router, replicas, None)) == [["r1"]]


async def test_router_falls_back_when_controller_hangs(monkeypatch):
    router = _fake_router(monkeypatch, [], manager_timeout_s=0.2)
    resolving = asyncio.Event()

    async def hanging(*args, **kwargs):
        resolving.set()
        await asyncio.sleep(3600)

    monkeypatch.setattr(router, "get_or_create_deployment_actor", hanging)
    replicas = _fake_replicas("r1", "r2")
    router.update_replicas(replicas)
    start = time.monotonic()
    assert _ids(await _choose(router, replicas, _request("q1"))) == [["r1", "r2"]]
    assert resolving.is_set()
    assert time.monotonic() - start < 5
    router._resolve_task.cancel()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_tokens_per_replica": 0},
        {"manager_timeout_s": 0},
        {"manager_retry_interval_s": -1},
    ],
)
def test_router_rejects_bad_kwargs(kwargs):
    router = RoutingTokenRouter(
        deployment_id=FAKE_DEPLOYMENT_ID,
        handle_source=DeploymentHandleSource.REPLICA,
    )
    with pytest.raises(ValueError):
        router.initialize_state(**kwargs)


# --------------------------------------------------------------------------- #
# A real deployment
# --------------------------------------------------------------------------- #

APP = "token_app"
DEPLOYMENT = "TokenModel"
DEPLOYMENT_ID = DeploymentID(name=DEPLOYMENT, app_name=APP)
MAX_TOKENS = 3
NUM_REQUESTS = 40
REQUEST_SLEEP_S = 0.3


@serve.deployment(
    num_replicas=2,
    max_ongoing_requests=100,
    ray_actor_options={"num_cpus": 0},
    request_router_config=RequestRouterConfig(
        request_router_class=RoutingTokenRouter,
        request_router_kwargs={
            "max_tokens_per_replica": MAX_TOKENS,
            # Generous, for a loaded machine; a dead manager fails fast anyway.
            "manager_timeout_s": 10.0,
            "manager_retry_interval_s": 0.2,
        },
    ),
)
class TokenModel:
    async def __call__(self, arg: Union[float, Request] = 0.0) -> str:
        if isinstance(arg, Request):
            arg = float(arg.query_params.get("sleep_s", 0.0))
        await asyncio.sleep(arg)
        return serve.get_replica_context().replica_id.unique_id


def _manager_ray_name() -> str:
    return get_deployment_scoped_actor_name(DEPLOYMENT_ID, MANAGER_ACTOR_NAME)


def _manager():
    return ray.get_actor(_manager_ray_name(), namespace=SERVE_NAMESPACE)


def _manager_or_none():
    try:
        return _manager()
    except ValueError:
        return None


def _stats(manager=None) -> Dict[str, Any]:
    return ray.get((manager or _manager()).stats.remote(), timeout=TIMEOUT_S)


def _details() -> Dict[str, Any]:
    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    details = ray.get(controller.get_serve_instance_details.remote(), timeout=TIMEOUT_S)
    deployment = details["applications"][APP]["deployments"][DEPLOYMENT]
    return {a["name"]: a for a in deployment["deployment_actors"]}


def _status_actors() -> Dict[str, Dict[str, Any]]:
    """The deployment's actors in ``serve.status()``, by name."""
    deployment = serve.status().applications[APP].deployments[DEPLOYMENT]
    return dict(deployment.deployment_actors)


def _burst(handle, n: int, sleep_s: float = REQUEST_SLEEP_S) -> List[str]:
    """Send ``n`` requests at once; return the replica that served each."""
    responses = [handle.remote(sleep_s) for _ in range(n)]
    return [r.result(timeout_s=TIMEOUT_S) for r in responses]


def _http_burst(n: int, sleep_s: float = REQUEST_SLEEP_S) -> List[str]:
    """Send ``n`` requests at once through the HTTP proxy (its own router)."""
    url = get_application_url("HTTP", app_name=APP)

    async def burst() -> List[str]:
        async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
            responses = await asyncio.gather(
                *(client.get(url, params={"sleep_s": sleep_s}) for _ in range(n))
            )
        assert all(r.status_code == 200 for r in responses), responses
        return [r.text for r in responses]

    return asyncio.run(burst())


def _all_released(manager=None) -> bool:
    stats = _stats(manager)
    return sum(stats["held"].values()) == 0


def _deploy(route_prefix: Optional[str] = None):
    handle = serve.run(TokenModel.bind(), name=APP, route_prefix=route_prefix)
    # The first request creates the manager; wait until it grants tokens.
    replica_ids = set()

    def manager_grants() -> bool:
        replica_ids.add(handle.remote().result(timeout_s=TIMEOUT_S))
        manager = _manager_or_none()
        return manager is not None and _stats(manager)["grants"] > 0

    wait_for_condition(manager_grants, timeout=TIMEOUT_S, retry_interval_ms=200)
    return handle


def test_tokens_bound_concurrency_per_replica(serve_instance):
    handle = _deploy(route_prefix="/tokens")
    served = _burst(handle, NUM_REQUESTS)
    assert len(served) == NUM_REQUESTS
    replica_ids = set(served)
    assert len(replica_ids) == 2

    manager = _manager()
    wait_for_condition(
        lambda: _all_released(manager), timeout=TIMEOUT_S, retry_interval_ms=200
    )
    grants_from_handle = _stats(manager)["grants"]

    # The HTTP proxy's router shares the same manager (and its limit).
    def proxy_router_grants() -> bool:
        assert set(_http_burst(NUM_REQUESTS // 2)) <= replica_ids
        return _stats(manager)["grants"] > grants_from_handle

    wait_for_condition(proxy_router_grants, timeout=TIMEOUT_S, retry_interval_ms=200)
    # Both at once: a handle burst and an HTTP burst.
    with ThreadPoolExecutor(1) as pool:
        http = pool.submit(_http_burst, NUM_REQUESTS)
        assert len(_burst(handle, NUM_REQUESTS)) == NUM_REQUESTS
        assert len(http.result(timeout=TIMEOUT_S)) == NUM_REQUESTS
    wait_for_condition(
        lambda: _all_released(manager), timeout=TIMEOUT_S, retry_interval_ms=200
    )
    stats = _stats(manager)
    # set_replicas reached the manager: it knows exactly the two replicas.
    assert set(stats["held"]) == replica_ids
    assert all(n <= MAX_TOKENS for n in stats["max_held"].values()), stats
    # Concurrency built up: some replica hit the limit and requests were denied
    # (and then routed without a token, successfully).
    assert max(stats["max_held"].values()) == MAX_TOKENS, stats
    assert stats["denials"] > 0, stats
    assert stats["grants"] >= MAX_TOKENS, stats
    assert stats["releases"] == stats["grants"], stats

    # A deployment-scoped actor the controller owns, visible in Serve's status.
    status = _status_actors()
    assert list(status) == [MANAGER_ACTOR_NAME]
    assert status[MANAGER_ACTOR_NAME]["state"] == "RUNNING"
    assert status[MANAGER_ACTOR_NAME]["actor_id"] == manager._actor_id.hex()
    assert status[MANAGER_ACTOR_NAME]["created_by"] == "api"
    details = _details()[MANAGER_ACTOR_NAME]
    assert details["actor_name"] == _manager_ray_name()
    assert details["actor_name"] == (
        f"SERVE_DEPLOYMENT_ACTOR::{APP}::{DEPLOYMENT}::{MANAGER_ACTOR_NAME}"
    )
    assert details["actor_id"] == manager._actor_id.hex()
    assert details["created_by"] == "api"
    assert details["actor_class"] == (
        "ray.serve.experimental.routing_token_router:RoutingTokenManager"
    )

    # Deleting the app kills the manager.
    serve.delete(APP)
    wait_for_condition(
        lambda: _manager_or_none() is None, timeout=TIMEOUT_S, retry_interval_ms=200
    )


def test_manager_survives_controller_restart_and_redeploy(serve_instance):
    handle = _deploy()
    manager_id = _manager()._actor_id.hex()
    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    old_pid = ray.get(controller.get_pid.remote(), timeout=TIMEOUT_S)
    ray.kill(controller, no_restart=False)
    # Routing needs neither the controller nor a new manager.
    assert len(_burst(handle, NUM_REQUESTS // 2)) == NUM_REQUESTS // 2

    def controller_restarted() -> bool:
        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        return ray.get(controller.get_pid.remote(), timeout=5) != old_pid

    wait_for_condition(controller_restarted, timeout=TIMEOUT_S, retry_interval_ms=500)
    # The restarted controller re-adopted the same actor.
    wait_for_condition(
        lambda: _details()[MANAGER_ACTOR_NAME]["state"] == "RUNNING",
        timeout=TIMEOUT_S,
        retry_interval_ms=200,
    )
    assert _details()[MANAGER_ACTOR_NAME]["actor_id"] == manager_id
    assert _manager()._actor_id.hex() == manager_id

    # A redeploy that replaces the replicas (a rolling update) keeps the
    # manager; the routers move it onto the new replicas.
    old_replicas = set(_stats()["held"])
    new_options = {"num_cpus": 0, "runtime_env": {"env_vars": {"TOKEN_MODEL": "2"}}}
    serve.run(
        TokenModel.options(ray_actor_options=new_options).bind(),
        name=APP,
        route_prefix=None,
    )
    new_replicas = set(_burst(handle, NUM_REQUESTS // 2))
    assert not new_replicas & old_replicas
    assert _manager()._actor_id.hex() == manager_id
    wait_for_condition(
        lambda: set(_stats()["held"]) == new_replicas and _all_released(),
        timeout=TIMEOUT_S,
        retry_interval_ms=200,
    )


def test_requests_survive_manager_death(serve_instance):
    handle = _deploy()
    old = _manager()
    old_id = old._actor_id.hex()
    ray.kill(old, no_restart=True)

    # Requests never fail because of the manager.
    assert len(_burst(handle, NUM_REQUESTS // 2, sleep_s=0.05)) == NUM_REQUESTS // 2

    # The controller recreates it under the same name (a new actor).
    def recreated() -> bool:
        manager = _manager_or_none()
        if manager is None or manager._actor_id.hex() == old_id:
            return False
        ray.get(manager.__ray_ready__.remote(), timeout=TIMEOUT_S)
        return True

    wait_for_condition(recreated, timeout=TIMEOUT_S, retry_interval_ms=200)
    new = _manager()
    assert new._actor_id.hex() != old_id

    # The router re-resolves it and takes tokens from the new manager.
    def new_manager_grants() -> bool:
        _burst(handle, 4, sleep_s=0.0)
        return _stats(new)["grants"] > 0

    wait_for_condition(new_manager_grants, timeout=TIMEOUT_S, retry_interval_ms=200)
    assert len(_burst(handle, NUM_REQUESTS)) == NUM_REQUESTS
    wait_for_condition(
        lambda: _all_released(new), timeout=TIMEOUT_S, retry_interval_ms=200
    )
    stats = _stats(new)
    assert all(n <= MAX_TOKENS for n in stats["max_held"].values()), stats

    details = _details()[MANAGER_ACTOR_NAME]
    assert details["actor_id"] == new._actor_id.hex()
    assert details["restarts"] >= 1
    assert details["state"] == "RUNNING"
    assert _status_actors()[MANAGER_ACTOR_NAME]["actor_id"] == new._actor_id.hex()


if __name__ == "__main__":
    sys.exit(pytest.main(["-v", "-s", __file__]))
