"""Unit tests for PrefixTreeClient and PrefixCacheAffinityRouter's fallbacks.

No Ray cluster is started: the prefix tree is a ``FakeTree`` whose methods have
``.remote(*args)`` returning a fake ref; ``ref.future()`` is a
``concurrent.futures.Future`` that each test resolves immediately, later,
never, or with an exception (``ActorDiedError``, ``ActorUnavailableError``).
By default a fake call runs on a real in-memory ``PrefixTree`` (in submission
order, like the max_concurrency=1 actor), so answers are realistic.
"""

import asyncio
import concurrent.futures
import copy
import sys
import threading
import time
from collections import defaultdict
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import pytest

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router import (
    PrefixCacheAffinityRouter,
)
from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_tree import (
    PrefixTree,
)
from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_tree_client import (
    PrefixTreeClient,
)
from ray.serve._private.common import (
    DeploymentHandleSource,
    DeploymentID,
    ReplicaID,
    RequestMetadata,
)
from ray.serve._private.request_router.common import PendingRequest
from ray.serve._private.request_router.replica_wrapper import RunningReplica

DEPLOYMENT_ID = DeploymentID(name="TEST_DEPLOYMENT")

# Short timeouts keep the whole file in the seconds.
CALL_TIMEOUT_S = 0.05
BACKOFF_INITIAL_S = 0.01
BACKOFF_MAX_S = 0.05
# Longest a test waits for something that should happen "soon".
WAIT_S = 2.0


# ---------------------------------------------------------------------- #
# Fakes
# ---------------------------------------------------------------------- #


def _set_result(fut: concurrent.futures.Future, value: Any) -> None:
    """Resolve ``fut`` unless it is done already (e.g. cancelled by a timeout)."""
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: concurrent.futures.Future, exc: BaseException) -> None:
    """Fail ``fut`` unless it is done already (e.g. cancelled by a timeout)."""
    if not fut.done():
        fut.set_exception(exc)


def _later(delay_s: float, fn: Callable, *args) -> None:
    """Call ``fn(*args)`` after ``delay_s``, on the running loop if there is one."""
    try:
        asyncio.get_running_loop().call_later(delay_s, fn, *args)
    except RuntimeError:
        timer = threading.Timer(delay_s, fn, args)
        timer.daemon = True
        timer.start()


class Behavior:
    """How a fake tree method's calls resolve.

    Kinds, from mildest to worst: ``execute`` (run on the in-memory tree, answer
    at once), ``reply`` (answer ``value`` at once), ``after`` (run, answer after
    ``delay_s``), ``never`` (never answer), ``fail`` (the future fails with
    ``exc``), ``raise`` (``.remote()`` itself raises ``exc``).
    """

    ORDER = ["execute", "reply", "after", "never", "fail", "raise"]

    def __init__(self, kind: str, value: Any = None, delay_s: float = 0.0, exc=None):
        self.kind = kind
        self.value = value
        self.delay_s = delay_s
        self.exc = exc

    @property
    def runs(self) -> bool:
        """Whether the call is executed on the in-memory tree."""
        return self.kind in ("execute", "after")

    def worse(self, other: "Behavior") -> "Behavior":
        """The worse of two behaviors (for a batch of calls in one actor call)."""
        if self.ORDER.index(other.kind) > self.ORDER.index(self.kind):
            return other
        if other.kind == "after" and self.kind == "after":
            return other if other.delay_s > self.delay_s else self
        return self


def execute() -> Behavior:
    """Run the call on the tree's in-memory PrefixTree and answer at once."""
    return Behavior("execute")


def reply(value: Any) -> Behavior:
    """Answer every call with ``value`` at once (the tree is not touched)."""
    return Behavior("reply", value=value)


def reply_after(delay_s: float) -> Behavior:
    """Run the call on the in-memory tree, but answer after ``delay_s``."""
    return Behavior("after", delay_s=delay_s)


def never() -> Behavior:
    """Never answer (a hung or overloaded tree)."""
    return Behavior("never")


def fail(exc: BaseException) -> Behavior:
    """Fail every call's future with ``exc``."""
    return Behavior("fail", exc=exc)


def raise_on_submit(exc: BaseException) -> Behavior:
    """Make ``.remote()`` itself raise ``exc``."""
    return Behavior("raise", exc=exc)


class FakeRef:
    """Stand-in for an ObjectRef: only ``.future()`` is used by the client."""

    def __init__(self, fut: concurrent.futures.Future):
        self._fut = fut

    def future(self) -> concurrent.futures.Future:
        return self._fut


class _TreeProxy:
    """What a ``__ray_call__`` function sees as the tree: records and dispatches.

    Each method call is recorded as if called remotely on its own and answered
    according to its method's behavior.
    """

    def __init__(self, tree: "FakeTree", names: List[str]):
        self._tree = tree
        self._names = names

    def __getattr__(self, method: str) -> Callable:
        tree = self._tree

        def call(*args):
            tree.calls.append((method, args))
            self._names.append(method)
            behavior = tree.behavior_of(method)
            if behavior.kind == "reply":
                return behavior.value
            if behavior.runs:
                return tree.run(method, args)
            return None

        return call


class FakeMethod:
    """``tree.<method>``: has ``.remote(*args)`` like an actor method."""

    def __init__(self, tree: "FakeTree", name: str):
        self._tree = tree
        self._name = name

    def remote(self, *args) -> FakeRef:
        tree = self._tree
        tree.num_remote_calls += 1
        fut = concurrent.futures.Future()
        if self._name == "__ray_call__":
            # fn(tree, *args) runs inside the actor: one call, many operations.
            fn, fn_args = args[0], args[1:]
            names: List[str] = []
            value = fn(_TreeProxy(tree, names), *fn_args)
            behavior = execute()
            for name in names:
                behavior = behavior.worse(tree.behavior_of(name))
            keys = list(dict.fromkeys(names)) + ["__ray_call__"]
        else:
            tree.calls.append((self._name, args))
            behavior = tree.behavior_of(self._name)
            value = behavior.value
            if behavior.runs:
                value = tree.run(self._name, args)
            keys = [self._name]
        if behavior.kind == "raise":
            raise behavior.exc
        for key in keys:
            tree.futures[key].append(fut)
        if behavior.kind in ("execute", "reply"):
            fut.set_result(value)
        elif behavior.kind == "after":
            _later(behavior.delay_s, _set_result, fut, value)
        elif behavior.kind == "fail":
            fut.set_exception(behavior.exc)
        return FakeRef(fut)


