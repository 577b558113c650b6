"""Integration tests of controller-managed deployment-scoped actors (#60359).

Everything here is real: a local Ray cluster, the Serve controller, its KV store
in the GCS, and kills of the controller, of actors and of nodes. The tests call
``ServeController.get_or_create_deployment_actor`` and
``get_deployment_actor_handle`` as request routers and replicas do, and check
the results through Ray itself (named actors, actor ids, the KV store) as well
as through ``serve.status()`` and the instance details.
"""

import asyncio
import os
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional

import pytest

import ray
from ray import cloudpickle, serve
from ray._common.test_utils import SignalActor, wait_for_condition
from ray.exceptions import RayActorError
from ray.experimental.internal_kv import _internal_kv_get
from ray.serve._private.common import DeploymentID
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
from ray.serve._private.deployment_scoped_actor_constants import (
    DEPLOYMENT_SCOPED_ACTORS_CHECKPOINT_KEY,
)
from ray.serve._private.deployment_scoped_actor_utils import (
    get_deployment_actor_async,
    get_deployment_scoped_actor_name,
    get_or_create_deployment_actor_async,
)
from ray.serve._private.exceptions import DeploymentIsBeingDeletedError
from ray.serve._private.storage.kv_store import (
    SERVE_INTERNAL_KV_NAMESPACE,
    RayInternalKVStore,
)
from ray.serve._private.utils import get_deployment_actor_name
from ray.serve.config import DeploymentActorConfig

# The checkpoint key the feature promises (checked against the constant below).
CHECKPOINT_KEY = "serve-deployment-scoped-actors-checkpoint"
SCOPED_PREFIX = "SERVE_DEPLOYMENT_ACTOR::"
# Namespace of the helper actors the tests create themselves.
TEST_NAMESPACE = "dsa_test_helpers"
# Generous: the tests may share a 2-core machine with other Ray clusters.
TIMEOUT_S = 60

APP = "main"
TARGET_ID = DeploymentID(name="Target", app_name=APP)


# --------------------------------------------------------------------------- #
# Actor classes
# --------------------------------------------------------------------------- #


@ray.remote(num_cpus=0)
class Tracker:
    """Records events (constructor runs, destructor outcomes) for assertions."""

    def __init__(self):
        self._events: List[str] = []

    def record(self, event: str) -> None:
        self._events.append(event)

    def events(self) -> List[str]:
        return list(self._events)


def _record(tracker_name: Optional[str], event: str) -> None:
    if tracker_name is not None:
        tracker = ray.get_actor(tracker_name, namespace=TEST_NAMESPACE)
        ray.get(tracker.record.remote(event))


@ray.remote(num_cpus=0)
class Counter:
    """A deployment actor with state, a creation token and its node."""

    def __init__(self, start: int = 0, tracker_name: Optional[str] = None):
        self._value = start
        self._token = uuid.uuid4().hex
        _record(tracker_name, f"init:{self._token}")

    def incr(self, by: int = 1) -> int:
        self._value += by
        return self._value

    def value(self) -> int:
        return self._value

    def token(self) -> str:
        return self._token

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()


@ray.remote(num_cpus=0)
class OtherActor:
    """A different class, to request an existing name with."""

    def ping(self) -> str:
        return "pong"


@ray.remote(num_cpus=0)
class FailingActor:
    """Its constructor always raises (after recording the attempt)."""

    def __init__(self, tracker_name: Optional[str] = None):
        _record(tracker_name, "attempt")
        raise RuntimeError("FailingActor constructor always fails")


@ray.remote(num_cpus=0)
class DeclaredActor:
    """The actor class of a declarative ``deployment_actors`` entry."""

    def __init__(self, greeting: str = "hi"):
        self._greeting = greeting

    def greet(self) -> str:
        return self._greeting


class PicklesOnce:
    """Pickles on the driver, but not again once unpickled (in the controller)."""

    def __init__(self, unpickled: bool = False):
        self.unpickled = unpickled

    def __reduce__(self):
        if self.unpickled:
            raise TypeError("PicklesOnce cannot be pickled a second time")
        return (PicklesOnce, (True,))


# --------------------------------------------------------------------------- #
# Deployments
# --------------------------------------------------------------------------- #


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Target:
    """The deployment that owns most of the actors under test."""

    def __call__(self) -> str:
        return "target-ok"


