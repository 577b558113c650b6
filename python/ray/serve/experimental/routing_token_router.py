"""Routing-token request router (experimental example).

An example of a custom request router that shares state across all routers of
a deployment through a controller-managed deployment-scoped actor.

Routers of one deployment live in many processes (every proxy, and every
replica or driver that holds a handle to the deployment). ``RoutingTokenRouter``
bounds how many requests the routers send to each replica *in total* by asking
one ``RoutingTokenManager`` actor per deployment for a concurrency token before
routing a request, and giving the token back when the request completes.

The manager is created on demand through ``DeploymentActorMixin``: the Serve
controller creates it once, however many routers ask, recreates it if it dies,
recovers it after a controller restart and kills it when the deployment is
deleted or Serve shuts down.

The router never blocks its event loop and never fails a request because of the
manager: it awaits the manager with a timeout and, if the manager is slow,
dead or has no token left, returns all candidates so that Serve's queue-length
logic picks a replica.

This module is experimental: it is an example of the deployment-scoped actor
API, not a tuned production router. Usage:

.. code-block:: python

    from ray import serve
    from ray.serve.config import RequestRouterConfig
    from ray.serve.experimental.routing_token_router import RoutingTokenRouter

    @serve.deployment(
        num_replicas=2,
        request_router_config=RequestRouterConfig(
            request_router_class=RoutingTokenRouter,
            request_router_kwargs={"max_tokens_per_replica": 4},
        ),
    )
    class Model:
        async def __call__(self, x):
            return x
"""

import asyncio
import logging
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Set

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayActorError
from ray.serve._private.constants import SERVE_LOGGER_NAME
from ray.serve.request_router import (
    DeploymentActorMixin,
    PendingRequest,
    ReplicaID,
    RequestRouter,
    RunningReplica,
)

logger = logging.getLogger(SERVE_LOGGER_NAME)

# Name of the token manager within its deployment. Its Ray actor name is
# ``get_deployment_scoped_actor_name(deployment_id, MANAGER_ACTOR_NAME)``.
MANAGER_ACTOR_NAME = "routing-token-manager"

DEFAULT_MAX_TOKENS_PER_REPLICA = 4
DEFAULT_MANAGER_TIMEOUT_S = 1.0
DEFAULT_MANAGER_RETRY_INTERVAL_S = 1.0

# Separates the parts of a token: "<replica_id>:<manager epoch>:<sequence>".
_TOKEN_SEP = ":"


def token_replica_id(token: str) -> str:
    """Return the replica ID a token was granted on.

    Args:
        token: A token returned by ``RoutingTokenManager.acquire``.

    Returns:
        The replica ID part of the token.
    """
    return token.rsplit(_TOKEN_SEP, 2)[0]


def _validate_max_tokens(max_tokens_per_replica: Any) -> None:
    if (
        not isinstance(max_tokens_per_replica, int)
        or isinstance(max_tokens_per_replica, bool)
        or max_tokens_per_replica < 1
    ):
        raise ValueError(
            "max_tokens_per_replica must be a positive int, got "
            f"{max_tokens_per_replica!r}."
        )


