"""Integration tests: the prefix-aware router's tree as a deployment-scoped actor.

Each test runs a real Serve app on the session's local Ray cluster (the
``serve_instance`` fixture), with ``PrefixCacheAffinityRouter`` routing a
trivial async "model" whose replicas answer with their own replica id. A
closed-loop load driver (threads in the test process calling a
``DeploymentHandle``) sends prompts sharing a few ~1000-character prefixes while
a fault is injected: app deletion, controller restart, tree kill, replica kill,
rolling update, or an unresponsive tree. The tree is looked up by its Ray actor
name (``SERVE_DEPLOYMENT_ACTOR::<app>::<deployment>::prefix-tree`` in the
``serve`` namespace) and its tenants are read from the actor itself.
"""

import collections
import gc
import os
import statistics
import sys
import threading
import time
import uuid
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional, Set

import pytest

import ray
from ray import serve
from ray._common.test_utils import wait_for_condition
from ray.llm._internal.serve.routing_policies.prefix_aware import prefix_tree_client
from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve._private.constants import (
    SERVE_CONTROLLER_NAME,
    SERVE_DEPLOYMENT_ACTOR_PREFIX,
    SERVE_NAMESPACE,
)
from ray.serve._private.deployment_scoped_actor_utils import (
    get_deployment_scoped_actor_name,
)
from ray.serve.config import RequestRouterConfig

PREFIX_ROUTER = (
    "ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router:"
    "PrefixCacheAffinityRouter"
)
TREE_NAME = "prefix-tree"
# Dead tenants are pruned every ~1 s, to keep the tests quick. Tree reads get
# 2 s (default 0.5 s): other tests share the machine, and a loaded machine must
# not make the router skip the tree; the unresponsive-tree test uses the default.
ROUTER_KWARGS = {"tree_prune_interval_s": 1.0, "tree_call_timeout_s": 2.0}
DEFAULT_CALL_TIMEOUT = {"tree_call_timeout_s": 0.5}
NUM_REPLICAS = 2
NUM_PREFIXES = 4
PREFIX_CHARS = 1000
CONCURRENCY = 6


def _router_config(**router_kwargs) -> RequestRouterConfig:
    """The prefix-aware router with ``ROUTER_KWARGS`` updated by ``router_kwargs``."""
    return RequestRouterConfig(
        request_router_class=PREFIX_ROUTER,
        request_router_kwargs={**ROUTER_KWARGS, **router_kwargs},
    )


@serve.deployment(
    ray_actor_options={"num_cpus": 0},
    # Like an LLM engine, a replica takes many requests at once: Serve's
    # spillover of requests from full replicas is not what is tested here.
    max_ongoing_requests=64,
    health_check_period_s=1,
    health_check_timeout_s=5,
    graceful_shutdown_timeout_s=2,
    graceful_shutdown_wait_loop_s=0.5,
)
class Model:
    """A trivial async "engine" that answers with the id of its replica."""

    async def __call__(self, request: Any) -> Dict[str, str]:
        replica_id = serve.get_replica_context().replica_id
        return {
            "unique_id": replica_id.unique_id,
            "full_id": replica_id.to_full_id_str(),
        }


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Ingress:
    """Calls a "prefill" and a "decode" deployment, both prefix-routed."""

    def __init__(self, prefill, decode):
        self._prefill = prefill
        self._decode = decode

    async def __call__(self, request: Any) -> Dict[str, str]:
        prefill = await self._prefill.remote(SimpleNamespace(prompt=request.prompt))
        decode = await self._decode.remote(SimpleNamespace(prompt=request.prompt))
        return {"prefill": prefill["full_id"], "decode": decode["full_id"]}


def _model(name: str = "Model", router_kwargs: Optional[Dict] = None, **options) -> Any:
    """``Model`` with ``NUM_REPLICAS`` prefix-routed replicas, named ``name``."""
    return Model.options(
        name=name,
        num_replicas=NUM_REPLICAS,
        request_router_config=_router_config(**(router_kwargs or {})),
        **options,
    )


# --------------------------------------------------------------------------- #
# Cluster inspection helpers
# --------------------------------------------------------------------------- #