@serve.deployment(
    num_replicas=2, max_ongoing_requests=32, ray_actor_options={"num_cpus": 0}
)
class Caller:
    """Ingress that asks the controller for actors from inside its replicas."""

    def __init__(self, target):
        self._target = target

    async def ping(self) -> str:
        return await self._target.remote()

    async def get_or_create(
        self,
        app_name: str,
        deployment_name: str,
        actor_name: str,
        tracker_name: Optional[str],
        signal=None,
    ) -> str:
        if signal is not None:
            await signal.wait.remote()
        handle = await get_or_create_deployment_actor_async(
            DeploymentID(name=deployment_name, app_name=app_name),
            actor_name,
            Counter,
            0,
            tracker_name,
            timeout_s=TIMEOUT_S,
        )
        return handle._actor_id.hex()


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Owner:
    """Uses its own deployment actor, also from its destructor."""

    def __init__(self, tracker_name: str):
        self._tracker_name = tracker_name
        self._actor = None

    async def __call__(self) -> int:
        ctx = serve.get_replica_context()
        self._actor = await get_or_create_deployment_actor_async(
            DeploymentID(name=ctx.deployment, app_name=ctx.app_name),
            "owned",
            Counter,
            0,
        )
        return await self._actor.incr.remote()

    def __del__(self):
        actor, self._actor = getattr(self, "_actor", None), None
        if actor is None:
            return
        try:
            ray.get(actor.value.remote(), timeout=15)
            outcome = "alive"
        except RayActorError:
            outcome = "dead"
        except Exception as e:
            outcome = f"error:{type(e).__name__}"
        _record(self._tracker_name, f"del:{outcome}")


@serve.deployment(
    ray_actor_options={"num_cpus": 0},
    graceful_shutdown_timeout_s=60,
    graceful_shutdown_wait_loop_s=0.1,
)
class Blocker:
    """Holds a request until signalled, so deleting it takes a while."""

    async def __call__(self, signal) -> str:
        await signal.wait.remote()
        return "released"


@serve.deployment(ray_actor_options={"num_cpus": 0})
class UsesDeclared:
    """Reads its declarative deployment actor through the upstream API."""

    async def __call__(self) -> Dict[str, str]:
        actor = serve.get_deployment_actor("d")
        return {
            "greeting": await actor.greet.remote(),
            "actor_id": actor._actor_id.hex(),
        }


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #


def _controller():
    return ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)


def _get_or_create(
    deployment_id: DeploymentID, actor_name: str, actor_class: Any, *args, **kwargs
):
    return ray.get(
        _controller().get_or_create_deployment_actor.remote(
            deployment_id, actor_name, actor_class, *args, **kwargs
        ),
        timeout=TIMEOUT_S,
    )


def _get_handle(deployment_id: DeploymentID, actor_name: str):
    return ray.get(
        _controller().get_deployment_actor_handle.remote(deployment_id, actor_name),
        timeout=TIMEOUT_S,
    )


def _actor_id(handle) -> str:
    return handle._actor_id.hex()


def _expected_ray_name(deployment_id: DeploymentID, actor_name: str) -> str:
    """The documented Ray actor name, computed independently of the module."""

    def esc(component: str) -> str:
        return component.replace("%", "%25").replace(":", "%3A")

    return (
        f"{SCOPED_PREFIX}{esc(deployment_id.app_name)}::"
        f"{esc(deployment_id.name)}::{actor_name}"
    )


def _serve_actor_names() -> List[str]:
    return [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == SERVE_NAMESPACE
    ]


def _scoped_actor_names() -> List[str]:
    return sorted(n for n in _serve_actor_names() if n.startswith(SCOPED_PREFIX))


def _name_is_free(ray_name: str) -> bool:
    try:
        ray.get_actor(ray_name, namespace=SERVE_NAMESPACE)
        return False
    except ValueError:
        return True


def _is_dead(handle) -> bool:
    try:
        ray.get(handle.__ray_ready__.remote(), timeout=10)
        return False
    except RayActorError:
        return True


def _controller_namespace() -> str:
    """The controller's Ray namespace (that of the job that started Serve)."""
    return ray.get(
        _controller().__ray_call__.remote(
            lambda _: ray.get_runtime_context().namespace
        ),
        timeout=TIMEOUT_S,
    )


def _read_checkpoint(
    controller_namespace: Optional[str] = None,
) -> Dict[DeploymentID, Dict[str, DeploymentActorConfig]]:
    """The controller's checkpoint, read from the GCS KV store directly.

    Args:
        controller_namespace: The controller's Ray namespace; asked from the
            controller when not given.
    """
    # The controller's RayInternalKVStore is namespaced "ray-serve-<the
    # controller's Ray namespace>" and prefixes every key with it.
    if controller_namespace is None:
        controller_namespace = _controller_namespace()
    key = RayInternalKVStore(f"ray-serve-{controller_namespace}").get_storage_key(
        CHECKPOINT_KEY
    )
    raw = _internal_kv_get(key, namespace=SERVE_INTERNAL_KV_NAMESPACE)
    return cloudpickle.loads(raw) if raw is not None else {}


def _details_list(app_name: str, deployment_name: str) -> List[Dict[str, Any]]:
    """Deployment actors in the instance details, as listed."""
    details = ray.get(
        _controller().get_serve_instance_details.remote(), timeout=TIMEOUT_S
    )
    deployment = details["applications"][app_name]["deployments"][deployment_name]
    return deployment["deployment_actors"]