class FakeTree:
    """A fake ``PrefixTreeActor`` handle.

    Every handle object has its own identity; ``clone()`` makes another handle
    to the same actor (same ``_actor_id``, same state), as the controller
    returns when it has not noticed the actor's death yet. Calls made through
    ``__ray_call__`` (batches) are recorded per tree method, so tests see
    ``calls_of("insert")`` whether or not the client batches.
    """

    def __init__(
        self,
        name: str = "tree",
        actor_id: Optional[ray.ActorID] = None,
        backing: Optional[PrefixTree] = None,
    ):
        self.name = name
        self._actor_id = actor_id if actor_id is not None else ray.ActorID.from_random()
        self.backing = backing if backing is not None else PrefixTree()
        self.default_behavior = execute()
        self.behaviors: Dict[str, Behavior] = {}
        self.calls: List[Tuple[str, tuple]] = []
        self.futures: Dict[str, List[concurrent.futures.Future]] = defaultdict(list)
        self.num_remote_calls = 0

    def __getattr__(self, method: str) -> FakeMethod:
        if method.startswith("_") and method != "__ray_call__":
            raise AttributeError(method)
        return FakeMethod(self, method)

    def __repr__(self) -> str:
        return f"FakeTree({self.name})"

    def clone(self, name: str) -> "FakeTree":
        """Another handle (new object) to the same actor."""
        return FakeTree(name, actor_id=self._actor_id, backing=self.backing)

    def set(self, method: str, behavior: Behavior) -> "FakeTree":
        """Set how calls of ``method`` resolve from now on."""
        self.behaviors[method] = behavior
        return self

    def set_all(self, behavior: Behavior) -> "FakeTree":
        """Set how calls of every method resolve from now on."""
        self.behaviors.clear()
        self.default_behavior = behavior
        return self

    def behavior_of(self, method: str) -> Behavior:
        return self.behaviors.get(method, self.default_behavior)

    def calls_of(self, method: str) -> List[tuple]:
        """The argument tuples of every call of ``method``, in order."""
        return [args for name, args in self.calls if name == method]

    def run(self, method: str, args: tuple) -> Any:
        """Execute a call on the in-memory tree (what the actor would do)."""
        if method == "getattr":
            # Results are copies, as after (de)serialization.
            return copy.deepcopy(getattr(self.backing, args[0]))
        if method == "start_eviction_loop":
            # Never start the real eviction thread in unit tests.
            return True
        return getattr(self.backing, method)(*args)


class FakeRunningReplica(RunningReplica):
    """In-memory replica for router tests.

    A trimmed ``ray.serve._private.test_utils.FakeRunningReplica``: that module
    imports httpx, which the wheel's runtime environment does not include.
    Queue-length probes answer 0 at once and are counted.
    """

    def __init__(self, replica_unique_id: str, max_ongoing_requests: int = 10):
        self._replica_id = ReplicaID(
            unique_id=replica_unique_id, deployment_id=DEPLOYMENT_ID
        )
        self._max_ongoing_requests = max_ongoing_requests
        self.num_get_queue_len_calls = 0

    @property
    def replica_id(self) -> ReplicaID:
        return self._replica_id

    @property
    def node_id(self) -> str:
        return ""

    @property
    def availability_zone(self) -> Optional[str]:
        return None

    @property
    def multiplexed_model_ids(self) -> Set[str]:
        return set()

    @property
    def max_ongoing_requests(self) -> int:
        return self._max_ongoing_requests

    def update_replica_info(self, replica_info: Any) -> None:
        pass

    def push_proxy_handle(self, handle: Any) -> None:
        pass

    async def get_queue_len(self, *, deadline_s: float) -> int:
        self.num_get_queue_len_calls += 1
        return 0

    def try_send_request(self, pr: PendingRequest, with_rejection: bool) -> Any:
        raise NotImplementedError()


HANG = object()


class Delayed:
    """A resolve outcome that is produced after ``delay_s``."""

    def __init__(self, delay_s: float, outcome: Any):
        self.delay_s = delay_s
        self.outcome = outcome


class Resolver:
    """A counting ``resolve_fn``.

    Each call consumes the next outcome (the last one repeats): a handle is
    returned, an exception raised, ``HANG`` never returns.
    """

    def __init__(self, *outcomes: Any):
        self._outcomes = list(outcomes)
        self.calls = 0
        self.call_times: List[float] = []

    async def __call__(self) -> Any:
        self.calls += 1
        self.call_times.append(time.monotonic())
        if len(self._outcomes) > 1:
            outcome = self._outcomes.pop(0)
        else:
            outcome = self._outcomes[0]
        if isinstance(outcome, Delayed):
            await asyncio.sleep(outcome.delay_s)
            outcome = outcome.outcome
        if outcome is HANG:
            await asyncio.Event().wait()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


async def wait_until(predicate: Callable[[], bool], timeout_s: float = WAIT_S):
    """Poll ``predicate`` on the loop until it holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"Condition not met within {timeout_s}s.")
        await asyncio.sleep(0.002)


async def spin(n: int = 10) -> None:
    """Let the loop run ``n`` iterations (callbacks of resolved futures)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def timed(coro) -> Tuple[Any, float]:
    """Await ``coro``; return its result and how long it took."""
    start = time.perf_counter()
    result = await coro
    return result, time.perf_counter() - start


# ---------------------------------------------------------------------- #
# Fixtures
# ---------------------------------------------------------------------- #


@pytest.fixture(autouse=True)
def _no_ray_init(monkeypatch):
    """Unit tests must never start Ray.

    The repository's conftest only guards paths containing ``/tests/unit/``,
    which this file's path does not, so guard here too.
    """

    def _raise(*args, **kwargs):
        raise RuntimeError("Unit tests must not start Ray (ray.init was called).")

    monkeypatch.setattr(ray, "init", _raise)
    yield
    assert not ray.is_initialized()


class Tenants:
    """The router's current tenants, as ``get_current_tenants`` returns them."""

    def __init__(self, *tenants: str):
        self.tenants = list(tenants)
        self.calls = 0

    def __call__(self) -> List[str]:
        self.calls += 1
        return list(self.tenants)


@pytest.fixture
async def make_client():
    """Build PrefixTreeClients with short timeouts; shut them down afterwards."""
    made: List[PrefixTreeClient] = []

    def _make(**kwargs) -> PrefixTreeClient:
        params = dict(
            deployment_id=DEPLOYMENT_ID,
            get_current_tenants=Tenants(),
            call_timeout_s=CALL_TIMEOUT_S,
            resolve_timeout_s=0.2,
            backoff_initial_s=BACKOFF_INITIAL_S,
            backoff_max_s=BACKOFF_MAX_S,
            max_consecutive_timeouts=3,
            prune_interval_s=0,
            replica_exists_fn=lambda tenant: True,
        )
        params.update(kwargs)
        client = PrefixTreeClient(**params)
        made.append(client)
        return client

    yield _make
    for client in made:
        client.shutdown()
    await spin()


def replica_id_str(unique_id: str) -> str:
    """The tenant string of the FakeRunningReplica ``unique_id``."""
    return ReplicaID(unique_id=unique_id, deployment_id=DEPLOYMENT_ID).to_full_id_str()


def make_replicas(*unique_ids: str) -> List[FakeRunningReplica]:
    """FakeRunningReplicas of the test deployment."""
    return [FakeRunningReplica(unique_id) for unique_id in unique_ids]


def make_request(*args: Any) -> PendingRequest:
    """A pending request with positional ``args``."""
    return PendingRequest(
        args=list(args),
        kwargs={},
        metadata=RequestMetadata(request_id="req", internal_request_id="req"),
    )


def prompt_request(prompt: str) -> PendingRequest:
    """A pending request whose first argument has a ``prompt``."""
    return make_request(SimpleNamespace(prompt=prompt))


