"""Non-blocking access to a deployment's prefix tree actor for request routers.

``PrefixCacheAffinityRouter`` runs on an event loop shared with other routers
(and, in throughput-optimized mode, with the proxy or replica itself), so it
must never block on its ``PrefixTreeActor``. ``PrefixTreeClient`` owns the
tree handle and:

* obtains the tree from the Serve controller
  (``get_or_create_deployment_actor``, one tree per deployment, owned by the
  controller), in the background, with backoff;
* submits writes (tenant changes, inserts) without waiting for them; Ray runs
  one caller's tasks on the (max_concurrency=1) actor in submission order;
* awaits reads with a timeout, and returns None when the tree is unavailable
  (not resolved yet, dead, slow, controller down), so the router routes
  power-of-two instead of failing;
* after the tree dies, asks the controller again (which recreates it), and
  refills the new tree with the router's current replicas as tenants;
* periodically prunes tenants whose replica actor no longer exists, so dead
  replicas never stay in the tree for long, even when the router that saw them
  is gone;
* keeps a local read cache: a router-local ``PrefixTree`` of the router's own
  inserts answers prefix matches that it can answer well (match rate at or
  above the router's threshold); only the other requests ask the shared tree,
  which knows what every router inserted. Inserts reach the shared tree in
  batches. Profiling showed that Ray call overhead on the tree, not the tree
  operations (~0.1 ms each), made the router slow.
"""

import asyncio
import logging
import random
import time
from typing import Any, Awaitable, Callable, List, Optional, Tuple

import ray
from ray.actor import ActorHandle
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_tree import (
    PrefixTree,
)
from ray.serve._private.common import DeploymentID
from ray.serve._private.constants import SERVE_LOGGER_NAME, SERVE_NAMESPACE
from ray.serve._private.deployment_scoped_actor_utils import NoServeControllerError
from ray.serve._private.exceptions import DeploymentIsBeingDeletedError
from ray.serve.exceptions import RayServeException

logger = logging.getLogger(SERVE_LOGGER_NAME)

# Name of the tree among its deployment's deployment-scoped actors.
PREFIX_TREE_ACTOR_NAME = "prefix-tree"


async def await_ref(ref: Any, timeout_s: Optional[float]) -> Any:
    """Await a Ray ObjectRef (or anything with ``.future()``) with a timeout."""
    return await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout_s)


async def resolve_tree_from_controller(
    deployment_id: DeploymentID, timeout_s: float
) -> ActorHandle:
    """Get or create the deployment's prefix tree through the Serve controller."""
    from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_tree import (
        PrefixTreeActor,
    )
    from ray.serve._private.deployment_scoped_actor_utils import (
        get_or_create_deployment_actor_async,
    )

    # num_cpus=0: the tree must always be placeable, next to full replicas.
    return await get_or_create_deployment_actor_async(
        deployment_id,
        PREFIX_TREE_ACTOR_NAME,
        PrefixTreeActor.options(num_cpus=0),
        timeout_s=timeout_s,
    )


def _insert_many(tree, items: List[Tuple[str, str, float]]) -> None:
    """Runs inside the tree actor (``__ray_call__``): many inserts, one call."""
    for text, tenant, time_s in items:
        tree.insert(text, tenant, time_s)


def _match_many(
    tree, items: List[Tuple[str, List[str]]]
) -> List[Tuple[str, Optional[List[str]]]]:
    """Runs inside the tree actor (``__ray_call__``): many matches, one call."""
    return [tree.prefix_match(text, tenants) for text, tenants in items]


def _replica_actor_exists(replica_id_str: str) -> bool:
    """Whether the replica's (named, detached) actor still exists. Blocking."""
    if not ray.is_initialized():
        return True  # never start Ray from a background thread
    try:
        ray.get_actor(replica_id_str, namespace=SERVE_NAMESPACE)
        return True
    except ValueError:
        return False