def _details(app_name: str, deployment_name: str) -> Dict[str, Dict[str, Any]]:
    """Deployment actors in the instance details, by name."""
    entries = _details_list(app_name, deployment_name)
    by_name = {a["name"]: a for a in entries}
    assert len(by_name) == len(entries), f"duplicate names: {entries}"
    return by_name


def _status_actors(app_name: str, deployment_name: str) -> Dict[str, str]:
    """Deployment actors in ``serve.status()``, name -> state."""
    app = serve.status().applications[app_name]
    actors = app.deployments[deployment_name].deployment_actors
    # Each entry is a summary dict with the state (or the bare state string).
    return {
        name: info["state"] if isinstance(info, dict) else info
        for name, info in actors.items()
    }


def _kill_controller_and_wait(while_down: Optional[Callable[[], None]] = None) -> None:
    """Kill the controller (Ray restarts it) and wait for the new instance.

    Args:
        while_down: Called right after the kill, before the new instance is up.
    """
    controller = _controller()
    old_pid = ray.get(controller.get_pid.remote(), timeout=TIMEOUT_S)
    ray.kill(controller, no_restart=False)
    if while_down is not None:
        while_down()

    def restarted() -> bool:
        pid = ray.get(_controller().get_pid.remote(), timeout=5)
        return pid != old_pid

    wait_for_condition(restarted, timeout=TIMEOUT_S, retry_interval_ms=200)


def _deploy_main_app():
    """App ``main``: ingress ``Caller`` (2 replicas) in front of ``Target``."""
    return serve.run(Caller.bind(Target.bind()), name=APP, route_prefix=None)


@pytest.fixture
def tracker_name(ray_instance):
    """A Tracker actor, named so deployment actors can find it."""
    name = f"tracker-{uuid.uuid4().hex[:8]}"
    tracker = Tracker.options(name=name, namespace=TEST_NAMESPACE).remote()
    ray.get(tracker.events.remote())
    yield name
    ray.kill(tracker, no_restart=True)


def _events(name: str) -> List[str]:
    return ray.get(
        ray.get_actor(name, namespace=TEST_NAMESPACE).events.remote(), timeout=TIMEOUT_S
    )


# --------------------------------------------------------------------------- #
# Tests
# --------------------------------------------------------------------------- #


def test_concurrent_callers_get_one_actor(serve_instance, tracker_name):
    """24 callers at once (driver threads, driver refs, replicas) -> one actor."""
    handle = _deploy_main_app()
    controller = _controller()
    signal = SignalActor.remote()
    n = 8

    # Callers inside Caller's replicas, parked on the signal.
    replica_responses = [
        handle.get_or_create.remote(APP, "Target", "race", tracker_name, signal)
        for _ in range(n)
    ]
    wait_for_condition(
        lambda: ray.get(signal.cur_num_waiters.remote()) == n, timeout=TIMEOUT_S
    )

    barrier = threading.Barrier(n + 1)

    def driver_thread_call() -> str:
        barrier.wait(timeout=TIMEOUT_S)
        return _actor_id(_get_or_create(TARGET_ID, "race", Counter, 0, tracker_name))

    with ThreadPoolExecutor(max_workers=n) as pool:
        futures = [pool.submit(driver_thread_call) for _ in range(n)]
        barrier.wait(timeout=TIMEOUT_S)
        signal.send.remote()
        refs = [
            controller.get_or_create_deployment_actor.remote(
                TARGET_ID, "race", Counter, 0, tracker_name
            )
            for _ in range(n)
        ]
        ids = [f.result(timeout=TIMEOUT_S) for f in futures]
    ids += [_actor_id(h) for h in ray.get(refs, timeout=TIMEOUT_S)]
    ids += [r.result(timeout_s=TIMEOUT_S) for r in replica_responses]

    assert len(ids) == 3 * n
    assert len(set(ids)) == 1, f"callers got different actors: {set(ids)}"

    ray_name = _expected_ray_name(TARGET_ID, "race")
    assert [x for x in _scoped_actor_names() if "::Target::" in x] == [ray_name]
    assert _actor_id(ray.get_actor(ray_name, namespace=SERVE_NAMESPACE)) == ids[0]

    # The constructor ran exactly once, in the actor all callers hold.
    token = ray.get(_get_handle(TARGET_ID, "race").token.remote(), timeout=TIMEOUT_S)
    assert _events(tracker_name) == [f"init:{token}"]

    wait_for_condition(
        lambda: _status_actors(APP, "Target") == {"race": "RUNNING"}, timeout=TIMEOUT_S
    )
    details = _details(APP, "Target")
    assert list(details) == ["race"]
    assert details["race"]["actor_id"] == ids[0]
    assert details["race"]["created_by"] == "api"
    assert details["race"]["actor_name"] == ray_name