@pytest.fixture
async def make_router():
    """Build PrefixCacheAffinityRouters on the test's loop (as upstream tests do)."""
    made: List[PrefixCacheAffinityRouter] = []

    def _make(
        tree: Any,
        replicas: Optional[List[FakeRunningReplica]] = None,
        **state_kwargs,
    ) -> PrefixCacheAffinityRouter:
        router = PrefixCacheAffinityRouter(
            deployment_id=DEPLOYMENT_ID,
            handle_source=DeploymentHandleSource.REPLICA,
            use_replica_queue_len_cache=False,
            get_curr_time_s=time.time,
        )
        params = dict(
            tree_actor=tree,
            tree_call_timeout_s=CALL_TIMEOUT_S,
            tree_initial_wait_s=CALL_TIMEOUT_S,
        )
        params.update(state_kwargs)
        router.initialize_state(**params)
        if replicas:
            router.update_replicas(replicas)
        made.append(router)
        return router

    yield _make
    for router in made:
        router._tree.shutdown()
    await asyncio.sleep(0.01)


async def choose(router, candidates, request) -> List[List[Any]]:
    """``router.choose_replicas``, failing (not hanging) if it never returns."""
    return await asyncio.wait_for(
        router.choose_replicas(candidates, request), timeout=WAIT_S
    )


def assert_power_of_two(chosen: List[List[Any]], replicas: List[Any]) -> None:
    """``chosen`` is power-of-two's answer: two distinct replicas of ``replicas``."""
    assert len(chosen) == 1, chosen
    assert len(chosen[0]) == 2, chosen
    assert chosen[0][0] is not chosen[0][1]
    assert all(any(r is c for r in replicas) for c in chosen[0])


# ---------------------------------------------------------------------- #
# Resolving the tree
# ---------------------------------------------------------------------- #


def test_ensure_started_without_loop_is_noop():
    """Outside an event loop ensure_started does nothing; on a loop it starts."""
    tree = FakeTree()
    resolver = Resolver(tree)
    tenants = Tenants("t1")
    client = PrefixTreeClient(
        deployment_id=DEPLOYMENT_ID,
        get_current_tenants=tenants,
        resolve_fn=resolver,
        backoff_initial_s=BACKOFF_INITIAL_S,
        prune_interval_s=0.01,
        replica_exists_fn=lambda tenant: True,
    )
    client.ensure_started()
    assert client._resolve_task is None
    assert client._prune_task is None
    assert client.handle is None
    assert not client.available
    assert resolver.calls == 0
    assert tenants.calls == 0

    async def on_a_loop():
        client.ensure_started()
        try:
            await wait_until(lambda: client.available)
        finally:
            client.shutdown()
            await spin()

    asyncio.run(on_a_loop())
    assert resolver.calls == 1
    assert client.handle is tree


async def test_resolves_in_background_and_refills_current_tenants(make_client):
    """ensure_started returns at once; the tree is resolved then refilled."""
    tree = FakeTree()
    resolver = Resolver(Delayed(0.02, tree))
    tenants = Tenants("t1")
    client = make_client(get_current_tenants=tenants, resolve_fn=resolver)

    start = time.perf_counter()
    client.ensure_started()
    assert time.perf_counter() - start < 0.01
    assert not client.available
    # The tenants are read at refill time, not when resolving starts.
    tenants.tenants = ["t1", "t2"]

    await wait_until(lambda: client.available)
    assert client.handle is tree
    assert resolver.calls == 1
    assert client.stats["resolves"] == 1
    add_calls = tree.calls_of("add_tenants")
    assert len(add_calls) == 1
    assert add_calls[0][0] == ["t1", "t2"]
    assert set(tree.backing.tenant_to_char_count) == {"t1", "t2"}
    # No eviction loop unless asked for.
    assert tree.calls_of("start_eviction_loop") == []

    # Calling ensure_started again does not resolve again.
    client.ensure_started()
    await asyncio.sleep(0.03)
    assert resolver.calls == 1


async def test_no_tenants_refill_sends_no_add_tenants(make_client):
    """A router without replicas yet does not send an empty add_tenants."""
    tree = FakeTree()
    client = make_client(resolve_fn=Resolver(tree))
    client.ensure_started()
    await wait_until(lambda: client.available)
    assert tree.calls_of("add_tenants") == []


async def test_refill_starts_eviction_loop(make_client):
    """With eviction_args, the resolved tree's eviction loop is started."""
    tree = FakeTree()
    client = make_client(
        get_current_tenants=Tenants("t1"),
        resolve_fn=Resolver(tree),
        eviction_args=(100, 80, 1.0),
    )
    client.ensure_started()
    await wait_until(lambda: client.available)
    assert tree.calls_of("start_eviction_loop") == [(100, 80, 1.0)]
    # After the tenants were added.
    names = [name for name, _ in tree.calls]
    assert names.index("add_tenants") < names.index("start_eviction_loop")


async def test_available_only_after_refill(make_client):
    """While the refill is unanswered, reads skip the tree and inserts drop."""
    tree = FakeTree().set("add_tenants", never())
    client = make_client(get_current_tenants=Tenants("t1"), resolve_fn=Resolver(tree))
    client.ensure_started()
    await wait_until(lambda: len(tree.futures["add_tenants"]) == 1)

    # Writes go to the new tree already, reads do not.
    assert client.handle is tree
    assert not client.available
    result, elapsed = await timed(client.prefix_match("hello", ["t1"]))
    assert result is None
    assert elapsed < CALL_TIMEOUT_S / 2
    assert await client.get_smallest_tenants() is None
    client.insert("hello", "t1")
    await asyncio.sleep(0.1)  # longer than any insert batching delay
    assert tree.calls_of("prefix_match") == []
    assert tree.calls_of("get_smallest_tenants") == []
    assert tree.calls_of("insert") == []

    _set_result(tree.futures["add_tenants"][0], None)
    await wait_until(lambda: client.available)
    tree.backing.add_tenants(["t1"], time.time())
    assert await client.prefix_match("hello", ["t1"]) == ("", ["t1"])


async def test_refill_that_times_out_is_retried(make_client):
    """A refill unanswered within resolve_timeout_s makes the client resolve again."""
    tree = FakeTree().set("add_tenants", never())
    resolver = Resolver(tree)
    client = make_client(
        get_current_tenants=Tenants("t1"), resolve_fn=resolver, resolve_timeout_s=0.05
    )
    client.ensure_started()
    await wait_until(lambda: resolver.calls >= 2)
    assert not client.available
    tree.set("add_tenants", execute())
    await wait_until(lambda: client.available)
    assert client.handle is tree
    assert set(tree.backing.tenant_to_char_count) == {"t1"}


async def test_wait_for_initial_tree_is_bounded_and_happens_once(make_client):
    """The first wait lasts at most its timeout; later waits return at once."""
    resolver = Resolver(HANG)
    client = make_client(resolve_fn=resolver)

    _, elapsed = await timed(client.wait_for_initial_tree(0.1))
    assert 0.08 <= elapsed < 0.5
    assert resolver.calls == 1
    assert not client.available

    _, elapsed = await timed(client.wait_for_initial_tree(0.1))
    assert elapsed < 0.02


async def test_wait_for_initial_tree_returns_once_resolved(make_client):
    """The wait ends as soon as the tree is available, well before its timeout."""
    tree = FakeTree()
    client = make_client(
        get_current_tenants=Tenants("t1"), resolve_fn=Resolver(Delayed(0.03, tree))
    )
    _, elapsed = await timed(client.wait_for_initial_tree(5.0))
    assert elapsed < 1.0
    assert client.available
    assert client.handle is tree