class RoutingTokenManager:
    """Grants per-replica concurrency tokens to the routers of one deployment.

    A plain class: the router runs it as a Ray actor (``num_cpus=0``) through
    the Serve controller, one per deployment. Its methods are synchronous, so
    the actor runs them one at a time and every method is atomic.

    Tokens are strings ``"<replica_id>:<epoch>:<n>"``. The epoch is random per
    manager instance, so a token granted by a manager that has since died and
    been recreated is never mistaken for one of the new manager's tokens.

    Args:
        max_tokens_per_replica: Most tokens held at once on one replica.
    """

    def __init__(self, max_tokens_per_replica: int = DEFAULT_MAX_TOKENS_PER_REPLICA):
        _validate_max_tokens(max_tokens_per_replica)
        self._max_tokens_per_replica = max_tokens_per_replica
        self._epoch = uuid.uuid4().hex[:8]
        self._next_seq = 0
        # Tokens held per replica.
        self._held: Dict[str, Set[str]] = {}
        # Most tokens ever held at once per replica (kept for gone replicas).
        self._max_held: Dict[str, int] = {}
        self._grants = 0
        self._denials = 0
        self._releases = 0

    def set_replicas(self, replica_ids: Iterable[str]) -> None:
        """Set the deployment's replicas; drop the tokens of replicas gone.

        Tokens of a dropped replica are forgotten: releasing them later is a
        no-op.

        Args:
            replica_ids: IDs of the deployment's current replicas.
        """
        current = set(replica_ids)
        for replica_id in list(self._held):
            if replica_id not in current:
                del self._held[replica_id]
        for replica_id in current:
            self._held.setdefault(replica_id, set())

    def acquire(
        self,
        candidate_replica_ids: Iterable[str],
        max_tokens_per_replica: Optional[int] = None,
    ) -> Optional[str]:
        """Grant a token on the candidate holding the fewest tokens.

        Only candidates below the limit qualify; ties are broken at random so
        that the load spreads.

        Args:
            candidate_replica_ids: IDs of the replicas the caller can route to.
            max_tokens_per_replica: The caller's limit, if it differs from the
                constructor's. The manager outlives redeploys of its
                deployment (it is created once, with the first caller's
                arguments), so routers pass their current configuration here.

        Returns:
            The token, or None if every candidate is at the limit (or there are
            no candidates).
        """
        limit = max_tokens_per_replica or self._max_tokens_per_replica
        best: List[str] = []
        best_held = limit
        for replica_id in dict.fromkeys(candidate_replica_ids):
            held = len(self._held.get(replica_id, ()))
            if held < best_held:
                best, best_held = [replica_id], held
            elif held == best_held and held < limit:
                best.append(replica_id)
        if not best:
            self._denials += 1
            return None
        replica_id = random.choice(best)
        self._next_seq += 1
        token = _TOKEN_SEP.join((replica_id, self._epoch, str(self._next_seq)))
        tokens = self._held.setdefault(replica_id, set())
        tokens.add(token)
        self._max_held[replica_id] = max(self._max_held.get(replica_id, 0), len(tokens))
        self._grants += 1
        return token

    def release(self, replica_id: str, token_id: str) -> bool:
        """Give a token back. Idempotent.

        Args:
            replica_id: The replica the token was granted on.
            token_id: The token.

        Returns:
            True if the token was held, False if it was unknown (already
            released, dropped with its replica, or from another manager).
        """
        tokens = self._held.get(replica_id)
        if tokens is None or token_id not in tokens:
            return False
        tokens.remove(token_id)
        self._releases += 1
        return True

    def stats(self) -> Dict[str, Any]:
        """Counters for tests and debugging.

        Returns:
            ``held`` (tokens held per replica), ``max_held`` (most tokens ever
            held at once per replica), ``grants``, ``denials``, ``releases``
            and ``max_tokens_per_replica``.
        """
        return {
            "held": {rid: len(tokens) for rid, tokens in self._held.items()},
            "max_held": dict(self._max_held),
            "grants": self._grants,
            "denials": self._denials,
            "releases": self._releases,
            "max_tokens_per_replica": self._max_tokens_per_replica,
        }


# What the router asks the controller to create: the manager as an actor that
# reserves no CPU (the controller adds the name, namespace and lifetime).
_TokenManagerActor = ray.remote(num_cpus=0)(RoutingTokenManager)


@dataclass(frozen=True)
class _Grant:
    """A token held for one request, and the manager that granted it."""

    manager: ActorHandle
    replica_id: str
    token: str