def test_actor_names_are_injective(serve_instance):
    """'a::b'/'c' vs 'a'/'b::c', and '%' vs ':' in app names, never collide."""
    deployment_ids = [
        DeploymentID(name="c", app_name="a::b"),
        DeploymentID(name="b::c", app_name="a"),
        DeploymentID(name="D", app_name="x%3Ay"),
        DeploymentID(name="D", app_name="x:y"),
    ]
    for dep_id in deployment_ids:
        serve.run(
            Target.options(name=dep_id.name).bind(),
            name=dep_id.app_name,
            route_prefix=None,
        )

    handles = {
        dep_id: _get_or_create(dep_id, "shared", Counter, i)
        for i, dep_id in enumerate(deployment_ids)
    }
    actor_ids = {dep_id: _actor_id(h) for dep_id, h in handles.items()}
    assert len(set(actor_ids.values())) == len(deployment_ids)

    expected_names = {
        dep_id: _expected_ray_name(dep_id, "shared") for dep_id in handles
    }
    assert len(set(expected_names.values())) == len(deployment_ids)
    assert set(_scoped_actor_names()) == set(expected_names.values())
    for i, dep_id in enumerate(deployment_ids):
        ray_name = expected_names[dep_id]
        assert get_deployment_scoped_actor_name(dep_id, "shared") == ray_name
        named = ray.get_actor(ray_name, namespace=SERVE_NAMESPACE)
        assert _actor_id(named) == actor_ids[dep_id]
        assert ray.get(named.value.remote()) == i
        assert _actor_id(_get_handle(dep_id, "shared")) == actor_ids[dep_id]

    # Recovery parses these names back: a wrong parse would kill them as
    # unaccounted for or adopt the wrong one.
    _kill_controller_and_wait()
    for i, dep_id in enumerate(deployment_ids):
        assert _actor_id(_get_or_create(dep_id, "shared", Counter, 99)) == (
            actor_ids[dep_id]
        )
        assert ray.get(handles[dep_id].value.remote()) == i
    assert set(_scoped_actor_names()) == set(expected_names.values())

    # Deleting one app removes only its own actor.
    serve.delete("x:y")
    gone = expected_names[DeploymentID(name="D", app_name="x:y")]
    wait_for_condition(lambda: gone not in _scoped_actor_names(), timeout=TIMEOUT_S)
    assert set(_scoped_actor_names()) == set(expected_names.values()) - {gone}


def test_checkpoint_in_kv_store(serve_instance):
    """The controller's KV store holds what recovery needs, and only that."""
    assert DEPLOYMENT_SCOPED_ACTORS_CHECKPOINT_KEY == CHECKPOINT_KEY
    _deploy_main_app()
    assert TARGET_ID not in _read_checkpoint()

    # Controller-owned options (name, namespace, lifetime) are ignored.
    cls = Counter.options(
        num_cpus=0, max_concurrency=3, name="not-this-name", namespace="nor-this"
    )
    first = _get_or_create(TARGET_ID, "ckpt-args", cls, 5)
    second = _get_or_create(TARGET_ID, "ckpt-kwargs", Counter, start=7)
    assert ray.get([first.value.remote(), second.value.remote()]) == [5, 7]
    assert not any(
        a["name"] == "not-this-name"
        for a in ray.util.list_named_actors(all_namespaces=True)
    )

    checkpoint = _read_checkpoint()
    assert set(checkpoint[TARGET_ID]) == {"ckpt-args", "ckpt-kwargs"}
    by_args = checkpoint[TARGET_ID]["ckpt-args"]
    assert by_args.name == "ckpt-args"
    assert by_args.actor_class == f"{Counter.__ray_actor_class__.__module__}:Counter"
    assert tuple(by_args.init_args) == (5,)
    assert by_args.init_kwargs == {}
    assert by_args.actor_options.get("max_concurrency") == 3
    assert by_args.actor_options.get("num_cpus") == 0
    for owned in ("name", "namespace", "lifetime"):
        assert owned not in by_args.actor_options
    by_kwargs = checkpoint[TARGET_ID]["ckpt-kwargs"]
    assert tuple(by_kwargs.init_args) == ()
    assert by_kwargs.init_kwargs == {"start": 7}

    # The async helpers read the same actor.
    looked_up = asyncio.run(get_deployment_actor_async(TARGET_ID, "ckpt-args"))
    assert _actor_id(looked_up) == _actor_id(first)

    serve.delete(APP)
    wait_for_condition(lambda: TARGET_ID not in _read_checkpoint(), timeout=TIMEOUT_S)