async def test_wait_for_initial_tree_with_injected_tree_returns_at_once(make_client):
    """A client given its tree never waits."""
    tree = FakeTree().set_all(never())
    client = make_client(tree_actor=tree, resolve_fn=Resolver(HANG))
    _, elapsed = await timed(client.wait_for_initial_tree(1.0))
    assert elapsed < 0.02


# ---------------------------------------------------------------------- #
# Missing tree / controller down
# ---------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "outcome",
    [RuntimeError("controller down"), asyncio.TimeoutError(), HANG],
    ids=["raises", "times-out", "hangs"],
)
async def test_unresolved_tree_reads_none_at_once_and_drops_writes(
    make_client, outcome
):
    """Without a tree, reads answer None at once and writes are dropped quietly."""
    resolver = Resolver(outcome)
    client = make_client(get_current_tenants=Tenants("t1"), resolve_fn=resolver)
    client.ensure_started()
    await asyncio.sleep(0.03)
    assert not client.available
    assert client.handle is None

    for _ in range(5):
        result, elapsed = await timed(client.prefix_match("hello", ["t1"]))
        assert result is None
        assert elapsed < CALL_TIMEOUT_S / 2
    result, elapsed = await timed(client.get_smallest_tenants())
    assert result is None
    assert elapsed < CALL_TIMEOUT_S / 2
    assert await client.prune_dead_tenants() == []

    client.add_tenants(["t2"])
    client.remove_tenants(["t1"])
    client.insert("hello", "t1")
    assert client._inflight_writes == 0
    assert client.stats["dropped_inserts"] == 0
    assert client.stats["tree_deaths"] == 0


async def test_resolve_retries_with_backoff_until_it_succeeds(make_client):
    """Failed resolves are retried with growing delays; then the tree is used."""
    tree = FakeTree()
    error = RuntimeError("controller down")
    resolver = Resolver(error, error, error, tree)
    client = make_client(
        get_current_tenants=Tenants("t1"),
        resolve_fn=resolver,
        backoff_initial_s=0.01,
        backoff_max_s=1.0,
    )
    client.ensure_started()
    await wait_until(lambda: client.available)
    assert resolver.calls == 4
    assert client.handle is tree
    assert tree.calls_of("add_tenants")[0][0] == ["t1"]

    gaps = [b - a for a, b in zip(resolver.call_times, resolver.call_times[1:])]
    # 0.01, 0.02, 0.04 (each +-20% jitter).
    assert gaps[0] >= 0.0075
    assert gaps[1] > gaps[0]
    assert gaps[2] > gaps[1]
    assert gaps[2] >= 0.03


async def test_resolve_backoff_is_capped(make_client):
    """The delay between resolves never exceeds backoff_max_s (plus jitter)."""
    tree = FakeTree()
    error = RuntimeError("controller down")
    resolver = Resolver(*([error] * 7), tree)
    client = make_client(
        resolve_fn=resolver, backoff_initial_s=0.01, backoff_max_s=0.02
    )
    client.ensure_started()
    await wait_until(lambda: client.available)
    assert resolver.calls == 8
    gaps = [b - a for a, b in zip(resolver.call_times, resolver.call_times[1:])]
    # Uncapped, the last gap would be 0.64s.
    assert max(gaps) < 0.06


async def test_hanging_resolve_is_abandoned_and_retried(make_client):
    """A resolve that never returns is given up after resolve_timeout_s."""
    tree = FakeTree()
    resolver = Resolver(HANG, tree)
    client = make_client(resolve_fn=resolver, resolve_timeout_s=0.05)
    client.ensure_started()
    await wait_until(lambda: client.available, timeout_s=1.0)
    assert resolver.calls == 2
    assert client.handle is tree


# ---------------------------------------------------------------------- #
# Slow tree
# ---------------------------------------------------------------------- #


async def test_slow_read_times_out(make_client):
    """A prefix match slower than call_timeout_s returns None after ~the timeout."""
    tree = FakeTree().set("prefix_match", never())
    client = make_client(tree_actor=tree, resolve_fn=Resolver(HANG))
    result, elapsed = await timed(client.prefix_match("hello", ["t1"]))
    assert result is None
    assert CALL_TIMEOUT_S * 0.8 <= elapsed < CALL_TIMEOUT_S + 0.2
    assert client.stats["read_timeouts"] == 1
    # One timeout is not enough to skip the tree.
    assert client.available


async def test_answer_within_timeout_is_returned(make_client):
    """A slow-ish answer that arrives before call_timeout_s is used."""
    tree = FakeTree().set("prefix_match", reply_after(0.01))
    tree.backing.add_tenants(["t1"], time.time())
    tree.backing.insert("hello", "t1", time.time())
    client = make_client(tree_actor=tree, call_timeout_s=0.5)
    assert await client.prefix_match("hello world", ["t1"]) == ("hello", ["t1"])
    assert client.stats["read_timeouts"] == 0


async def test_consecutive_timeouts_skip_the_tree_for_a_while(make_client):
    """After max_consecutive_timeouts, reads skip the tree until the skip ends."""
    tree = FakeTree().set("prefix_match", never())
    tree.backing.add_tenants(["t1"], time.time())
    client = make_client(tree_actor=tree, max_consecutive_timeouts=2, backoff_max_s=0.2)
    assert await client.prefix_match("hello", ["t1"]) is None
    assert client.available
    assert await client.prefix_match("hello", ["t1"]) is None
    assert not client.available
    assert client.stats["read_timeouts"] == 2

    # Skipped: instant None, the tree is not asked.
    result, elapsed = await timed(client.prefix_match("hello", ["t1"]))
    assert result is None
    assert elapsed < CALL_TIMEOUT_S / 2
    result, elapsed = await timed(client.get_smallest_tenants())
    assert result is None
    assert elapsed < CALL_TIMEOUT_S / 2
    assert len(tree.calls_of("prefix_match")) == 2
    assert tree.calls_of("get_smallest_tenants") == []
    # Not dead: no re-resolve, same handle.
    assert client.handle is tree
    assert client.stats["tree_deaths"] == 0

    tree.set("prefix_match", execute())
    await wait_until(lambda: client.available, timeout_s=1.0)
    assert await client.prefix_match("hello", ["t1"]) == ("", ["t1"])


async def test_successful_read_resets_timeout_count(make_client):
    """Timeouts only count when consecutive."""
    tree = FakeTree()
    tree.backing.add_tenants(["t1"], time.time())
    client = make_client(tree_actor=tree, max_consecutive_timeouts=2)
    tree.set("prefix_match", never())
    assert await client.prefix_match("hello", ["t1"]) is None
    tree.set("prefix_match", execute())
    assert await client.prefix_match("hello", ["t1"]) == ("", ["t1"])
    tree.set("prefix_match", never())
    assert await client.prefix_match("hello", ["t1"]) is None
    assert client.available


# ---------------------------------------------------------------------- #
# Dead tree
# ---------------------------------------------------------------------- #


async def _resolved_client(make_client, resolver, tenants, **kwargs):
    client = make_client(get_current_tenants=tenants, resolve_fn=resolver, **kwargs)
    client.ensure_started()
    await wait_until(lambda: client.available)
    return client