class RoutingTokenRouter(DeploymentActorMixin, RequestRouter):
    """Routes each request to a replica it holds a concurrency token for.

    For every request, the router asks the deployment's ``RoutingTokenManager``
    for a token on one of the candidate replicas and routes the request there;
    the token is released when the request completes. With many routers (the
    proxies, and every handle to the deployment) the number of requests on a
    replica that hold a token never exceeds ``max_tokens_per_replica``.

    When the manager is unavailable (not created yet, slow, dead, or the
    controller unreachable) or every candidate is at the limit, the router
    returns all candidates and Serve picks the one with the shortest queue:
    requests never fail or wait long because of the manager. After a failure
    the manager is skipped for ``manager_retry_interval_s``; after it died, the
    router asks the controller for the recreated actor.

    Request router kwargs (``RequestRouterConfig.request_router_kwargs``):

    - ``max_tokens_per_replica`` (int, default 4): the limit, sent with every
      token request. (The manager outlives redeploys of the deployment and
      keeps the constructor arguments of the router that created it, so the
      limit is not taken from there.)
    - ``manager_timeout_s`` (float, default 1.0): timeout of one call to the
      controller or to the manager.
    - ``manager_retry_interval_s`` (float, default 1.0): how long to route
      without the manager after a call to it failed.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._max_tokens_per_replica = DEFAULT_MAX_TOKENS_PER_REPLICA
        self._manager_timeout_s = DEFAULT_MANAGER_TIMEOUT_S
        self._manager_retry_interval_s = DEFAULT_MANAGER_RETRY_INTERVAL_S
        self._manager: Optional[ActorHandle] = None
        # Ask the controller again (the manager died) on the next resolution.
        self._refresh_manager = False
        # Route without the manager until then (time.monotonic()).
        self._skip_manager_until = 0.0
        # The one in-flight resolution of the manager, shared by all requests.
        self._resolve_task: Optional[asyncio.Task] = None
        # Tokens held, by internal request ID. Requests that share an internal
        # request ID (dependent handle calls) share one entry: the accounting
        # can then undercount, never leak.
        self._grants: Dict[str, _Grant] = {}

    def initialize_state(
        self,
        max_tokens_per_replica: int = DEFAULT_MAX_TOKENS_PER_REPLICA,
        manager_timeout_s: float = DEFAULT_MANAGER_TIMEOUT_S,
        manager_retry_interval_s: float = DEFAULT_MANAGER_RETRY_INTERVAL_S,
    ) -> None:
        """Set the router's options from ``request_router_kwargs``.

        Args:
            max_tokens_per_replica: Most requests holding a token on one replica.
            manager_timeout_s: Timeout of one call to the controller or manager.
            manager_retry_interval_s: How long to route without the manager
                after a call to it failed.
        """
        _validate_max_tokens(max_tokens_per_replica)
        if manager_timeout_s <= 0:
            raise ValueError(
                f"manager_timeout_s must be positive, got {manager_timeout_s!r}."
            )
        if manager_retry_interval_s < 0:
            raise ValueError(
                "manager_retry_interval_s must not be negative, got "
                f"{manager_retry_interval_s!r}."
            )
        self._max_tokens_per_replica = max_tokens_per_replica
        self._manager_timeout_s = manager_timeout_s
        self._manager_retry_interval_s = manager_retry_interval_s

    # ------------------------------------------------------------------ #
    # The manager
    # ------------------------------------------------------------------ #

    def _manager_failed(self, reason: str, dead: bool = False) -> None:
        """Route without the manager for a while; re-resolve it if it died."""
        if dead:
            self._refresh_manager = True
        now = time.monotonic()
        already_skipping = now < self._skip_manager_until
        self._skip_manager_until = now + self._manager_retry_interval_s
        if already_skipping:
            return
        logger.warning(
            f"Routing token manager of {self._deployment_id} unavailable "
            f"({reason}); routing without tokens for "
            f"{self._manager_retry_interval_s}s.",
            extra={"log_to_stderr": False},
        )

    async def _resolve_manager(self) -> Optional[ActorHandle]:
        refresh = self._refresh_manager
        try:
            manager = await self.get_or_create_deployment_actor(
                MANAGER_ACTOR_NAME,
                _TokenManagerActor,
                self._max_tokens_per_replica,
                refresh=refresh,
                timeout_s=self._manager_timeout_s,
            )
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._manager_failed(f"controller: {type(e).__name__}: {e}")
            return None
        self._manager = manager
        self._refresh_manager = False
        # A new (or recreated) manager learns the current replicas.
        self._push_replicas()
        return manager

    async def _get_manager(self) -> Optional[ActorHandle]:
        """The manager's handle, or None to route without it."""
        if time.monotonic() < self._skip_manager_until:
            return None
        if self._manager is not None and not self._refresh_manager:
            return self._manager
        if self._resolve_task is None or self._resolve_task.done():
            self._resolve_task = asyncio.ensure_future(self._resolve_manager())
        try:
            # Shielded: a cancelled or timed-out request must not cancel the
            # resolution the other requests share.
            return await asyncio.wait_for(
                asyncio.shield(self._resolve_task), self._manager_timeout_s
            )
        except asyncio.TimeoutError:
            self._manager_failed(
                f"controller did not answer in {self._manager_timeout_s}s"
            )
            return None

    def _push_replicas(self) -> None:
        """Tell the manager the current replicas (fire-and-forget)."""
        if self._manager is None:
            return
        try:
            self._manager.set_replicas.remote(
                sorted(rid.unique_id for rid in self._replica_id_set)
            )
        except Exception:
            logger.debug("Failed to push replicas to the token manager.", exc_info=True)

    @staticmethod
    def _release(grant: _Grant) -> None:
        """Give a token back without waiting for the manager."""
        try:
            grant.manager.release.remote(grant.replica_id, grant.token)
        except Exception:
            # The manager is gone: its tokens went with it.
            pass

    def _release_late_grant(self, manager: ActorHandle, fut: asyncio.Future) -> None:
        """Release a token granted after its caller stopped waiting for it."""
        if fut.cancelled() or fut.exception() is not None:
            return
        token = fut.result()
        if token is not None:
            self._release(_Grant(manager, token_replica_id(token), token))

    async def _acquire(
        self, manager: ActorHandle, candidate_ids: List[str]
    ) -> Optional[str]:
        """Ask the manager for a token; None if it has none or fails."""
        ref = manager.acquire.remote(candidate_ids, self._max_tokens_per_replica)
        fut = asyncio.wrap_future(ref.future())
        try:
            return await asyncio.wait_for(
                asyncio.shield(fut), timeout=self._manager_timeout_s
            )
        except (asyncio.TimeoutError, asyncio.CancelledError) as e:
            # The token may still be granted: give it back when it is.
            fut.add_done_callback(lambda f: self._release_late_grant(manager, f))
            if isinstance(e, asyncio.CancelledError):
                raise
            self._manager_failed(f"acquire timed out after {self._manager_timeout_s}s")
        except RayActorError as e:
            # Dead (or unreachable): ask the controller for the live one next.
            self._manager_failed(f"{type(e).__name__}", dead=True)
        except Exception as e:
            self._manager_failed(f"acquire failed: {type(e).__name__}: {e}")
        return None

    # ------------------------------------------------------------------ #
    # RequestRouter
    # ------------------------------------------------------------------ #

    def update_replicas(self, replicas: List[RunningReplica]) -> None:
        super().update_replicas(replicas)
        self._push_replicas()

    def _release_request(self, internal_request_id: str) -> None:
        grant = self._grants.pop(internal_request_id, None)
        if grant is not None:
            self._release(grant)

    def _on_request_future_done(
        self, internal_request_id: str, grant: _Grant, fut: asyncio.Future
    ) -> None:
        """Release the token of a request cancelled before it was sent."""
        if not fut.cancelled() and fut.exception() is None:
            # Routed: the token is released when the request completes.
            return
        if self._grants.get(internal_request_id) is grant:
            self._release_request(internal_request_id)

    async def choose_replicas(
        self,
        candidate_replicas: List[RunningReplica],
        pending_request: Optional[PendingRequest] = None,
    ) -> List[List[RunningReplica]]:
        """Choose the replica this request holds a token for.

        Args:
            candidate_replicas: The replicas the request can be routed to.
            pending_request: The request.

        Returns:
            ``[[replica]]`` for the replica of the token, or all candidates if
            no token was granted.
        """
        if pending_request is None or not candidate_replicas:
            return [candidate_replicas]
        # If the chosen replica turns out to be full, Serve calls us again:
        # back off between attempts instead of spinning.
        pending_request.routing_context.should_backoff = True
        request_id = pending_request.metadata.internal_request_id
        # Called again for the same request (its replica was full or rejected
        # it): give the previous token back before taking a new one.
        self._release_request(request_id)

        manager = await self._get_manager()
        if manager is None:
            return [candidate_replicas]
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        token = await self._acquire(manager, list(by_id))
        if token is None:
            return [candidate_replicas]
        grant = _Grant(manager, token_replica_id(token), token)
        replica = by_id.get(grant.replica_id)
        if replica is None or pending_request.future.done():
            self._release(grant)
            return [candidate_replicas]
        self._grants[request_id] = grant
        pending_request.future.add_done_callback(
            lambda f: self._on_request_future_done(request_id, grant, f)
        )
        return [[replica]]

    def on_request_completed(
        self, replica_id: ReplicaID, internal_request_id: str
    ) -> None:
        """Release the request's token (fire-and-forget)."""
        grant = self._grants.get(internal_request_id)
        # A late completion of an earlier (rejected) attempt of this request
        # must not release the token of its next attempt on another replica.
        if grant is not None and grant.replica_id == replica_id.unique_id:
            self._release_request(internal_request_id)