def test_survives_controller_restarts(serve_instance, tracker_name):
    """Same actor and state across 3 controller kills; deleting the app kills it."""
    _deploy_main_app()
    handle = _get_or_create(TARGET_ID, "durable", Counter, 100, tracker_name)
    actor_id = _actor_id(handle)
    ray_name = _expected_ray_name(TARGET_ID, "durable")

    for i in range(3):
        expected = ray.get(handle.incr.remote())
        assert expected == 101 + i
        _kill_controller_and_wait()

        again = _get_or_create(TARGET_ID, "durable", Counter, 0, tracker_name)
        assert _actor_id(again) == actor_id
        assert ray.get(again.value.remote()) == expected
        wait_for_condition(
            lambda: _status_actors(APP, "Target") == {"durable": "RUNNING"},
            timeout=TIMEOUT_S,
        )
        entry = _details(APP, "Target")["durable"]
        assert entry["actor_id"] == actor_id
        assert entry["restarts"] == 0
        # A different class is still refused after recovery.
        with pytest.raises(ValueError, match="different class"):
            _get_or_create(TARGET_ID, "durable", OtherActor)

    # Never reconstructed: one constructor run over all restarts.
    assert len(_events(tracker_name)) == 1

    serve.delete(APP)
    wait_for_condition(lambda: _is_dead(handle), timeout=TIMEOUT_S)
    wait_for_condition(lambda: _name_is_free(ray_name), timeout=TIMEOUT_S)


def test_unaccounted_actors_killed_on_recovery(serve_instance):
    """Runtime-shaped actors missing from the checkpoint die; declarative live."""
    _deploy_main_app()
    kept = _get_or_create(TARGET_ID, "kept", Counter, 1)

    rogue_name = _expected_ray_name(TARGET_ID, "rogue")
    ghost_id = DeploymentID(name="Ghost", app_name="nowhere")
    ghost_name = _expected_ray_name(ghost_id, "rogue")
    declarative_name = get_deployment_actor_name(
        TARGET_ID, "decl", code_version="abc123"
    )
    direct = {
        name: Counter.options(
            name=name, namespace=SERVE_NAMESPACE, lifetime="detached"
        ).remote(3)
        for name in (rogue_name, ghost_name, declarative_name)
    }
    try:
        assert ray.get([h.value.remote() for h in direct.values()]) == [3, 3, 3]
        _kill_controller_and_wait()

        wait_for_condition(lambda: _is_dead(direct[rogue_name]), timeout=TIMEOUT_S)
        wait_for_condition(lambda: _is_dead(direct[ghost_name]), timeout=TIMEOUT_S)
        wait_for_condition(lambda: _name_is_free(rogue_name), timeout=TIMEOUT_S)
        assert ray.get(direct[declarative_name].value.remote()) == 3
        assert declarative_name in _serve_actor_names()
        assert ray.get(kept.value.remote()) == 1
        assert _actor_id(_get_or_create(TARGET_ID, "kept", Counter)) == (
            _actor_id(kept)
        )
        # Its name is free for the API now, which creates a fresh actor.
        fresh = _get_or_create(TARGET_ID, "rogue", Counter, 11)
        assert ray.get(fresh.value.remote()) == 11
    finally:
        for h in direct.values():
            ray.kill(h, no_restart=True)
    wait_for_condition(lambda: _name_is_free(declarative_name), timeout=TIMEOUT_S)


def test_deleting_deployments_kills_their_actors(serve_instance, tracker_name):
    """serve.delete and redeploys without the deployment kill its actors."""
    app = "owner_app"
    owner_id = DeploymentID(name="Owner", app_name=app)
    ray_name = _expected_ray_name(owner_id, "owned")

    handle = serve.run(Owner.bind(tracker_name), name=app, route_prefix=None)
    assert handle.remote().result() == 1
    assert handle.remote().result() == 2
    first = _get_handle(owner_id, "owned")

    serve.delete(app)
    wait_for_condition(lambda: _is_dead(first), timeout=TIMEOUT_S)
    wait_for_condition(lambda: _name_is_free(ray_name), timeout=TIMEOUT_S)
    # The replica's destructor still reached the actor: it was killed only
    # after the replicas had stopped.
    assert _events(tracker_name) == ["del:alive"]
    assert owner_id not in _read_checkpoint()

    # Redeploying starts from scratch: new actor, fresh state.
    handle = serve.run(Owner.bind(tracker_name), name=app, route_prefix=None)
    assert handle.remote().result() == 1
    second = _get_handle(owner_id, "owned")
    assert _actor_id(second) != _actor_id(first)

    # Redeploying the app without Owner deletes Owner and kills its actors.
    serve.run(Target.bind(), name=app, route_prefix=None)
    wait_for_condition(lambda: _is_dead(second), timeout=TIMEOUT_S)
    wait_for_condition(lambda: _name_is_free(ray_name), timeout=TIMEOUT_S)
    assert _events(tracker_name) == ["del:alive", "del:alive"]
    assert owner_id not in _read_checkpoint()
    assert serve.status().applications[app].deployments.keys() == {"Target"}