async def test_dead_tree_on_read_is_replaced_rejecting_the_dead_actor(make_client):
    """A read failing with ActorDiedError leads to a new, refilled tree.

    A resolve that returns the dead actor again (the controller has not noticed
    yet) is rejected and retried.
    """
    old = FakeTree("old")
    stale = old.clone("stale")
    new = FakeTree("new")
    resolver = Resolver(old, stale, new)
    tenants = Tenants("t1", "t2")
    client = await _resolved_client(make_client, resolver, tenants)
    assert client.handle is old

    old.set("prefix_match", fail(ActorDiedError()))
    result, elapsed = await timed(client.prefix_match("hello", ["t1"]))
    assert result is None
    assert elapsed < CALL_TIMEOUT_S
    assert client.stats["tree_deaths"] == 1
    assert not client.available

    tenants.tenants = ["t1", "t3"]
    await wait_until(lambda: client.available)
    assert client.handle is new
    assert resolver.calls == 3
    assert stale.calls_of("add_tenants") == []
    assert new.calls_of("add_tenants")[0][0] == ["t1", "t3"]
    assert set(new.backing.tenant_to_char_count) == {"t1", "t3"}

    # Reads now go to the new tree only.
    new.backing.insert("hello", "t3", time.time())
    assert await client.prefix_match("hello", ["t1", "t3"]) == ("hello", ["t3"])
    assert len(old.calls_of("prefix_match")) == 1


async def test_dead_tree_replacement_starts_eviction_again(make_client):
    """The recreated tree gets its eviction loop started too."""
    old, new = FakeTree("old"), FakeTree("new")
    client = await _resolved_client(
        make_client, Resolver(old, new), Tenants("t1"), eviction_args=(10, 5, 1.0)
    )
    old.set("get_smallest_tenants", fail(ActorDiedError()))
    assert await client.get_smallest_tenants() is None
    await wait_until(lambda: client.handle is new and client.available)
    assert new.calls_of("start_eviction_loop") == [(10, 5, 1.0)]


@pytest.mark.parametrize("write", ["insert", "add_tenants", "remove_tenants"])
async def test_dead_tree_on_write_is_replaced(make_client, write):
    """A write whose future fails with ActorDiedError also triggers a re-resolve."""
    old, new = FakeTree("old"), FakeTree("new")
    resolver = Resolver(old, new)
    tenants = Tenants("t1")
    client = await _resolved_client(make_client, resolver, tenants)

    old.set(write, fail(ActorDiedError()))
    if write == "insert":
        client.insert("hello", "t1")
    elif write == "add_tenants":
        tenants.tenants = ["t1", "t2"]
        client.add_tenants(["t2"])
    else:
        tenants.tenants = []
        client.remove_tenants(["t1"])
    # Inserts may be batched and sent a moment later.
    expected_calls = 1 + (write == "add_tenants")
    await wait_until(lambda: len(old.calls_of(write)) == expected_calls)

    await wait_until(lambda: client.handle is new and client.available)
    assert client.stats["tree_deaths"] == 1
    assert resolver.calls == 2
    assert set(new.backing.tenant_to_char_count) == set(tenants.tenants)
    assert client._inflight_writes == 0


@pytest.mark.parametrize("where", ["read", "write"])
async def test_actor_unavailable_does_not_mark_tree_dead(make_client, where):
    """ActorUnavailableError is transient: the tree is kept."""
    tree = FakeTree()
    resolver = Resolver(tree, FakeTree("other"))
    client = await _resolved_client(make_client, resolver, Tenants("t1"))
    error = ActorUnavailableError("connection lost", None)
    assert isinstance(error, RayActorError)

    if where == "read":
        tree.set("prefix_match", fail(error))
        assert await client.prefix_match("hello", ["t1"]) is None
    else:
        tree.set("insert", fail(error))
        client.insert("hello", "t1")
        # Inserts may be batched and sent a moment later.
        await wait_until(lambda: len(tree.futures["insert"]) == 1)
        await spin()
        assert client._inflight_writes == 0
    await asyncio.sleep(0.03)
    assert client.available
    assert client.handle is tree
    assert client.stats["tree_deaths"] == 0
    assert resolver.calls == 1


async def test_generic_actor_error_on_read_marks_tree_dead(make_client):
    """A plain RayActorError (not 'unavailable') counts as a death."""
    old, new = FakeTree("old"), FakeTree("new")
    client = await _resolved_client(make_client, Resolver(old, new), Tenants("t1"))
    old.set("prefix_match", fail(RayActorError()))
    assert await client.prefix_match("hello", ["t1"]) is None
    await wait_until(lambda: client.handle is new and client.available)


@pytest.mark.parametrize(
    "read",
    [
        "prefix_match",
        "get_smallest_tenants",
    ],
)
async def test_read_whose_submission_raises_returns_none(make_client, read):
    """``.remote()`` raising on a read gives None, like any other read failure."""
    tree = FakeTree().set(read, raise_on_submit(ActorDiedError()))
    tree.backing.add_tenants(["t1"], time.time())
    client = make_client(tree_actor=tree)
    if read == "prefix_match":
        call = client.prefix_match("hello", ["t1"])
    else:
        call = client.get_smallest_tenants()
    assert await asyncio.wait_for(call, timeout=1.0) is None


async def test_concurrent_prefix_matches_get_their_own_answers(make_client):
    """Matches issued together (possibly batched) each get their own answer."""
    tree = FakeTree()
    tree.backing.add_tenants(["a", "b", "c"], time.time())
    tree.backing.insert("apple pie", "a", time.time())
    tree.backing.insert("banana split", "b", time.time())
    client = make_client(tree_actor=tree)
    results = await asyncio.gather(
        client.prefix_match("apple tart", ["a", "b", "c"]),
        client.prefix_match("banana bread", ["a", "b", "c"]),
        client.prefix_match("cherry", ["c"]),
        client.prefix_match("apple pie", ["b"]),
    )
    assert results == [
        ("apple ", ["a"]),
        ("banana ", ["b"]),
        ("", ["c"]),
        ("", ["b"]),
    ]
    assert len(tree.calls_of("prefix_match")) == 4


async def test_concurrent_prefix_matches_on_slow_tree_all_time_out(make_client):
    """Every waiting match gets None after about call_timeout_s."""
    tree = FakeTree().set("prefix_match", never())
    client = make_client(tree_actor=tree)
    results, elapsed = await timed(
        asyncio.gather(*(client.prefix_match(f"p{i}", ["t1"]) for i in range(5)))
    )
    assert results == [None] * 5
    assert elapsed < CALL_TIMEOUT_S + 0.3


async def test_prefix_match_is_not_delayed_by_pending_inserts(make_client):
    """A match goes to the tree at once, even while inserts wait to be batched."""
    tree = FakeTree()
    tree.backing.add_tenants(["t1"], time.time())
    client = make_client(tree_actor=tree, insert_flush_interval_s=0.3)
    client.insert("something else", "t1")
    result, elapsed = await timed(client.prefix_match("hello", ["t1"]))
    assert result == ("", ["t1"])
    assert elapsed < 0.1


async def test_dead_tree_is_not_bypassed_by_local_answers(make_client):
    """Once the tree is dead, reads return None even for prompts seen before."""
    tree = FakeTree()
    client = make_client(tree_actor=tree)
    client.add_tenants(["t1"])
    client.insert("hello world", "t1")
    await wait_until(lambda: len(tree.calls_of("insert")) == 1)
    assert await client.prefix_match("hello world", ["t1"]) == ("hello world", ["t1"])

    tree.set("get_smallest_tenants", fail(ActorDiedError()))
    assert await client.get_smallest_tenants() is None
    assert not client.available
    assert await client.prefix_match("hello world", ["t1"]) is None