def tree_ray_name(app: str, deployment: str) -> str:
    """The Ray actor name of a deployment's prefix tree."""
    return get_deployment_scoped_actor_name(
        DeploymentID(name=deployment, app_name=app), TREE_NAME
    )


def get_tree(app: str, deployment: str) -> Optional[ray.actor.ActorHandle]:
    """The deployment's live prefix tree actor, or None if there is none."""
    try:
        return ray.get_actor(tree_ray_name(app, deployment), namespace=SERVE_NAMESPACE)
    except ValueError:
        return None


def tree_id(app: str, deployment: str) -> Optional[str]:
    """The actor id (hex) of the deployment's prefix tree, or None."""
    tree = get_tree(app, deployment)
    return tree._actor_id.hex() if tree is not None else None


def tree_tenants(tree: ray.actor.ActorHandle, timeout_s: float = 10) -> Set[str]:
    """The tenants (replica full id strings) the tree holds."""
    return set(ray.get(tree.getattr.remote("tenant_to_char_count"), timeout=timeout_s))


def current_tenants(app: str, deployment: str) -> Optional[Set[str]]:
    """Tenants of the deployment's current tree, or None if it is unavailable."""
    tree = get_tree(app, deployment)
    if tree is None:
        return None
    try:
        return tree_tenants(tree, timeout_s=5)
    except Exception:
        return None


def serve_named_actors() -> List[str]:
    """Names of all named actors in the serve namespace."""
    return [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == SERVE_NAMESPACE
    ]


def running_replica_ids(app: str, deployment: str) -> Set[str]:
    """Full id strings of the deployment's RUNNING replicas."""
    details = serve.context._get_global_client().get_serve_details()
    app_details = details["applications"].get(app)
    if app_details is None or deployment not in app_details["deployments"]:
        return set()
    dep_id = DeploymentID(name=deployment, app_name=app)
    return {
        ReplicaID(unique_id=r["replica_id"], deployment_id=dep_id).to_full_id_str()
        for r in app_details["deployments"][deployment]["replicas"]
        if r["state"] == "RUNNING"
    }


def wait_for_tree_tenants(
    app: str,
    deployment: str,
    expected: Callable[[], Set[str]],
    timeout: float = 30,
) -> Set[str]:
    """Wait until the tree's tenants are exactly ``expected()`` (non-empty)."""

    def _check():
        want = expected()
        return bool(want) and current_tenants(app, deployment) == want

    wait_for_condition(_check, timeout=timeout, retry_interval_ms=200)
    return current_tenants(app, deployment)


# --------------------------------------------------------------------------- #
# Load
# --------------------------------------------------------------------------- #


def make_prefixes(num: int = NUM_PREFIXES, chars: int = PREFIX_CHARS) -> List[str]:
    """``num`` distinct prompts prefixes of ``chars`` characters."""
    return [
        (f"[system {p}] " + f"You are assistant number {p}. Be concise. " * 60)[:chars]
        for p in range(num)
    ]