@pytest.mark.parametrize("restart_controller_first", [False, True])
def test_shutdown_kills_all(serve_instance, restart_controller_first):
    """serve.shutdown() leaves no deployment actor and no checkpoint behind."""
    _deploy_main_app()
    serve.run(Target.bind(), name="second", route_prefix=None)
    handles = [
        _get_or_create(TARGET_ID, "one", Counter),
        _get_or_create(TARGET_ID, "two", Counter),
        _get_or_create(DeploymentID(name="Target", app_name="second"), "x", Counter),
    ]
    assert ray.get([h.value.remote() for h in handles]) == [0, 0, 0]
    assert len(_scoped_actor_names()) == 3
    if restart_controller_first:
        _kill_controller_and_wait()
        assert len(_scoped_actor_names()) == 3
    controller_namespace = _controller_namespace()
    assert len(_read_checkpoint(controller_namespace)) == 2

    serve.shutdown()
    wait_for_condition(lambda: _scoped_actor_names() == [], timeout=TIMEOUT_S)
    for h in handles:
        assert _is_dead(h)
    assert _read_checkpoint(controller_namespace) == {}


def test_dead_actor_recreated_with_same_args(serve_instance, tracker_name):
    """A killed actor comes back with its constructor arguments."""
    _deploy_main_app()
    handle = _get_or_create(TARGET_ID, "phoenix", Counter, 7, tracker_name)
    assert ray.get(handle.incr.remote(5)) == 12
    old_id = _actor_id(handle)
    wait_for_condition(
        lambda: _status_actors(APP, "Target") == {"phoenix": "RUNNING"},
        timeout=TIMEOUT_S,
    )

    ray.kill(handle, no_restart=True)

    def recreated() -> bool:
        live = _get_or_create(TARGET_ID, "phoenix", Counter, 999)
        return (
            _actor_id(live) != old_id and ray.get(live.value.remote(), timeout=5) == 7
        )

    wait_for_condition(recreated, timeout=TIMEOUT_S, retry_interval_ms=250)
    live = _get_or_create(TARGET_ID, "phoenix", Counter, 999)
    assert ray.get(live.incr.remote()) == 8
    assert _actor_id(_get_handle(TARGET_ID, "phoenix")) == _actor_id(live)
    ray_name = _expected_ray_name(TARGET_ID, "phoenix")
    assert _actor_id(ray.get_actor(ray_name, namespace=SERVE_NAMESPACE)) == (
        _actor_id(live)
    )
    assert len(_events(tracker_name)) == 2

    wait_for_condition(
        lambda: _status_actors(APP, "Target") == {"phoenix": "RUNNING"},
        timeout=TIMEOUT_S,
    )
    entry = _details(APP, "Target")["phoenix"]
    assert entry["restarts"] >= 1
    assert entry["actor_id"] == _actor_id(live)

    # Dead while the controller is down: the new controller recreates it.
    second_id = _actor_id(live)
    _kill_controller_and_wait(while_down=lambda: ray.kill(live, no_restart=True))

    def recreated_after_recovery() -> bool:
        again = _get_or_create(TARGET_ID, "phoenix", Counter, 999)
        return (
            _actor_id(again) not in (old_id, second_id)
            and ray.get(again.value.remote(), timeout=5) == 7
        )

    wait_for_condition(recreated_after_recovery, timeout=TIMEOUT_S)
    assert _is_dead(live)
    assert len(_events(tracker_name)) == 3
    wait_for_condition(
        lambda: _status_actors(APP, "Target") == {"phoenix": "RUNNING"},
        timeout=TIMEOUT_S,
    )


def test_constructor_that_always_raises(serve_instance, tracker_name):
    """Bounded attempts, then FAILED in serve.status(); replicas keep serving."""
    handle = _deploy_main_app()
    _get_or_create(TARGET_ID, "doomed", FailingActor, tracker_name)

    # Each attempt starts a worker process: slow on a loaded machine.
    wait_for_condition(
        lambda: _status_actors(APP, "Target").get("doomed") == "FAILED",
        timeout=2 * TIMEOUT_S,
        retry_interval_ms=250,
    )
    # Default: 5 attempts, and no more once FAILED.
    assert _events(tracker_name).count("attempt") == 5
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        assert _status_actors(APP, "Target").get("doomed") == "FAILED"
        assert _events(tracker_name).count("attempt") == 5
    entry = _details(APP, "Target")["doomed"]
    assert entry["state"] == "FAILED"
    assert "5 times" in entry["message"]
    assert "FailingActor constructor always fails" in entry["message"]

    # The deployment itself is unaffected.
    assert handle.ping.remote().result(timeout_s=TIMEOUT_S) == "target-ok"
    status = serve.status().applications[APP]
    assert status.status == "RUNNING"
    assert status.deployments["Target"].status == "HEALTHY"

    # Asking again starts a new round of attempts.
    _get_or_create(TARGET_ID, "doomed", FailingActor, tracker_name)
    assert _status_actors(APP, "Target").get("doomed") != "FAILED"
    wait_for_condition(
        lambda: _events(tracker_name).count("attempt") > 5, timeout=TIMEOUT_S
    )