async def test_other_read_errors_return_none_and_keep_tree(make_client):
    """Unexpected read errors return None without dropping the tree."""
    tree = FakeTree().set("prefix_match", fail(ValueError("boom")))
    client = make_client(tree_actor=tree)
    assert await client.prefix_match("hello", ["t1"]) is None
    assert client.available
    assert client.stats["tree_deaths"] == 0


async def test_death_of_a_replaced_tree_is_ignored(make_client):
    """A late failure from an old tree does not drop the current one."""
    old, new = FakeTree("old"), FakeTree("new")
    resolver = Resolver(old, new)
    client = await _resolved_client(make_client, resolver, Tenants("t1"))
    old.set("insert", never())
    client.insert("hello", "t1")
    await wait_until(lambda: len(old.futures["insert"]) == 1)
    old.set("prefix_match", fail(ActorDiedError()))
    assert await client.prefix_match("hello", ["t1"]) is None
    await wait_until(lambda: client.handle is new and client.available)

    _set_exception(old.futures["insert"][0], ActorDiedError())
    await spin()
    assert client.handle is new
    assert client.available
    assert client.stats["tree_deaths"] == 1
    assert resolver.calls == 2


async def test_tree_dying_during_refill_is_replaced(make_client):
    """A tree that dies right after answering the refill is not used."""
    doomed, new = FakeTree("doomed"), FakeTree("new")
    doomed.set_all(never())
    resolver = Resolver(doomed, new)
    tenants = Tenants("t1")
    client = make_client(get_current_tenants=tenants, resolve_fn=resolver)
    client.ensure_started()
    await wait_until(lambda: len(doomed.futures["add_tenants"]) == 1)
    assert client.handle is doomed

    # A router write goes to the tree being refilled.
    tenants.tenants = ["t1", "t2"]
    client.add_tenants(["t2"])
    # The tree answers the refill, then dies; Ray reports both in this order.
    _set_result(doomed.futures["add_tenants"][0], None)
    _set_exception(doomed.futures["add_tenants"][1], ActorDiedError())
    await spin(20)
    assert not (
        client.available and client.handle is None
    ), "the client reports the tree available but has no tree handle"

    await wait_until(lambda: client.handle is new and client.available, 1.0)
    assert await client.prefix_match("hello", ["t1"]) == ("", ["t1"])


# ---------------------------------------------------------------------- #
# Injected tree
# ---------------------------------------------------------------------- #


async def test_injected_tree_is_used_as_is(make_client):
    """A given tree is available at once and never resolved or pruned."""
    tree = FakeTree()
    tree.backing.add_tenants(["t1"], time.time())
    resolver = Resolver(FakeTree("other"))
    client = make_client(tree_actor=tree, resolve_fn=resolver, prune_interval_s=0.01)
    assert client.available
    assert client.handle is tree
    client.ensure_started()
    assert client._resolve_task is None
    assert client._prune_task is None
    assert await client.prefix_match("hello", ["t1"]) == ("", ["t1"])
    await asyncio.sleep(0.03)
    assert resolver.calls == 0
    assert tree.calls_of("getattr") == []
    # No refill either.
    assert tree.calls_of("add_tenants") == []


async def test_injected_tree_starts_eviction_at_once(make_client):
    """With eviction_args, a given tree's eviction loop starts on construction."""
    tree = FakeTree()
    make_client(tree_actor=tree, eviction_args=(100, 80, 1.0))
    assert tree.calls_of("start_eviction_loop") == [(100, 80, 1.0)]


async def test_injected_tree_stays_unavailable_after_death(make_client):
    """A given tree that dies is never replaced; reads return None at once."""
    tree = FakeTree().set("prefix_match", fail(ActorDiedError()))
    resolver = Resolver(FakeTree("other"))
    client = make_client(tree_actor=tree, resolve_fn=resolver)
    assert await client.prefix_match("hello", ["t1"]) is None
    assert not client.available
    assert client.stats["tree_deaths"] == 1

    await asyncio.sleep(0.05)
    result, elapsed = await timed(client.prefix_match("hello", ["t1"]))
    assert result is None
    assert elapsed < CALL_TIMEOUT_S / 2
    assert len(tree.calls_of("prefix_match")) == 1
    assert resolver.calls == 0
    assert client.handle is tree
    assert not client.available
    # Inserts are dropped once the tree is known dead.
    client.insert("hello", "t1")
    assert tree.calls_of("insert") == []


# ---------------------------------------------------------------------- #
# Write backpressure
# ---------------------------------------------------------------------- #


async def test_inserts_beyond_max_inflight_writes_are_dropped(make_client):
    """Unacknowledged writes cap inserts; tenant changes are always sent."""
    tree = FakeTree().set_all(never())
    client = make_client(tree_actor=tree, max_inflight_writes=3)
    # One insert at a time, each sent (possibly batched) before the next.
    for i in range(3):
        client.insert(f"prompt {i}", "t1")
        await wait_until(lambda n=i + 1: len(tree.futures["insert"]) == n)
    assert client._inflight_writes == 3
    assert client.stats["dropped_inserts"] == 0

    client.insert("dropped 1", "t1")
    client.insert("dropped 2", "t1")
    assert client.stats["dropped_inserts"] == 2
    await asyncio.sleep(0.1)
    assert [args[0] for args in tree.calls_of("insert")] == [
        "prompt 0",
        "prompt 1",
        "prompt 2",
    ]

    # Tenant changes are sent even beyond the limit.
    client.add_tenants(["t2"])
    client.remove_tenants(["t3"])
    assert len(tree.calls_of("add_tenants")) == 1
    assert len(tree.calls_of("remove_tenants")) == 1
    client.insert("dropped 3", "t1")
    assert client.stats["dropped_inserts"] == 3

    # Once acknowledged, inserts flow again.
    for futures in tree.futures.values():
        for fut in futures:
            _set_result(fut, None)
    await wait_until(lambda: client._inflight_writes == 0)
    client.insert("after", "t1")
    await wait_until(lambda: len(tree.calls_of("insert")) == 4)
    assert tree.calls_of("insert")[-1][:2] == ("after", "t1")
    assert client.stats["dropped_inserts"] == 3


async def test_write_that_cannot_be_submitted_is_dropped(make_client):
    """``.remote()`` raising does not propagate and is not counted in flight."""
    tree = FakeTree().set("insert", raise_on_submit(ActorDiedError()))
    client = make_client(tree_actor=tree)
    client.insert("hello", "t1")
    await wait_until(lambda: len(tree.calls_of("insert")) == 1)
    await spin()
    assert client._inflight_writes == 0
    # Not a death: the tree is still used.
    assert client.available


# ---------------------------------------------------------------------- #
# Pruning
# ---------------------------------------------------------------------- #


def _tree_with_tenants(*tenants: str) -> FakeTree:
    tree = FakeTree()
    tree.backing.add_tenants(list(tenants), time.time())
    for tenant in tenants:
        tree.backing.insert(f"text of {tenant}", tenant, time.time())
    return tree