class LoadDriver:
    """Closed-loop load: ``concurrency`` threads calling a DeploymentHandle.

    Each request's prompt is one of a few long shared prefixes plus a unique
    suffix, sent as an object with a ``prompt`` attribute (what the router
    reads). Every outcome is recorded with its prefix, timing and the replica
    that served it.
    """

    def __init__(
        self,
        handle,
        concurrency: int = CONCURRENCY,
        serving_replica: Callable[[Any], Any] = lambda out: out["full_id"],
        request_timeout_s: float = 30.0,
        unique_prefixes: bool = False,
    ):
        """Create the driver (not started).

        Args:
            handle: DeploymentHandle to call.
            concurrency: Number of threads, each with one request in flight.
            serving_replica: Extracts the serving replica from a response.
            request_timeout_s: Timeout of one request.
            unique_prefixes: Give every request a prefix of its own instead, so
                that no request can be matched from what the router has seen.
        """
        self._handle = handle
        self._concurrency = concurrency
        self._serving_replica = serving_replica
        self._timeout_s = request_timeout_s
        self._prefixes = make_prefixes()
        self._unique_prefixes = unique_prefixes
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: List[threading.Thread] = []
        self.results: List[Dict[str, Any]] = []

    def call(self, prompt: str) -> Any:
        """Send one request and return the serving replica."""
        out = self._handle.remote(SimpleNamespace(prompt=prompt)).result(
            timeout_s=self._timeout_s
        )
        return self._serving_replica(out)

    def seed(self) -> None:
        """Send one request per prefix, one at a time.

        Concurrent first requests of a prefix the tree has not seen can each go
        to a different replica (the algorithm's, not a fault's doing); seeding
        the prefixes first keeps the affinity measurements about the faults.
        """
        for prefix in self._prefixes:
            self.call(f"{prefix} seed")

    def start(self, warm_up: bool = True) -> "LoadDriver":
        if warm_up:
            # One request first: concurrent first calls on a fresh handle would
            # each create a router of their own.
            self.call("warm-up")
        for w in range(self._concurrency):
            t = threading.Thread(target=self._worker, args=(w,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> List[Dict[str, Any]]:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self._timeout_s + 10)
        assert not any(t.is_alive() for t in self._threads), "load did not stop"
        return self.snapshot()

    def snapshot(self) -> List[Dict[str, Any]]:
        with self._lock:
            return list(self.results)

    def num_ok(self) -> int:
        return sum(r["ok"] for r in self.snapshot())

    def wait_for_ok(self, n: int, timeout: float = 30) -> None:
        """Wait until ``n`` more requests than now have succeeded."""
        target = self.num_ok() + n
        wait_for_condition(
            lambda: self.num_ok() >= target, timeout=timeout, retry_interval_ms=50
        )

    def _worker(self, worker: int) -> None:
        i = 0
        while not self._stop.is_set():
            prefix = (worker + i) % len(self._prefixes)
            if self._unique_prefixes:
                prefix = -1
                head = f"[unique {uuid.uuid4().hex}] "
                prompt = (head * (PREFIX_CHARS // len(head) + 1))[:PREFIX_CHARS]
            else:
                prompt = self._prefixes[prefix]
            prompt += f" question {worker}-{i}: what is {i}?"
            start = time.monotonic()
            try:
                out = self._handle.remote(SimpleNamespace(prompt=prompt)).result(
                    timeout_s=self._timeout_s
                )
                ok, replica, error = True, self._serving_replica(out), None
            except Exception as e:  # noqa: BLE001 - every outcome is recorded
                ok, replica, error = False, None, repr(e)
            with self._lock:
                self.results.append(
                    {
                        "prefix": prefix,
                        "ok": ok,
                        "replica": replica,
                        "error": error,
                        "start": start,
                        "end": time.monotonic(),
                    }
                )
            i += 1


def failures(results: List[Dict[str, Any]]) -> List[str]:
    """The errors of the failed requests."""
    return [r["error"] for r in results if not r["ok"]]


def prefix_shares(results: List[Dict[str, Any]]) -> Dict[int, float]:
    """Per prefix, the share of its successful requests on its top replica."""
    by_prefix = collections.defaultdict(collections.Counter)
    for r in results:
        if r["ok"]:
            by_prefix[r["prefix"]][r["replica"]] += 1
    return {p: c.most_common(1)[0][1] / sum(c.values()) for p, c in by_prefix.items()}


def _fmt(shares: Dict[int, float]) -> Dict[int, float]:
    """Per-prefix shares, rounded and sorted, for messages."""
    return {p: round(s, 3) for p, s in sorted(shares.items())}


def wait_for_affinity(
    load: "LoadDriver", since: float, n: int = 200, timeout: float = 45
) -> float:
    """Wait until prefix affinity holds for ``n`` requests in a row.

    Looks at the last ``n`` successful requests started after ``since``: each
    prefix must have gone to its top replica at least 90% of the time.

    Returns:
        The start time of the first request of that window.
    """
    state: Dict[str, Any] = {}

    def _check():
        ok = sorted(
            (r for r in load.snapshot() if r["ok"] and r["start"] >= since),
            key=lambda r: r["start"],
        )
        window = ok[-n:]
        state["shares"] = prefix_shares(window)
        if len(window) < n or len(state["shares"]) < NUM_PREFIXES:
            return False
        state["at"] = window[0]["start"]
        return all(s >= 0.9 for s in state["shares"].values())

    try:
        wait_for_condition(_check, timeout=timeout, retry_interval_ms=200)
    except RuntimeError:
        raise AssertionError(
            f"prefix affinity did not come back within {timeout}s: last "
            f"{n} requests: {_fmt(state.get('shares', {}))}"
        ) from None
    return state["at"]


def affinity_recovered_at(
    results: List[Dict[str, Any]], since: float
) -> Optional[float]:
    """Earliest start time after ``since`` from which affinity holds to the end.

    Every prefix must go to its top replica for at least 90% of the successful
    requests started from then on (checked at every 10th request).
    """
    ok = sorted(
        (r for r in results if r["ok"] and r["start"] >= since),
        key=lambda r: r["start"],
    )
    for i in range(0, len(ok), 10):
        shares = prefix_shares(ok[i:])
        if len(shares) == NUM_PREFIXES and all(s >= 0.9 for s in shares.values()):
            return ok[i]["start"]
    return None


def p99(values: List[float]) -> float:
    """The 99th percentile of ``values``."""
    values = sorted(values)
    return values[min(len(values) - 1, int(0.99 * len(values)))]


def deploy_model(app: str, **options):
    """Deploy the prefix-routed model as app ``app``; return its handle."""
    return serve.run(_model(**options).bind(), name=app, route_prefix=None)


def start_load(handle, app: str, deployment: str = "Model", **kwargs) -> LoadDriver:
    """Start load on a router whose tree is up and knows every prefix.

    The first request creates the router (in this process), which has the
    controller create the tree; the prefixes are seeded once the tree holds
    the deployment's replicas.
    """
    load = LoadDriver(handle, **kwargs)
    load.call("warm-up")
    wait_for_tree_tenants(app, deployment, lambda: running_replica_ids(app, deployment))
    load.seed()
    return load.start(warm_up=False)


@pytest.fixture
def prefix_serve(serve_instance):
    """``serve_instance``, and afterwards stop this process's tree clients.

    The routers of this test's handles live in the test process. Their tree
    clients never stop their background tasks on their own (see
    ``test_router_stops_resolving_tree_of_deleted_deployment``), so they are
    stopped here: otherwise they would keep calling the next test's controller
    and, after the session's ``ray.shutdown()``, start a new local Ray instance.
    """
    yield serve_instance
    # Serve first: its last replica updates would restart stopped clients.
    serve.shutdown()
    for obj in gc.get_objects():
        if isinstance(obj, prefix_tree_client.PrefixTreeClient):
            loop = obj._loop
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(obj.shutdown)


# --------------------------------------------------------------------------- #
# Tests
# --------------------------------------------------------------------------- #


def test_delete_app_removes_tree_and_redeploy_gets_fresh_tree(prefix_serve):
    """Deleting an app kills its tree; redeploying starts an empty fresh tree."""
    app = "prefix_delete"
    handle = deploy_model(app)
    load = start_load(handle, app)
    load.wait_for_ok(50)
    old_replicas = running_replica_ids(app, "Model")
    assert len(old_replicas) == NUM_REPLICAS
    assert current_tenants(app, "Model") == old_replicas
    old_tree_id = tree_id(app, "Model")
    assert old_tree_id is not None
    results = load.stop()
    assert not failures(results), failures(results)[:3]

    serve.delete(app)
    name = tree_ray_name(app, "Model")
    wait_for_condition(lambda: name not in serve_named_actors(), timeout=20)
    assert get_tree(app, "Model") is None

    handle = deploy_model(app)
    load = LoadDriver(handle).start()
    load.wait_for_ok(50)
    new_replicas = running_replica_ids(app, "Model")
    assert len(new_replicas) == NUM_REPLICAS
    assert not new_replicas & old_replicas

    seen_tenants: List[Set[str]] = []

    def _fresh_tree_with_new_tenants():
        tenants = current_tenants(app, "Model")
        if tenants is not None:
            seen_tenants.append(tenants)
        return tenants == new_replicas

    wait_for_condition(_fresh_tree_with_new_tenants, timeout=30)
    results = load.stop()
    assert not failures(results), failures(results)[:3]
    assert tree_id(app, "Model") not in (None, old_tree_id)
    # No observation of the new tree ever held a replica of the old app.
    stale = set().union(*seen_tenants) & old_replicas
    assert not stale, f"stale tenants in the fresh tree: {stale}"


def test_controller_restart_keeps_tree_and_shutdown_removes_it(prefix_serve):
    """The tree survives a controller restart under load; shutdown kills it."""
    app = "prefix_ctrl"
    handle = deploy_model(app)
    load = start_load(handle, app)
    load.wait_for_ok(50)
    before = tree_id(app, "Model")

    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    old_pid = ray.get(controller.__ray_call__.remote(lambda self: os.getpid()))
    ray.kill(controller, no_restart=False)

    def _controller_back():
        try:
            pid = ray.get(
                controller.__ray_call__.remote(lambda self: os.getpid()), timeout=5
            )
            status = serve.status()
        except Exception:
            return False
        return (
            pid != old_pid
            and app in status.applications
            and status.applications[app].status == "RUNNING"
        )

    wait_for_condition(_controller_back, timeout=60, retry_interval_ms=500)
    # Routing continues with the restarted controller.
    load.wait_for_ok(50)
    results = load.stop()
    assert len(results) >= 100
    assert not failures(results), failures(results)[:3]
    assert tree_id(app, "Model") == before
    wait_for_tree_tenants(app, "Model", lambda: running_replica_ids(app, "Model"))

    serve.shutdown()

    def _no_deployment_actors():
        return not [
            n
            for n in serve_named_actors()
            if n.startswith(SERVE_DEPLOYMENT_ACTOR_PREFIX)
        ]

    wait_for_condition(_no_deployment_actors, timeout=30)
    assert get_tree(app, "Model") is None


def test_tree_killed_under_load_recovers(prefix_serve):
    """Killing the tree fails no request; a refilled tree restores affinity."""
    app = "prefix_tree_kill"
    handle = deploy_model(app)
    load = start_load(handle, app)
    load.wait_for_ok(200)
    old_tree = get_tree(app, "Model")
    old_id = old_tree._actor_id.hex()
    before_kill = prefix_shares(load.snapshot()[-200:])

    killed_at = time.monotonic()
    ray.kill(old_tree, no_restart=True)

    def _new_tree_refilled():
        new_id = tree_id(app, "Model")
        return new_id not in (None, old_id) and current_tenants(
            app, "Model"
        ) == running_replica_ids(app, "Model")

    wait_for_condition(_new_tree_refilled, timeout=30, retry_interval_ms=100)
    tree_back_at = time.monotonic()
    tree_back_s = tree_back_at - killed_at
    affinity_back_at = wait_for_affinity(load, since=tree_back_at)
    load.wait_for_ok(200)
    results = load.stop()

    after = [r for r in results if r["start"] >= affinity_back_at]
    shares = prefix_shares(after)
    recovered_at = affinity_recovered_at(results, since=tree_back_at)
    print(
        f"\n[tree kill] affinity before the kill: {_fmt(before_kill)}\n"
        f"[tree kill] tree recreated and refilled {tree_back_s:.2f}s after the "
        "kill; affinity back (from then on) "
        + (
            f"{recovered_at - killed_at:.2f}s after the kill"
            if recovered_at is not None
            else "never"
        )
        + f"; {len(results)} requests, {len(failures(results))} failed; "
        f"affinity of the {len(after)} requests measured: {_fmt(shares)}"
    )
    assert not failures(results), failures(results)[:3]
    assert len(shares) == NUM_PREFIXES
    assert all(s >= 0.9 for s in shares.values()), shares
    assert tree_back_s < 20


def test_killed_replica_is_pruned_and_replacement_added(prefix_serve):
    """A killed replica leaves the tree; Serve's replacement joins it."""
    app = "prefix_replica_kill"
    handle = deploy_model(app)
    load = start_load(handle, app)
    load.wait_for_ok(50)
    replicas = running_replica_ids(app, "Model")
    assert current_tenants(app, "Model") == replicas
    tree = get_tree(app, "Model")

    victim = sorted(replicas)[0]
    killed_at = time.monotonic()
    ray.kill(ray.get_actor(victim, namespace=SERVE_NAMESPACE), no_restart=True)

    wait_for_condition(lambda: victim not in tree_tenants(tree), timeout=10)
    pruned_s = time.monotonic() - killed_at

    def _replaced():
        now = running_replica_ids(app, "Model")
        return len(now) == NUM_REPLICAS and victim not in now

    wait_for_condition(_replaced, timeout=60, retry_interval_ms=200)
    new_replicas = running_replica_ids(app, "Model")
    wait_for_tree_tenants(app, "Model", lambda: running_replica_ids(app, "Model"))
    load.wait_for_ok(50)
    results = load.stop()
    print(
        f"\n[replica kill] tenant pruned {pruned_s:.2f}s after the kill; "
        f"{len(results)} requests, {len(failures(results))} failed"
    )
    assert tree_id(app, "Model") == tree._actor_id.hex()
    assert victim not in tree_tenants(tree)
    assert new_replicas - replicas, "no replacement replica"
    # Only requests in flight on the victim when it was killed may fail.
    assert len(failures(results)) <= CONCURRENCY, failures(results)[:3]
    late = [r for r in results if not r["ok"] and r["start"] > killed_at + 5]
    assert not late, late[:3]


def test_two_deployments_get_separate_trees(prefix_serve):
    """Two prefix-routed deployments in one app each get their own tree."""
    app = "prefix_pd"
    prefill = _model(name="prefill").bind()
    decode = _model(name="decode").bind()
    handle = serve.run(Ingress.bind(prefill, decode), name=app, route_prefix=None)
    load = LoadDriver(handle, serving_replica=lambda out: out["decode"]).start()
    load.wait_for_ok(50)
    prefill_replicas = running_replica_ids(app, "prefill")
    decode_replicas = running_replica_ids(app, "decode")
    assert len(prefill_replicas) == len(decode_replicas) == NUM_REPLICAS
    wait_for_tree_tenants(app, "prefill", lambda: prefill_replicas)
    wait_for_tree_tenants(app, "decode", lambda: decode_replicas)
    results = load.stop()
    assert not failures(results), failures(results)[:3]

    prefill_tree, decode_tree = tree_id(app, "prefill"), tree_id(app, "decode")
    assert None not in (prefill_tree, decode_tree)
    assert prefill_tree != decode_tree
    assert tree_tenants(get_tree(app, "prefill")) == prefill_replicas
    assert tree_tenants(get_tree(app, "decode")) == decode_replicas
    # The Ingress is not prefix-routed: it has no tree.
    assert get_tree(app, "Ingress") is None


def test_rolling_update_drops_old_replicas_from_tree(prefix_serve):
    """After a code change (new replicas), only they are tenants of the tree."""
    app = "prefix_update"
    handle = deploy_model(app)
    load = start_load(handle, app)
    load.wait_for_ok(50)
    old_replicas = running_replica_ids(app, "Model")
    assert current_tenants(app, "Model") == old_replicas
    tree_before = tree_id(app, "Model")

    # Blocks until the update is done, while the load keeps running.
    new_code = {"num_cpus": 0, "runtime_env": {"env_vars": {"MODEL_REV": "2"}}}
    serve.run(_model(ray_actor_options=new_code).bind(), name=app, route_prefix=None)

    def _updated():
        now = running_replica_ids(app, "Model")
        return len(now) == NUM_REPLICAS and not now & old_replicas

    wait_for_condition(_updated, timeout=60, retry_interval_ms=200)
    new_replicas = running_replica_ids(app, "Model")
    tenants = wait_for_tree_tenants(app, "Model", lambda: new_replicas)
    load.wait_for_ok(50)
    results = load.stop()
    assert not tenants & old_replicas
    assert tree_id(app, "Model") == tree_before
    assert {r["replica"] for r in results[-20:]} <= new_replicas
    print(
        f"\n[rolling update] {len(results)} requests, "
        f"{len(failures(results))} failed"
    )
    assert not failures(results), failures(results)[:3]


def test_unresponsive_tree_does_not_block_routing(prefix_serve):
    """While the tree answers nothing, requests route power-of-two, quickly.

    Afterwards prefix affinity comes back.
    """
    app = "prefix_blocked"
    handle = deploy_model(app, router_kwargs=DEFAULT_CALL_TIMEOUT)
    load = start_load(handle, app)
    load.wait_for_ok(50)
    results = load.stop()
    assert not failures(results), failures(results)[:3]
    tree = get_tree(app, "Model")
    sleep_s = 8.0
    # The tree runs one call at a time: every later call queues behind this.
    blocker = tree.__ray_call__.remote(lambda self: time.sleep(sleep_s))
    blocked_from = time.monotonic()
    # Prompts the router has never seen: it cannot answer them from what it
    # knows, only from the (blocked) tree.
    load = LoadDriver(handle, unique_prefixes=True).start(warm_up=False)
    time.sleep(3.0)  # the load window (not a wait for some state)
    blocked_until = time.monotonic()
    done, _ = ray.wait([blocker], timeout=0)
    results = load.stop()
    assert not done, "the tree answered before the window ended"

    # Every request started while the tree was blocked, however long it took.
    window = [r for r in results if blocked_from <= r["start"] < blocked_until]
    latencies = [r["end"] - r["start"] for r in window]
    print(
        f"\n[unresponsive tree] {len(window)} requests in "
        f"{blocked_until - blocked_from:.1f}s while the tree slept {sleep_s}s: "
        f"p50 {statistics.median(latencies):.3f}s, p99 {p99(latencies):.3f}s, "
        f"max {max(latencies):.3f}s"
    )
    assert not failures(results), failures(results)[:3]
    assert len(window) >= 20
    assert p99(latencies) < 2.0

    # Once the tree answers again (the client skips it for at most 5 s after
    # three read timeouts), the prefixes are routed by affinity again.
    ray.get(blocker, timeout=30)
    unblocked_at = time.monotonic()
    load = LoadDriver(handle).start(warm_up=False)
    affinity_back_at = wait_for_affinity(load, since=unblocked_at)
    load.wait_for_ok(200)
    results = load.stop()
    shares = prefix_shares([r for r in results if r["start"] >= affinity_back_at])
    recovered_at = affinity_recovered_at(results, since=unblocked_at)
    print(
        "[unresponsive tree] affinity back (from then on) "
        + (
            f"{recovered_at - unblocked_at:.2f}s"
            if recovered_at is not None
            else "never"
        )
        + f" after the tree answered again; measured: {_fmt(shares)}"
    )
    assert not failures(results), failures(results)[:3]
    assert all(s >= 0.9 for s in shares.values()), shares


def test_router_stops_resolving_tree_of_deleted_deployment(prefix_serve, monkeypatch):
    """A router whose deployment was deleted stops asking for its tree."""
    app = "prefix_gone"
    calls: List[float] = []
    original = prefix_tree_client.resolve_tree_from_controller

    async def counting_resolve(deployment_id, timeout_s):
        if deployment_id.app_name == app:
            calls.append(time.monotonic())
        return await original(deployment_id, timeout_s)

    # The routers of the test's handle run in this process.
    monkeypatch.setattr(
        prefix_tree_client, "resolve_tree_from_controller", counting_resolve
    )
    handle = deploy_model(app)
    load = start_load(handle, app)
    load.wait_for_ok(30)
    results = load.stop()
    assert not failures(results), failures(results)[:3]
    assert calls, "the router did not resolve its tree through the controller"

    serve.delete(app)
    name = tree_ray_name(app, "Model")
    wait_for_condition(lambda: name not in serve_named_actors(), timeout=20)
    deleted_at = time.monotonic()
    # The client retries at most every ~6 s (5 s backoff cap, 20% jitter).
    quiet_s = 8.0

    def _stopped_asking():
        last = max([deleted_at] + calls)
        return time.monotonic() - last >= quiet_s

    try:
        wait_for_condition(_stopped_asking, timeout=16, retry_interval_ms=200)
    finally:
        after = [t - deleted_at for t in calls if t >= deleted_at]
        print(
            f"\n[deleted deployment] {len(after)} tree resolve attempts in the "
            f"{time.monotonic() - deleted_at:.0f}s after the deletion: "
            f"{[round(t, 1) for t in after][:12]}"
        )


if __name__ == "__main__":
    sys.exit(pytest.main(["-v", "-s", __file__]))