def test_bad_input(serve_instance):
    """Clear errors for bad names, deployments, classes and arguments."""
    _deploy_main_app()

    for bad in ["", "has space", "a:b", "a::b", "#x", "-x", "x" * 129, "é"]:
        with pytest.raises(ValueError, match="name"):
            _get_or_create(TARGET_ID, bad, Counter)
    with pytest.raises(TypeError, match="must be a str"):
        _get_or_create(TARGET_ID, 123, Counter)

    with pytest.raises(ValueError, match="does not exist"):
        _get_or_create(DeploymentID(name="Nope", app_name=APP), "ok", Counter)
    with pytest.raises(ValueError, match="does not exist"):
        _get_or_create(DeploymentID(name="Target", app_name="no-app"), "ok", Counter)
    assert _get_handle(TARGET_ID, "never-created") is None

    # Same name, different class: the message names both classes.
    _get_or_create(TARGET_ID, "taken", Counter)
    with pytest.raises(ValueError) as exc_info:
        _get_or_create(TARGET_ID, "taken", OtherActor)
    message = str(exc_info.value)
    module = Counter.__ray_actor_class__.__module__
    assert f"{module}:Counter" in message
    assert f"{module}:OtherActor" in message

    # Arguments that cannot be serialized: a lock fails client-side, an
    # object that pickles only once fails in the controller's checkpoint.
    with pytest.raises(Exception, match="(?i)pickle|serializ"):
        _get_or_create(TARGET_ID, "locked", Counter, threading.Lock())
    with pytest.raises(TypeError) as exc_info:
        _get_or_create(TARGET_ID, "once", Counter, PicklesOnce())
    message = str(exc_info.value)
    assert "'once'" in message
    assert "cannot be serialized for the controller's checkpoint" in message
    assert "PicklesOnce cannot be pickled a second time" in message

    expected = [_expected_ray_name(TARGET_ID, "taken")]
    assert _scoped_actor_names() == expected
    assert set(_read_checkpoint()[TARGET_ID]) == {"taken"}
    assert set(_details(APP, "Target")) == {"taken"}

    # A deployment that is being deleted refuses new actors.
    slow = serve.run(Blocker.bind(), name="slow", route_prefix=None)
    slow_id = DeploymentID(name="Blocker", app_name="slow")
    signal = SignalActor.remote()
    blocked = slow.remote(signal)
    wait_for_condition(
        lambda: ray.get(signal.cur_num_waiters.remote()) == 1, timeout=TIMEOUT_S
    )
    serve.delete("slow", _blocking=False)
    late_name = _expected_ray_name(slow_id, "late")

    def refused_while_deleting() -> bool:
        # The app is marked for deletion first and its deployments on a later
        # control loop step; calls in between may still create "probe".
        try:
            _get_or_create(slow_id, "probe", Counter)
        except DeploymentIsBeingDeletedError:
            return True
        return False

    try:
        wait_for_condition(refused_while_deleting, timeout=TIMEOUT_S)
        with pytest.raises(DeploymentIsBeingDeletedError, match="being deleted"):
            _get_or_create(slow_id, "late", Counter)
        assert _name_is_free(late_name)
        assert "late" not in _read_checkpoint().get(slow_id, {})
    finally:
        ray.get(signal.send.remote())
    assert blocked.result(timeout_s=TIMEOUT_S) == "released"
    wait_for_condition(
        lambda: "slow" not in serve.status().applications, timeout=TIMEOUT_S
    )
    with pytest.raises(ValueError, match="does not exist"):
        _get_or_create(slow_id, "late", Counter)
    assert slow_id not in _read_checkpoint()
    wait_for_condition(lambda: _scoped_actor_names() == expected, timeout=TIMEOUT_S)


def test_declarative_deployment_actors_unchanged(serve_instance):
    """Upstream's declarative deployment_actors work and are listed as 'config'."""
    app = "declared"
    dep_id = DeploymentID(name="UsesDeclared", app_name=app)
    deployment = UsesDeclared.options(
        deployment_actors=[
            DeploymentActorConfig(
                name="d",
                actor_class=DeclaredActor,
                init_kwargs={"greeting": "hello"},
                actor_options={"num_cpus": 0},
            )
        ]
    )
    handle = serve.run(deployment.bind(), name=app, route_prefix=None)
    result = handle.remote().result(timeout_s=TIMEOUT_S)
    assert result["greeting"] == "hello"

    looked_up = _get_handle(dep_id, "d")
    assert looked_up is not None
    assert _actor_id(looked_up) == result["actor_id"]
    assert ray.get(looked_up.greet.remote()) == "hello"

    details = _details(app, "UsesDeclared")
    assert set(details) == {"d"}
    assert details["d"]["created_by"] == "config"
    assert details["d"]["actor_id"] == result["actor_id"]
    assert details["d"]["state"] == "RUNNING"
    assert details["d"]["actor_class"].endswith(":DeclaredActor")
    assert _status_actors(app, "UsesDeclared") == {"d": "RUNNING"}
    # Declarative actors are not checkpointed by the runtime API.
    assert dep_id not in _read_checkpoint()

    serve.delete(app)
    wait_for_condition(lambda: _is_dead(looked_up), timeout=TIMEOUT_S)
    assert not any(
        n.startswith(f"{SCOPED_PREFIX}{app}::") for n in _serve_actor_names()
    )