async def test_prune_removes_only_dead_foreign_tenants(make_client):
    """Only tenants the router does not own and whose replica is gone are removed."""
    tree = _tree_with_tenants("mine1", "mine2", "alive", "dead1", "dead2")
    checked = []

    def replica_exists(tenant):
        checked.append(tenant)
        return tenant == "alive"

    client = make_client(
        tree_actor=tree,
        get_current_tenants=Tenants("mine1", "mine2"),
        replica_exists_fn=replica_exists,
    )
    removed = await client.prune_dead_tenants()
    assert sorted(removed) == ["dead1", "dead2"]
    assert sorted(checked) == ["alive", "dead1", "dead2"]
    assert tree.calls_of("getattr") == [("tenant_to_char_count",)]
    assert len(tree.calls_of("remove_tenants")) == 1
    assert sorted(tree.calls_of("remove_tenants")[0][0]) == ["dead1", "dead2"]
    assert client.stats["pruned_tenants"] == 2
    await spin()
    assert set(tree.backing.tenant_to_char_count) == {"mine1", "mine2", "alive"}


async def test_prune_never_removes_own_tenants(make_client):
    """The router's own tenants are kept even if their actors look gone."""
    tree = _tree_with_tenants("mine1", "mine2")
    checked = []

    def replica_exists(tenant):
        checked.append(tenant)
        return False

    client = make_client(
        tree_actor=tree,
        get_current_tenants=Tenants("mine1", "mine2"),
        replica_exists_fn=replica_exists,
    )
    assert await client.prune_dead_tenants() == []
    assert checked == []
    assert tree.calls_of("remove_tenants") == []
    assert client.stats["pruned_tenants"] == 0


async def test_prune_without_dead_tenants_sends_nothing(make_client):
    """No removal is submitted when every foreign replica still exists."""
    tree = _tree_with_tenants("mine", "other")
    client = make_client(
        tree_actor=tree,
        get_current_tenants=Tenants("mine"),
        replica_exists_fn=lambda tenant: True,
    )
    assert await client.prune_dead_tenants() == []
    assert tree.calls_of("remove_tenants") == []


async def test_prune_skips_unavailable_or_slow_tree(make_client):
    """Pruning needs the tree: unresolved or slow trees are left alone."""
    client = make_client(resolve_fn=Resolver(HANG))
    assert await client.prune_dead_tenants() == []

    tree = _tree_with_tenants("other").set("getattr", never())
    checked = []
    client = make_client(
        tree_actor=tree, replica_exists_fn=lambda t: checked.append(t) or False
    )
    assert await client.prune_dead_tenants() == []
    assert checked == []
    assert tree.calls_of("remove_tenants") == []


async def test_prune_loop_runs_in_background(make_client):
    """With prune_interval_s > 0, dead foreign tenants are pruned periodically."""
    tree = _tree_with_tenants("dead")
    client = make_client(
        get_current_tenants=Tenants("mine"),
        resolve_fn=Resolver(tree),
        prune_interval_s=0.01,
        replica_exists_fn=lambda tenant: False,
    )
    client.ensure_started()
    await wait_until(lambda: len(tree.calls_of("remove_tenants")) >= 1)
    assert tree.calls_of("remove_tenants")[0][0] == ["dead"]
    assert set(tree.backing.tenant_to_char_count) == {"mine"}

    # Another router later adds a tenant of a replica that is gone.
    tree.backing.add_tenants(["dead2"], time.time())
    await wait_until(lambda: "dead2" not in tree.backing.tenant_to_char_count)


async def test_prune_interval_zero_disables_pruning(make_client):
    """prune_interval_s=0 starts no prune task."""
    tree = _tree_with_tenants("dead")
    client = make_client(
        resolve_fn=Resolver(tree),
        prune_interval_s=0,
        replica_exists_fn=lambda tenant: False,
    )
    client.ensure_started()
    await wait_until(lambda: client.available)
    await asyncio.sleep(0.03)
    assert client._prune_task is None
    assert tree.calls_of("getattr") == []


# ---------------------------------------------------------------------- #
# PrefixCacheAffinityRouter fallbacks
# ---------------------------------------------------------------------- #


def _tree_knowing(replicas: List[FakeRunningReplica], prefix: str, owner: str):
    """An in-memory tree where ``owner`` has served ``prefix``."""
    tree = FakeTree()
    tree.backing.add_tenants(
        [r.replica_id.to_full_id_str() for r in replicas], time.time()
    )
    tree.backing.insert(prefix, replica_id_str(owner), time.time())
    return tree


async def test_router_uses_prefix_match_when_tree_is_healthy(make_router):
    """Sanity check of the fakes: a healthy tree's answer is routed to."""
    replicas = make_replicas("r1", "r2", "r3", "r4")
    tree = _tree_knowing(replicas, "hello world", "r3")
    router = make_router(tree, replicas)
    await spin()
    probes = sum(r.num_get_queue_len_calls for r in replicas)

    chosen = await choose(router, replicas, prompt_request("hello world!"))
    assert chosen == [[replicas[2]]]
    assert len(tree.calls_of("prefix_match")) == 1
    # imbalanced_threshold is infinite by default: no queue-length probes.
    assert sum(r.num_get_queue_len_calls for r in replicas) == probes


@pytest.mark.parametrize(
    "behavior",
    [
        fail(ActorDiedError()),
        never(),
        fail(ActorUnavailableError("connection lost", None)),
        raise_on_submit(ActorDiedError()),
    ],
    ids=["dead", "slow", "unavailable", "submit-raises"],
)
async def test_router_falls_back_to_power_of_two(make_router, behavior):
    """A broken tree yields power-of-two candidates, not an exception."""
    replicas = make_replicas("r1", "r2", "r3", "r4")
    tree = _tree_knowing(replicas, "hello world", "r3").set("prefix_match", behavior)
    router = make_router(tree, replicas)

    chosen, elapsed = await timed(
        choose(router, replicas, prompt_request("hello world!"))
    )
    assert_power_of_two(chosen, replicas)
    assert elapsed < CALL_TIMEOUT_S + 0.5


async def test_router_stops_asking_a_dead_tree(make_router):
    """Once the (injected) tree is dead, requests route power-of-two directly."""
    replicas = make_replicas("r1", "r2", "r3")
    tree = _tree_knowing(replicas, "hello", "r1").set(
        "prefix_match", fail(ActorDiedError())
    )
    router = make_router(tree, replicas)
    for _ in range(3):
        chosen = await choose(router, replicas, prompt_request("hello"))
        assert_power_of_two(chosen, replicas)
    assert len(tree.calls_of("prefix_match")) == 1
    assert not router._tree.available


async def test_router_falls_back_while_tree_is_not_resolved(make_router):
    """The first request waits at most tree_initial_wait_s, later ones not at all."""
    replicas = make_replicas("r1", "r2", "r3")
    router = make_router(FakeTree(), replicas)
    # Swap in a client whose controller never answers.
    router._tree = PrefixTreeClient(
        deployment_id=DEPLOYMENT_ID,
        get_current_tenants=lambda: [],
        resolve_fn=Resolver(HANG),
        prune_interval_s=0,
    )
    router._tree_initial_wait_s = 0.05

    chosen, elapsed = await timed(choose(router, replicas, prompt_request("hello")))
    assert_power_of_two(chosen, replicas)
    assert 0.04 <= elapsed < 0.5
    chosen, elapsed = await timed(choose(router, replicas, prompt_request("hello")))
    assert_power_of_two(chosen, replicas)
    assert elapsed < 0.02