class PrefixTreeClient:
    """Owns a router's handle to its prefix tree; used only on the router loop."""

    def __init__(
        self,
        *,
        deployment_id: Optional[DeploymentID],
        get_current_tenants: Callable[[], List[str]],
        tree_actor: Optional[ActorHandle] = None,
        eviction_args: Optional[Tuple[int, int, float]] = None,
        call_timeout_s: float = 0.5,
        resolve_timeout_s: float = 10.0,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
        max_consecutive_timeouts: int = 3,
        prune_interval_s: float = 10.0,
        max_inflight_writes: int = 10_000,
        local_cache: bool = True,
        insert_flush_interval_s: float = 0.05,
        resolve_fn: Optional[Callable[[], Awaitable[ActorHandle]]] = None,
        replica_exists_fn: Callable[[str], bool] = _replica_actor_exists,
    ):
        """Create the client.

        Args:
            deployment_id: The routed deployment (its tree is per deployment).
            get_current_tenants: Returns the router's current replica id strings.
            tree_actor: A tree to use as is (tests); it is never re-resolved.
            eviction_args: (threshold_chars, target_chars, interval_s) to start
                the tree's eviction loop with, or None.
            call_timeout_s: Timeout of a read (prefix match) on the tree.
            resolve_timeout_s: Timeout of one controller get-or-create call.
            backoff_initial_s: First delay between resolve attempts.
            backoff_max_s: Longest delay between resolve attempts.
            max_consecutive_timeouts: Reads that time out in a row before the
                tree is skipped for a backoff period.
            prune_interval_s: How often to prune tenants of dead replicas
                (0 disables pruning).
            max_inflight_writes: Inserts beyond this many unacknowledged writes
                are dropped (tenant changes are always sent).
            local_cache: Answer prefix matches from a router-local tree when it
                matches well enough, and batch inserts to the shared tree.
            insert_flush_interval_s: With the local cache, how long inserts are
                collected before they go to the shared tree in one call.
            resolve_fn: Coroutine function returning the tree handle (tests).
            replica_exists_fn: Blocking check whether a replica actor exists.
        """
        self._deployment_id = deployment_id
        self._get_current_tenants = get_current_tenants
        self._eviction_args = eviction_args
        self._call_timeout_s = call_timeout_s
        self._resolve_timeout_s = resolve_timeout_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._max_consecutive_timeouts = max_consecutive_timeouts
        self._prune_interval_s = prune_interval_s
        self._max_inflight_writes = max_inflight_writes
        self._replica_exists_fn = replica_exists_fn
        self._injected = tree_actor is not None
        if resolve_fn is None and deployment_id is not None:

            async def resolve_fn():
                return await resolve_tree_from_controller(
                    deployment_id, self._resolve_timeout_s
                )

        self._resolve_fn = resolve_fn

        self._handle: Optional[ActorHandle] = tree_actor
        self._ready = tree_actor is not None
        self._initial_wait_done = self._ready
        self._dead_actor_id: Optional[Any] = None
        self._resolve_task: Optional[asyncio.Task] = None
        # The controller said the deployment is gone (deleted, or Serve shut
        # down): stop asking until the router gets replicas again.
        self._deployment_gone = False
        self._closed = False
        self._prune_task: Optional[asyncio.Task] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._consecutive_timeouts = 0
        self._skip_until = 0.0
        self._inflight_writes = 0
        # Inserts and prefix matches issued in the same event loop iteration
        # go to the tree as one actor call (Ray call overhead dominates the
        # cost of the tree operations themselves).
        self._pending_inserts: List[Tuple[str, str, float]] = []
        self._pending_matches: List[Tuple[str, List[str], asyncio.Future]] = []
        self._insert_flush_timer: Optional[asyncio.TimerHandle] = None
        self._match_flush_scheduled = False
        self._local: Optional[PrefixTree] = PrefixTree() if local_cache else None
        self._insert_flush_interval_s = insert_flush_interval_s if local_cache else 0
        self._local_eviction_task: Optional[asyncio.Task] = None
        # Counters, for logs and tests.
        self.stats = {
            "resolves": 0,
            "tree_deaths": 0,
            "read_timeouts": 0,
            "dropped_inserts": 0,
            "pruned_tenants": 0,
            "local_hits": 0,
            "shared_matches": 0,
        }
        if self._ready and eviction_args is not None:
            self._submit("start_eviction_loop", *eviction_args)

    # ------------------------------------------------------------------ #
    # State
    # ------------------------------------------------------------------ #

    @property
    def handle(self) -> Optional[ActorHandle]:
        return self._handle

    @property
    def available(self) -> bool:
        """Whether reads should go to the tree now."""
        return self._ready and time.monotonic() >= self._skip_until

    def ensure_started(self) -> None:
        """Start resolving the tree (and pruning) if not done yet.

        Needs a running event loop; without one (router built in a test outside
        a loop) it is a no-op and the next call on the loop starts things.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._loop = loop
        if self._deployment_gone or self._closed:
            return
        if (
            self._handle is None
            and self._resolve_fn is not None
            and (self._resolve_task is None or self._resolve_task.done())
        ):
            self._resolve_task = loop.create_task(self._resolve_loop())
        if (
            self._local is not None
            and self._eviction_args is not None
            and (self._local_eviction_task is None or self._local_eviction_task.done())
        ):
            self._local_eviction_task = loop.create_task(self._local_eviction_loop())
        if (
            self._prune_interval_s > 0
            and not self._injected
            and (self._prune_task is None or self._prune_task.done())
        ):
            self._prune_task = loop.create_task(self._prune_loop())

    async def wait_for_initial_tree(self, timeout_s: float) -> None:
        """On a router's first requests, wait (once, bounded) for the tree.

        Creating the tree starts a worker process, which takes a moment; without
        this wait the router's first requests would all route power-of-two and
        seed the tree with every replica for every prefix.
        """
        if self._initial_wait_done:
            return
        self.ensure_started()
        task = self._resolve_task
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout_s)
            except Exception:
                pass
        self._initial_wait_done = True

    async def _local_eviction_loop(self) -> None:
        threshold, target, interval_s = self._eviction_args
        while True:
            await asyncio.sleep(interval_s)
            for tenant, chars in list(self._local.tenant_to_char_count.items()):
                if chars > threshold:
                    self._local.evict_tenant_by_lru(tenant, chars - target)

    def shutdown(self) -> None:
        """Stop all background work for good (the router is going away)."""
        self._closed = True
        for task in (self._resolve_task, self._prune_task, self._local_eviction_task):
            if task is not None and not task.done():
                task.cancel()

    # ------------------------------------------------------------------ #
    # Resolve, refill, prune
    # ------------------------------------------------------------------ #

    async def _resolve_loop(self) -> None:
        backoff = self._backoff_initial_s
        while self._handle is None and not self._closed:
            try:
                handle = await asyncio.wait_for(
                    self._resolve_fn(), self._resolve_timeout_s
                )
                self.stats["resolves"] += 1
                if handle._actor_id == self._dead_actor_id:
                    # The controller has not noticed the death yet; asking
                    # made it health-check the tree on its next loop tick, so
                    # ask again soon instead of backing off.
                    await asyncio.sleep(self._backoff_initial_s)
                    continue
                # Writes from now on go to the new tree; reads once refilled.
                self._handle = handle
                try:
                    await self._refill(handle)
                except BaseException:
                    if self._handle is handle:
                        self._handle = None
                    raise
                if self._handle is not handle:
                    raise RuntimeError("the tree died while it was being refilled")
                self._ready = True
                self._consecutive_timeouts = 0
                self._skip_until = 0.0
                logger.info(
                    f"Prefix tree of {self._deployment_id} is available "
                    f"(actor {handle._actor_id.hex()})."
                )
                return
            except asyncio.CancelledError:
                raise
            except NoServeControllerError:
                return  # Ray was shut down in this process: nothing to ask.
            except (ValueError, DeploymentIsBeingDeletedError, RayServeException) as e:
                # The controller refused: the deployment was deleted or Serve
                # is shutting down. Retrying would only recreate nothing.
                self._deployment_gone = True
                logger.info(
                    f"Not resolving the prefix tree of {self._deployment_id}: "
                    f"{type(e).__name__}: {e}"
                )
                return
            except Exception as e:
                logger.info(
                    f"Prefix tree of {self._deployment_id} not available yet, "
                    f"routing power-of-two meanwhile ({type(e).__name__}: {e})."
                )
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, self._backoff_max_s)

    async def _refill(self, handle: ActorHandle) -> None:
        """Give a (possibly new) tree this router's replicas as tenants."""
        tenants = self._get_current_tenants()
        if tenants:
            # The first call may wait for the actor's worker process to start.
            await await_ref(
                handle.add_tenants.remote(tenants, time.time()),
                self._resolve_timeout_s,
            )
        if self._eviction_args is not None:
            handle.start_eviction_loop.remote(*self._eviction_args)

    async def _prune_loop(self) -> None:
        while not self._deployment_gone:
            await asyncio.sleep(self._prune_interval_s * random.uniform(0.8, 1.2))
            if not self._get_current_tenants():
                continue
            try:
                await self.prune_dead_tenants()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                logger.debug(f"Pruning the prefix tree failed: {e!r}")

    async def prune_dead_tenants(self) -> List[str]:
        """Remove tenants whose replica actor no longer exists.

        Tenants this router routes to are kept; any other tenant is checked
        against the cluster (its id is the replica's actor name), so a tenant
        added by a router that knows a newer replica is never removed.

        Returns:
            The removed tenants.
        """
        if not self.available:
            return []
        handle = self._handle
        try:
            ref = handle.getattr.remote("tenant_to_char_count")
        except Exception as e:
            logger.debug(f"Prefix tree read could not be submitted: {e!r}")
            return []
        counts = await self._read(ref, handle)
        if not counts:
            return []
        mine = set(self._get_current_tenants())
        others = [t for t in counts if t not in mine]
        dead = []
        for tenant in others:
            if not await asyncio.to_thread(self._replica_exists_fn, tenant):
                dead.append(tenant)
        if dead and handle is self._handle:
            self._submit("remove_tenants", dead)
            self.stats["pruned_tenants"] += len(dead)
            logger.info(f"Pruned {len(dead)} dead replica(s) from the prefix tree.")
        return dead

    def _on_dead(self, handle: ActorHandle, error: Exception) -> None:
        if handle is not self._handle:
            return
        self.stats["tree_deaths"] += 1
        logger.warning(
            f"Prefix tree of {self._deployment_id} died ({type(error).__name__}); "
            "routing power-of-two until the controller has recreated it."
        )
        self._ready = False
        if self._injected:
            return
        self._dead_actor_id = handle._actor_id
        self._handle = None
        self.ensure_started()

    # ------------------------------------------------------------------ #
    # Calls
    # ------------------------------------------------------------------ #

    def _submit(self, method: str, *args) -> None:
        """Submit a write without waiting; watch it only to notice a death."""
        handle = self._handle
        if handle is None:
            return
        self._flush_inserts()  # keep one caller's writes in order
        self._submit_to(handle, method, *args)

    def _submit_to(self, handle: ActorHandle, method: str, *args) -> None:
        try:
            ref = getattr(handle, method).remote(*args)
        except Exception as e:
            logger.debug(f"Prefix tree {method} could not be submitted: {e!r}")
            return
        if self._loop is None:
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:
                return
        self._inflight_writes += 1
        future = asyncio.wrap_future(ref.future(), loop=self._loop)
        future.add_done_callback(lambda f: self._on_write_done(f, handle))

    def _on_write_done(self, future: asyncio.Future, handle: ActorHandle) -> None:
        self._inflight_writes -= 1
        if future.cancelled():
            return
        error = future.exception()
        if isinstance(error, RayActorError) and not isinstance(
            error, ActorUnavailableError
        ):
            self._on_dead(handle, error)

    def add_tenants(self, tenants: List[str]) -> None:
        if tenants:
            if self._deployment_gone:
                # Replicas again (e.g. the app was redeployed): resolve anew.
                self._deployment_gone = False
                self.ensure_started()
            now = time.time()
            if self._local is not None:
                self._local.add_tenants(tenants, now)
            self._submit("add_tenants", tenants, now)

    def remove_tenants(self, tenants: List[str]) -> None:
        if tenants:
            if self._local is not None:
                self._local.remove_tenants(tenants)
            self._submit("remove_tenants", tenants)

    def insert(self, text: str, tenant: str) -> None:
        if not self._ready:
            return
        if self._inflight_writes >= self._max_inflight_writes:
            self.stats["dropped_inserts"] += 1
            return
        now = time.time()
        if self._local is not None:
            self._local.insert(text, tenant, now)
        self._pending_inserts.append((text, tenant, now))
        if self._insert_flush_timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._flush_inserts()  # no loop (tests): send right away
            return
        if self._insert_flush_interval_s > 0:
            self._insert_flush_timer = loop.call_later(
                self._insert_flush_interval_s, self._flush_inserts
            )
        else:
            self._insert_flush_timer = loop.call_soon(self._flush_inserts)

    def _schedule_match_flush(self) -> None:
        if not self._match_flush_scheduled:
            self._match_flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_matches)

    def _flush_inserts(self) -> None:
        if self._insert_flush_timer is not None:
            self._insert_flush_timer.cancel()
            self._insert_flush_timer = None
        if not self._pending_inserts:
            return
        batch, self._pending_inserts = self._pending_inserts, []
        if self._handle is not None:
            self._submit_to(self._handle, "__ray_call__", _insert_many, batch)

    def _flush_matches(self) -> None:
        self._match_flush_scheduled = False
        # Pending inserts go first: one caller's calls run in order.
        self._flush_inserts()
        if not self._pending_matches:
            return
        batch, self._pending_matches = self._pending_matches, []
        handle = self._handle
        ref = None
        if handle is not None:
            try:
                ref = handle.__ray_call__.remote(
                    _match_many, [(text, tenants) for text, tenants, _ in batch]
                )
            except Exception as e:
                logger.debug(f"Prefix tree match could not be submitted: {e!r}")
        if ref is None:
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_result(None)
            return
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._read(ref, handle))

        def distribute(t: asyncio.Task) -> None:
            results = None if t.cancelled() else t.result()
            for i, (_, _, fut) in enumerate(batch):
                if not fut.done():
                    fut.set_result(None if results is None else results[i])

        task.add_done_callback(distribute)

    async def _read(self, ref: Any, handle: ActorHandle) -> Optional[Any]:
        try:
            result = await await_ref(ref, self._call_timeout_s)
        except asyncio.TimeoutError:
            self.stats["read_timeouts"] += 1
            self._consecutive_timeouts += 1
            if self._consecutive_timeouts >= self._max_consecutive_timeouts:
                self._skip_until = time.monotonic() + self._backoff_max_s
                self._consecutive_timeouts = 0
                logger.warning(
                    f"Prefix tree of {self._deployment_id} timed out "
                    f"{self._max_consecutive_timeouts} times in a row; routing "
                    f"power-of-two for {self._backoff_max_s}s."
                )
            return None
        except ActorUnavailableError:
            return None
        except RayActorError as e:
            self._on_dead(handle, e)
            return None
        except Exception as e:
            logger.debug(f"Prefix tree read failed: {e!r}")
            return None
        self._consecutive_timeouts = 0
        return result

    async def prefix_match(
        self, text: str, tenants: List[str], min_match_rate: float = 0.0
    ) -> Optional[Tuple[str, Optional[List[str]]]]:
        """``PrefixTreeActor.prefix_match``, or None when the tree is unavailable.

        Args:
            text: The request's prompt text.
            tenants: Replica ids the router may route to.
            min_match_rate: A local match at least this good (matched share of
                the text) is used without asking the shared tree.
        """
        if not self.available:
            self.ensure_started()
            return None
        if self._local is not None and text:
            matched, matched_tenants = self._local.prefix_match(text, tenants)
            if (
                matched
                and matched_tenants
                and len(matched) >= min_match_rate * len(text)
            ):
                self.stats["local_hits"] += 1
                return matched, matched_tenants
        self.stats["shared_matches"] += 1
        future = asyncio.get_running_loop().create_future()
        self._pending_matches.append((text, tenants, future))
        self._schedule_match_flush()
        return await future

    async def get_smallest_tenants(self) -> Optional[List[str]]:
        """``PrefixTreeActor.get_smallest_tenants``, or None when unavailable."""
        if not self.available:
            return None
        handle = self._handle
        try:
            ref = handle.get_smallest_tenants.remote()
        except Exception as e:
            logger.debug(f"Prefix tree read could not be submitted: {e!r}")
            return None
        return await self._read(ref, handle)