def test_runtime_name_cannot_shadow_declarative_actor(serve_instance):
    """A declarative actor's name is not reused for a second, runtime actor."""
    app = "shadowed"
    dep_id = DeploymentID(name="UsesDeclared", app_name=app)
    deployment = UsesDeclared.options(
        deployment_actors=[
            DeploymentActorConfig(
                name="d",
                actor_class=DeclaredActor,
                init_kwargs={"greeting": "declared"},
                actor_options={"num_cpus": 0},
            )
        ]
    )
    handle = serve.run(deployment.bind(), name=app, route_prefix=None)
    declared_id = handle.remote().result(timeout_s=TIMEOUT_S)["actor_id"]

    # Either a clear refusal or the declarative actor itself is fine.
    try:
        got = _get_or_create(dep_id, "d", DeclaredActor, "runtime")
    except ValueError as e:
        assert "'d'" in str(e)
    else:
        assert _actor_id(got) == declared_id

    assert _name_is_free(_expected_ray_name(dep_id, "d"))
    assert _actor_id(_get_handle(dep_id, "d")) == declared_id
    assert handle.remote().result(timeout_s=TIMEOUT_S)["actor_id"] == declared_id
    entries = _details_list(app, "UsesDeclared")
    assert [(a["name"], a["created_by"]) for a in entries] == [("d", "config")]


# --------------------------------------------------------------------------- #
# Node removal: its own multi-node cluster, so it runs last.
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def multi_node_cluster():
    """A head node (2 CPUs) and a worker node with the 'worker' resource.

    The session's single-node cluster is shut down first (a driver connects to
    one cluster only); when it existed, an equivalent one is started again at
    the end, so later test modules of the session still find Ray initialized
    (the session fixture's teardown shuts that one down).
    """
    from conftest import free_port

    from ray.cluster_utils import Cluster

    restore = None
    if ray.is_initialized():
        restore = {
            "namespace": ray.get_runtime_context().namespace,
            "num_cpus": int(ray.cluster_resources().get("CPU", 8)),
        }
        ray.shutdown()
    os.environ.setdefault("RAY_SERVE_DEPLOYMENT_ACTOR_HEALTH_CHECK_PERIOD_S", "1")

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "include_dashboard": False},
    )
    try:
        worker = cluster.add_node(num_cpus=0, resources={"worker": 1})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace="dsa_multi_node")
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
        yield cluster, worker
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()
            if restore is not None:
                ray.init(
                    num_cpus=restore["num_cpus"],
                    include_dashboard=False,
                    namespace=restore["namespace"],
                    log_to_driver=False,
                )


def test_actor_recreated_after_node_removal(multi_node_cluster):
    """Removing the actor's node recreates it on another node, same arguments."""
    cluster, first_worker = multi_node_cluster
    serve.run(Target.bind(), name=APP, route_prefix=None)

    actor_class = Counter.options(resources={"worker": 0.01}, num_cpus=0)
    handle = _get_or_create(TARGET_ID, "roaming", actor_class, 42)
    assert ray.get(handle.node_id.remote(), timeout=TIMEOUT_S) == first_worker.node_id
    assert ray.get(handle.incr.remote()) == 43
    old_id = _actor_id(handle)

    second_worker = cluster.add_node(num_cpus=0, resources={"worker": 1})
    cluster.wait_for_nodes()
    cluster.remove_node(first_worker)

    def moved() -> bool:
        live = _get_or_create(TARGET_ID, "roaming", actor_class, 0)
        return (
            _actor_id(live) != old_id
            and ray.get(live.node_id.remote(), timeout=5) == second_worker.node_id
        )

    wait_for_condition(moved, timeout=1.5 * TIMEOUT_S, retry_interval_ms=500)
    live = _get_or_create(TARGET_ID, "roaming", actor_class, 0)
    assert ray.get(live.value.remote()) == 42

    def reported_on_second_worker() -> bool:
        entry = _details(APP, "Target")["roaming"]
        return (
            entry["state"] == "RUNNING"
            and entry["actor_id"] == _actor_id(live)
            and entry.get("node_id", second_worker.node_id) == second_worker.node_id
        )

    wait_for_condition(reported_on_second_worker, timeout=TIMEOUT_S)
    assert _details(APP, "Target")["roaming"]["restarts"] >= 1

    serve.shutdown()
    wait_for_condition(lambda: _scoped_actor_names() == [], timeout=TIMEOUT_S)
    assert _is_dead(live)


if __name__ == "__main__":
    sys.exit(pytest.main(["-v", "-s", __file__]))