@pytest.mark.parametrize("known", [False, True])
async def test_router_ignores_unknown_replicas_in_answers(make_router, known):
    """Tenants the router does not know (yet) are ignored, not a KeyError."""
    replicas = make_replicas("r1", "r2", "r3")
    unknown = replica_id_str("not-mine")
    tenants = [unknown, replica_id_str("r2")] if known else [unknown]
    tree = FakeTree().set("prefix_match", reply(("hello", tenants)))
    router = make_router(tree, replicas)

    chosen = await choose(router, replicas, prompt_request("hello"))
    if known:
        assert chosen == [[replicas[1]]]
    else:
        assert_power_of_two(chosen, replicas)


async def test_router_ignores_unknown_smallest_tenants(make_router):
    """A low match rate's smallest tenants may all be unknown: power-of-two."""
    replicas = make_replicas("r1", "r2", "r3")
    tree = (
        FakeTree()
        .set("prefix_match", reply(("", None)))
        .set("get_smallest_tenants", reply([replica_id_str("gone")]))
    )
    router = make_router(tree, replicas)
    chosen = await choose(router, replicas, prompt_request("hello"))
    assert_power_of_two(chosen, replicas)
    assert len(tree.calls_of("get_smallest_tenants")) == 1


async def test_router_smallest_tenants_slow_falls_back(make_router):
    """A get_smallest_tenants timeout also falls back to power-of-two."""
    replicas = make_replicas("r1", "r2", "r3")
    tree = (
        FakeTree()
        .set("prefix_match", reply(("", None)))
        .set("get_smallest_tenants", never())
    )
    router = make_router(tree, replicas)
    chosen = await choose(router, replicas, prompt_request("hello"))
    assert_power_of_two(chosen, replicas)


async def test_router_empty_prompt_falls_back(make_router):
    """An empty prompt is not matched (no division by zero)."""
    replicas = make_replicas("r1", "r2", "r3")
    tree = _tree_knowing(replicas, "hello", "r1")
    router = make_router(tree, replicas)
    chosen = await choose(router, replicas, prompt_request(""))
    assert_power_of_two(chosen, replicas)
    assert tree.calls_of("prefix_match") == []


@pytest.mark.parametrize(
    "args",
    [[SimpleNamespace(foo="bar")], ["plain string"], [], [SimpleNamespace(prompt=7)]],
    ids=["no-prompt-attr", "str-arg", "no-args", "non-text-prompt"],
)
async def test_router_request_without_prompt_falls_back(make_router, args):
    """Requests without a usable prompt or messages route power-of-two."""
    replicas = make_replicas("r1", "r2", "r3")
    tree = _tree_knowing(replicas, "hello", "r1")
    router = make_router(tree, replicas)
    chosen = await choose(router, replicas, make_request(*args))
    assert_power_of_two(chosen, replicas)
    assert tree.calls_of("prefix_match") == []


async def test_router_messages_are_matched(make_router):
    """Chat messages are normalized and matched (the non-fallback path)."""
    replicas = make_replicas("r1", "r2", "r3")
    tree = _tree_knowing(replicas, "You are helpful.Hi", "r2")
    router = make_router(tree, replicas)
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": [{"type": "text", "text": "Hi there"}]},
    ]
    chosen = await choose(
        router, replicas, make_request(SimpleNamespace(messages=messages))
    )
    assert chosen == [[replicas[1]]]


@pytest.mark.parametrize(
    "break_tree",
    ["dead-read", "insert-fails", "insert-submit-raises"],
)
async def test_on_request_routed_never_raises(make_router, break_tree):
    """Inserting after routing never raises, whatever state the tree is in."""
    replicas = make_replicas("r1", "r2")
    tree = _tree_knowing(replicas, "hello", "r1")
    router = make_router(tree, replicas)
    if break_tree == "dead-read":
        tree.set("prefix_match", fail(ActorDiedError()))
        await choose(router, replicas, prompt_request("hello"))
        assert not router._tree.available
    elif break_tree == "insert-fails":
        tree.set("insert", fail(ActorDiedError()))
    else:
        tree.set("insert", raise_on_submit(ActorDiedError()))

    for _ in range(3):
        router.on_request_routed(
            prompt_request("hello again"), replicas[0].replica_id, None
        )
        await spin()
    router.on_request_routed(
        make_request(SimpleNamespace()), replicas[0].replica_id, None
    )
    router.on_request_routed(prompt_request(""), replicas[0].replica_id, None)
    await asyncio.sleep(0.1)
    if break_tree == "dead-read":
        assert tree.calls_of("insert") == []
    else:
        assert len(tree.calls_of("insert")) >= 1
    if break_tree == "insert-fails":
        # A failed insert marks the (injected) tree dead: later ones drop.
        assert not router._tree.available
        router.on_request_routed(prompt_request("late"), replicas[0].replica_id, None)


async def test_on_request_routed_inserts_into_tree(make_router):
    """Sanity check: a routed prompt is inserted for the chosen replica."""
    replicas = make_replicas("r1", "r2")
    tree = _tree_knowing(replicas, "x", "r1")
    router = make_router(tree, replicas)
    router.on_request_routed(prompt_request("hello"), replicas[1].replica_id, None)
    await wait_until(lambda: len(tree.calls_of("insert")) == 1)
    assert tree.calls_of("insert")[0][:2] == ("hello", replica_id_str("r2"))


async def test_update_replicas_does_not_block_and_submits_tenant_changes(
    make_router,
):
    """Replica changes are sent to the tree without waiting for it."""
    tree = FakeTree().set_all(never())
    replicas = make_replicas("r1", "r2", "r3", "r4")
    router = make_router(tree)

    start = time.perf_counter()
    router.update_replicas(replicas[:3])
    assert time.perf_counter() - start < CALL_TIMEOUT_S
    add_calls = tree.calls_of("add_tenants")
    assert len(add_calls) == 1
    assert sorted(add_calls[0][0]) == [replica_id_str(u) for u in ("r1", "r2", "r3")]
    assert tree.calls_of("remove_tenants") == []

    start = time.perf_counter()
    router.update_replicas(replicas[1:])
    assert time.perf_counter() - start < CALL_TIMEOUT_S
    assert tree.calls_of("add_tenants")[-1][0] == [replica_id_str("r4")]
    assert tree.calls_of("remove_tenants") == [([replica_id_str("r1")],)]

    router.on_replica_actor_died(replicas[1].replica_id)
    assert tree.calls_of("remove_tenants")[-1] == ([replica_id_str("r2")],)


async def test_update_replicas_with_dead_tree_does_not_raise(make_router):
    """Tenant changes for a tree whose calls fail are dropped quietly."""
    tree = FakeTree().set_all(fail(ActorDiedError()))
    replicas = make_replicas("r1", "r2")
    router = make_router(tree)
    router.update_replicas(replicas)
    await spin()
    router.update_replicas(replicas[:1])
    await spin()
    assert not router._tree.available
    chosen = await choose(router, replicas[:1], prompt_request("hello"))
    assert chosen == [[replicas[0]]]


if __name__ == "__main__":
    sys.exit(pytest.main(["-v", "-s", __file__]))
