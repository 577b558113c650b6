"""Deployment-scoped actors for custom request routers (public, alpha)."""

import asyncio
from typing import Any, Dict, Optional

from ray.actor import ActorHandle
from ray.serve._private.deployment_scoped_actor_utils import (
    get_deployment_actor_async,
    get_or_create_deployment_actor_async,
)
from ray.util.annotations import PublicAPI


@PublicAPI(stability="alpha")
class DeploymentActorMixin:
    """Gives a ``RequestRouter`` its deployment's controller-managed actors.

    Routers of one deployment live in many processes (every proxy, and every
    replica or driver holding a handle to it). State they must share, such as a
    prefix tree or a token manager, belongs in one actor per deployment that
    the Serve controller owns: it is created once however many routers ask,
    recovered after a controller restart, recreated if it dies, and killed when
    the deployment is deleted or Serve shuts down.

    Both methods await the controller without blocking the router's event loop.
    Handles are cached per name; if a call on a cached handle fails because the
    actor died, call ``get_or_create_deployment_actor(..., refresh=True)`` to
    get the recreated actor.

    Example:
        .. code-block:: python

            class MyRouter(DeploymentActorMixin, RequestRouter):
                async def choose_replicas(self, candidate_replicas, pending_request=None):
                    counter = await self.get_or_create_deployment_actor(
                        "counter", Counter.options(num_cpus=0)
                    )
                    ...
    """

    _deployment_actor_handles: Optional[Dict[str, ActorHandle]] = None
    _deployment_actor_lookups: Optional[Dict[str, "asyncio.Future"]] = None

    async def get_or_create_deployment_actor(
        self,
        actor_name: str,
        actor_class: Any,
        *args,
        refresh: bool = False,
        timeout_s: Optional[float] = 10.0,
        **kwargs,
    ) -> ActorHandle:
        """Get or create this deployment's actor ``actor_name``.

        Args:
            actor_name: Name within the deployment (letters, digits, '_', '-',
                '.'; at most 128 characters).
            actor_class: A class, a ``@ray.remote`` class, or
                ``ActorClass.options(...)`` (Ray actor options such as num_cpus,
                resources, runtime_env or max_concurrency come from there).
            *args: Constructor arguments, used only when the actor is created.
            refresh: Ask the controller again instead of using the cached
                handle (e.g. after the actor died).
            timeout_s: Give up after this many seconds (asyncio.TimeoutError).
            **kwargs: Constructor keyword arguments, used only on creation.

        Returns:
            A handle to the live actor.
        """
        if self._deployment_actor_handles is None:
            self._deployment_actor_handles = {}
            self._deployment_actor_lookups = {}
        handle = self._deployment_actor_handles.get(actor_name)
        if handle is not None and not refresh:
            return handle
        # Concurrent callers (many routing tasks at start-up) share one lookup.
        lookup = self._deployment_actor_lookups.get(actor_name)
        if lookup is None or lookup.done():
            lookup = asyncio.ensure_future(
                get_or_create_deployment_actor_async(
                    self._deployment_id,
                    actor_name,
                    actor_class,
                    *args,
                    timeout_s=timeout_s,
                    **kwargs,
                )
            )
            self._deployment_actor_lookups[actor_name] = lookup
        handle = await asyncio.shield(lookup)
        self._deployment_actor_handles[actor_name] = handle
        return handle

    async def get_deployment_actor(
        self, actor_name: str, timeout_s: Optional[float] = 10.0
    ) -> Optional[ActorHandle]:
        """Look up this deployment's actor (runtime-created or declarative).

        Returns:
            The handle, or None if the deployment has no such actor.
        """
        return await get_deployment_actor_async(
            self._deployment_id, actor_name, timeout_s=timeout_s
        )
