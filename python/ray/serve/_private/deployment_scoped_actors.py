"""Controller-managed deployment-scoped actors created at run time.

``ServeController.get_or_create_deployment_actor`` (Ray issue #60359) lets code
that runs for a deployment (request routers in proxies and handles, replicas,
drivers) share one actor per (deployment, name) whose lifecycle the controller
owns:

1. tracked per ``DeploymentID`` by ``DeploymentScopedActorManager``, which the
   ``DeploymentStateManager`` holds;
2. created only here, idempotently (the controller serializes all calls);
3. checkpointed in the controller's KV store (name, serialized class,
   arguments and options), written only when the set changes, and *before* an
   actor is created, so nothing the controller never recorded can be left;
4. recovered on controller start: live actors are re-adopted, dead ones
   recreated, and ``SERVE_DEPLOYMENT_ACTOR`` actors of the runtime shape the
   checkpoint does not account for are killed;
5. killed when their deployment is deleted, after its replicas have stopped;
6. killed on ``serve.shutdown()``.

Health checks, readiness and recreation reuse upstream's
``DeploymentActorWrapper`` (the declarative ``deployment_actors`` lifecycle);
only the Ray actor name differs. Every Ray call goes through the wrapper class,
so unit tests swap it for a mock.
"""

import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import ray
from ray import cloudpickle
from ray.actor import ActorHandle
from ray.exceptions import RayActorError
from ray.serve._private.common import DeploymentID
from ray.serve._private.constants import (
    DEPLOYMENT_ACTOR_HEALTH_CHECK_PERIOD_S,
    SERVE_LOGGER_NAME,
    SERVE_NAMESPACE,
)
from ray.serve._private.deployment_scoped_actor_constants import (
    DEPLOYMENT_SCOPED_ACTOR_MAX_RESTART_BACKOFF_S,
    DEPLOYMENT_SCOPED_ACTOR_MAX_START_ATTEMPTS,
    DEPLOYMENT_SCOPED_ACTOR_RESTART_BACKOFF_S,
    DEPLOYMENT_SCOPED_ACTORS_CHECKPOINT_KEY,
)
from ray.serve._private.deployment_scoped_actor_utils import (
    actor_class_path,
    get_deployment_scoped_actor_name,
    parse_deployment_scoped_actor_name,
    requested_class_path,
    split_actor_class,
    validate_deployment_scoped_actor_name,
)
from ray.serve._private.deployment_state import (
    DeploymentActorContainer,
    DeploymentActorState,
    DeploymentActorWrapper,
)
from ray.serve._private.exceptions import DeploymentIsBeingDeletedError
from ray.serve._private.storage.kv_store import KVStoreBase
from ray.serve._private.utils import check_obj_ref_ready_nowait
from ray.serve.config import DeploymentActorConfig
from ray.serve.exceptions import RayServeException
from ray.serve.schema import DeploymentActorDetails
from ray.util import metrics as ray_metrics

logger = logging.getLogger(SERVE_LOGGER_NAME)

# Key of runtime-created actors in a DeploymentActorContainer: they are not
# code-versioned (they outlive rolling updates of their deployment).
SCOPED_ACTOR_CODE_VERSION = ""

CREATED_BY_API = "api"
CREATED_BY_CONFIG = "config"


def _node_id_of_current_actor(actor) -> str:
    """Runs inside a deployment actor (``__ray_call__``)."""
    return ray.get_runtime_context().get_node_id()


class DeploymentScopedActorWrapper(DeploymentActorWrapper):
    """``DeploymentActorWrapper`` under the runtime (non-versioned) actor name."""

    def __init__(
        self,
        deployment_id: DeploymentID,
        config: DeploymentActorConfig,
        code_version: str = SCOPED_ACTOR_CODE_VERSION,
        recovered_handle: Optional[ActorHandle] = None,
    ):
        super().__init__(deployment_id, config, code_version, recovered_handle)
        self._actor_name = get_deployment_scoped_actor_name(deployment_id, config.name)
        # The randomized health check period, and the check it was drawn for.
        self._period_drawn_for: Optional[float] = None
        self._period = DEPLOYMENT_ACTOR_HEALTH_CHECK_PERIOD_S

    @property
    def handle(self) -> Optional[ActorHandle]:
        return self._handle

    @property
    def actor_id(self) -> Optional[str]:
        return self._handle._actor_id.hex() if self._handle is not None else None

    def request_health_check(self) -> None:
        """Health-check on the next control loop tick instead of at the period."""
        if self._health_check_ref is None:
            self._last_health_check_time = 0.0

    def next_health_check_at(self) -> float:
        """When ``check_health`` next has anything to do (0.0: at once).

        At once while a health check is outstanding or the actor is marked
        unhealthy; otherwise one randomized period (0.9x-1.1x, drawn once per
        check) after the last check. The control loop leaves the actor alone
        until then.
        """
        if self._health_check_ref is not None or not self._healthy:
            return 0.0
        if self._period_drawn_for != self._last_health_check_time:
            self._period_drawn_for = self._last_health_check_time
            self._period = DEPLOYMENT_ACTOR_HEALTH_CHECK_PERIOD_S * random.uniform(
                0.9, 1.1
            )
        return self._last_health_check_time + self._period

    def _should_start_new_deployment_actor_health_check(self) -> bool:
        """The base class's rule, on the period ``next_health_check_at`` drew.

        The base class draws a new randomized period at every call, so an
        actor would be due, and looked at each step, from 0.9x the period
        until a draw let its check start.
        """
        if not self._healthy or self._health_check_ref is not None:
            return False
        if self._handle is None:
            return False
        return time.time() >= self.next_health_check_at()

    @staticmethod
    def lookup(ray_actor_name: str) -> Optional[ActorHandle]:
        """The live actor of that name in the serve namespace, or None."""
        try:
            return ray.get_actor(ray_actor_name, namespace=SERVE_NAMESPACE)
        except ValueError:
            return None

    @staticmethod
    def request_node_id(handle: ActorHandle) -> Any:
        """Ask an actor (any kind) for its node id; returns an ObjectRef."""
        return handle.__ray_call__.remote(_node_id_of_current_actor)

    @staticmethod
    def node_id_if_ready(ref: Any) -> Tuple[bool, Optional[str]]:
        """(resolved, node id) of a ``request_node_id`` ref, without blocking."""
        if not check_obj_ref_ready_nowait(ref):
            return False, None
        try:
            return True, ray.get(ref)
        except Exception:
            return True, None

    @staticmethod
    def kill_by_name(ray_actor_name: str) -> None:
        """Kill the actor of that name if it exists."""
        try:
            handle = ray.get_actor(ray_actor_name, namespace=SERVE_NAMESPACE)
            ray.kill(handle, no_restart=True)
        except (ValueError, RayActorError):
            pass


@dataclass
class _ScopedActorRecord:
    """What the controller knows of one (deployment, name) beyond its wrapper."""

    config: DeploymentActorConfig
    # Consecutive starts that never reached RUNNING.
    failed_starts: int = 0
    # Times the actor was recreated after it had been running.
    restarts: int = 0
    # Not running and due to be (re)started at `restart_at` (time.time()).
    pending_start: bool = False
    restart_at: float = 0.0
    # When it last became RUNNING, and how many times in a row it then died
    # soon after (a crash loop is recreated with backoff).
    running_since: float = 0.0
    quick_deaths: int = 0
    # Gave up after DEPLOYMENT_SCOPED_ACTOR_MAX_START_ATTEMPTS failed starts.
    failed: bool = False
    message: str = ""
    # Warned once that a caller asked with other constructor arguments.
    warned_args: bool = False


class DeploymentScopedActorManager:
    """Tracks runtime-created deployment actors per deployment (held by the DSM)."""

    def __init__(self, kv_store: KVStoreBase):
        self._kv_store = kv_store
        self._records: Dict[DeploymentID, Dict[str, _ScopedActorRecord]] = {}
        self._containers: Dict[DeploymentID, DeploymentActorContainer] = {}
        # Counters for metrics (and tests).
        self.num_created = 0
        self.num_recreated = 0
        self.num_cleaned_up = 0
        tags = ("deployment", "application")
        self._metrics = {
            "created": ray_metrics.Counter(
                "serve_deployment_actor_creations",
                description="Deployment-scoped actors created through the API.",
                tag_keys=tags,
            ),
            "recreated": ray_metrics.Counter(
                "serve_deployment_actor_recreations",
                description="Deployment-scoped actors recreated after they died.",
                tag_keys=tags,
            ),
            "cleaned_up": ray_metrics.Counter(
                "serve_deployment_actor_cleanups",
                description=(
                    "Deployment-scoped actors killed because their deployment "
                    "was deleted, Serve shut down, or no checkpoint recorded them."
                ),
                tag_keys=tags,
            ),
        }
        # When each deployment's actors next need a look (absent or 0.0: at
        # once). A step looks only at the deployments that are due, and steps
        # before the earliest of these times return at once. Reset by every
        # call that may change them.
        self._due: Dict[DeploymentID, float] = {}
        self._next_update_at = 0.0
        # Node of each actor instance (by actor id), resolved without blocking.
        self._node_refs: Dict[str, Any] = {}
        self._node_ids: Dict[str, Optional[str]] = {}

    def _count(self, kind: str, dep_id: DeploymentID, n: int = 1) -> None:
        setattr(self, f"num_{kind}", getattr(self, f"num_{kind}") + n)
        self._metrics[kind].inc(
            n, tags={"deployment": dep_id.name, "application": dep_id.app_name}
        )

    # The wrapper class is looked up at call time so tests can patch it.
    @staticmethod
    def _wrapper_cls():
        return DeploymentScopedActorWrapper

    # ------------------------------------------------------------------ #
    # Checkpoint
    # ------------------------------------------------------------------ #

    def _checkpoint_data(self) -> Dict[DeploymentID, Dict[str, Any]]:
        return {
            dep_id: {name: rec.config for name, rec in recs.items()}
            for dep_id, recs in self._records.items()
            if recs
        }

    def _save_checkpoint(self) -> None:
        self._kv_store.put(
            DEPLOYMENT_SCOPED_ACTORS_CHECKPOINT_KEY,
            cloudpickle.dumps(self._checkpoint_data()),
        )

    def delete_checkpoint(self) -> None:
        self._kv_store.delete(DEPLOYMENT_SCOPED_ACTORS_CHECKPOINT_KEY)

    # ------------------------------------------------------------------ #
    # Recovery
    # ------------------------------------------------------------------ #

    def recover(
        self, all_current_actor_names: List[str], deployment_states: Dict
    ) -> None:
        """Rebuild state from the checkpoint after a controller (re)start.

        Args:
            all_current_actor_names: Named actors in the serve namespace.
            deployment_states: The recovered DeploymentState per DeploymentID.
        """
        self.wake()
        wrapper_cls = self._wrapper_cls()
        raw = self._kv_store.get(DEPLOYMENT_SCOPED_ACTORS_CHECKPOINT_KEY)
        checkpoint = cloudpickle.loads(raw) if raw is not None else {}
        live_names = set(all_current_actor_names)
        changed = False
        for dep_id, configs in checkpoint.items():
            for name, config in configs.items():
                ray_name = get_deployment_scoped_actor_name(dep_id, name)
                if dep_id not in deployment_states:
                    # Its deployment is gone: finish the interrupted cleanup.
                    if ray_name in live_names:
                        wrapper_cls.kill_by_name(ray_name)
                        live_names.discard(ray_name)
                        self._count("cleaned_up", dep_id)
                    changed = True
                    continue
                rec = _ScopedActorRecord(config=config)
                self._records.setdefault(dep_id, {})[name] = rec
                container = self._container(dep_id)
                handle = (
                    wrapper_cls.lookup(ray_name) if ray_name in live_names else None
                )
                if handle is not None:
                    wrapper = wrapper_cls(dep_id, config, recovered_handle=handle)
                    container.add(DeploymentActorState.RECOVERING, wrapper)
                else:
                    rec.pending_start = True
                    rec.message = "Not found after controller restart; recreating."
        for ray_name in sorted(live_names):
            parsed = parse_deployment_scoped_actor_name(ray_name)
            if parsed is None:
                continue
            dep_id, name = parsed
            if name not in self._records.get(dep_id, {}):
                logger.warning(
                    f"Killing deployment actor '{ray_name}': the controller's "
                    "checkpoint does not account for it."
                )
                wrapper_cls.kill_by_name(ray_name)
                self._count("cleaned_up", dep_id)
        if changed:
            self._save_checkpoint()
        n = sum(len(r) for r in self._records.values())
        if n:
            logger.info(f"Recovered {n} deployment-scoped actor(s) from checkpoint.")

    # ------------------------------------------------------------------ #
    # The API
    # ------------------------------------------------------------------ #

    def _container(self, dep_id: DeploymentID) -> DeploymentActorContainer:
        if dep_id not in self._containers:
            self._containers[dep_id] = DeploymentActorContainer(dep_id)
        return self._containers[dep_id]

    def _wrapper(self, dep_id: DeploymentID, name: str):
        container = self._containers.get(dep_id)
        if container is None:
            return None
        return container.get_wrapper(SCOPED_ACTOR_CODE_VERSION, name)

    @staticmethod
    def _runtime_env(deployment_state) -> Dict[str, Any]:
        version = deployment_state.target_version
        options = (version.ray_actor_options if version is not None else None) or {}
        return options.get("runtime_env", {}) or {}

    def get_or_create(
        self,
        deployment_id: DeploymentID,
        actor_name: str,
        actor_class: Any,
        args: Tuple,
        kwargs: Dict[str, Any],
        deployment_state,
        shutting_down: bool = False,
    ) -> ActorHandle:
        """Return the deployment's actor of that name, creating it if needed.

        Raises:
            RayServeException: Serve is shutting down.
            ValueError: Invalid name, unknown deployment, or a different class
                under an existing name.
            DeploymentIsBeingDeletedError: The deployment is being deleted.
            TypeError: The class or arguments cannot be serialized.
        """
        validate_deployment_scoped_actor_name(actor_name)
        self.wake(deployment_id)
        if shutting_down:
            raise RayServeException(
                f"Cannot get or create deployment actor '{actor_name}' of "
                f"{deployment_id}: Serve is shutting down."
            )
        if deployment_state is None:
            raise ValueError(
                f"Cannot get or create deployment actor '{actor_name}': "
                f"{deployment_id} does not exist."
            )
        if deployment_state.deleting:
            raise DeploymentIsBeingDeletedError(
                f"Cannot get or create deployment actor '{actor_name}': "
                f"{deployment_id} is being deleted."
            )
        declarative = {
            cfg.name for cfg in deployment_state._get_deployment_actors_configs()
        }
        if actor_name in declarative:
            raise ValueError(
                f"'{actor_name}' is a declarative deployment actor of "
                f"{deployment_id} (deployment_actors=[...]); look it up with "
                "serve.get_deployment_actor() or get_deployment_actor_handle() "
                "instead of creating another actor under its name."
            )
        rec = self._records.get(deployment_id, {}).get(actor_name)
        if rec is not None:
            # Warm path: no class wrapping, no serialization.
            self._warn_if_other_args(deployment_id, rec, args, kwargs)
            return self._get_existing(
                deployment_id,
                rec,
                requested_class_path(actor_class),
                deployment_state,
            )
        actor_cls, options = split_actor_class(actor_class)

        try:
            config = DeploymentActorConfig(
                name=actor_name,
                actor_class=actor_cls,
                init_args=tuple(args),
                init_kwargs=dict(kwargs),
                actor_options=options,
            )
            cloudpickle.dumps(config)
        except Exception as e:
            raise TypeError(
                f"Cannot create deployment actor '{actor_name}' of {deployment_id}: "
                f"its class {actor_class_path(actor_cls)} or arguments cannot be "
                f"serialized for the controller's checkpoint: {e}"
            ) from None

        rec = _ScopedActorRecord(config=config)
        self._records.setdefault(deployment_id, {})[actor_name] = rec
        # Write-ahead: record before creating, so a crash in between leaves
        # nothing unaccounted for.
        try:
            self._save_checkpoint()
        except Exception:
            self._forget(deployment_id, actor_name)
            raise
        wrapper = self._start(deployment_id, rec, self._runtime_env(deployment_state))
        if wrapper is None:
            self._forget(deployment_id, actor_name)
            self._save_checkpoint()
            raise ValueError(
                f"Failed to create deployment actor '{actor_name}' of "
                f"{deployment_id}: {rec.message}"
            )
        self._count("created", deployment_id)
        logger.info(
            f"Created deployment actor '{actor_name}' of {deployment_id} "
            f"({actor_class_path(actor_cls)}) as '{wrapper._actor_name}'."
        )
        return wrapper.handle

    def _forget(self, deployment_id: DeploymentID, actor_name: str) -> None:
        """Drop a record that was never created (and an emptied deployment)."""
        recs = self._records[deployment_id]
        del recs[actor_name]
        if not recs:
            del self._records[deployment_id]
            self._due.pop(deployment_id, None)

    @staticmethod
    def _warn_if_other_args(deployment_id, rec: _ScopedActorRecord, args, kwargs):
        """Log once if a caller passes other constructor arguments (ignored)."""
        if rec.warned_args or (not args and not kwargs):
            return
        try:
            same = cloudpickle.dumps((tuple(args), dict(kwargs))) == cloudpickle.dumps(
                (tuple(rec.config.init_args), dict(rec.config.init_kwargs))
            )
        except Exception:
            same = False
        if not same:
            rec.warned_args = True
            logger.warning(
                f"Deployment actor '{rec.config.name}' of {deployment_id} already "
                "exists; the constructor arguments of this call differ from the "
                "ones it was created with and are ignored. Delete the deployment "
                "(or use another name) to create it with new arguments."
            )

    def _get_existing(
        self, deployment_id, rec: _ScopedActorRecord, requested: str, deployment_state
    ) -> ActorHandle:
        if requested != rec.config.actor_class:
            raise ValueError(
                f"Deployment actor '{rec.config.name}' of {deployment_id} already "
                f"exists with class {rec.config.actor_class}; it cannot be "
                f"requested with a different class {requested}."
            )
        wrapper = self._wrapper(deployment_id, rec.config.name)
        if wrapper is None:
            # Waiting for a restart or given up: the caller asks for it now.
            rec.failed = False
            rec.failed_starts = 0
            wrapper = self._start(
                deployment_id, rec, self._runtime_env(deployment_state)
            )
            if wrapper is None:
                raise ValueError(
                    f"Failed to start deployment actor '{rec.config.name}' of "
                    f"{deployment_id}: {rec.message}"
                )
            self._count("recreated", deployment_id)
        else:
            # A caller asking again may hold a dead handle: check soon.
            wrapper.request_health_check()
        return wrapper.handle

    def get_handle(
        self, deployment_id: DeploymentID, actor_name: str, deployment_state
    ) -> Optional[ActorHandle]:
        """A handle to a runtime or declarative actor of the deployment, or None."""
        self.wake(deployment_id)
        wrapper = self._wrapper(deployment_id, actor_name)
        if wrapper is not None:
            wrapper.request_health_check()
            return wrapper.handle
        if deployment_state is None or deployment_state.target_version is None:
            return None
        declarative = deployment_state._deployment_actors.get_wrapper(
            deployment_state.target_version.code_version, actor_name
        )
        return declarative._handle if declarative is not None else None

    # ------------------------------------------------------------------ #
    # Control loop
    # ------------------------------------------------------------------ #

    def _start(self, dep_id, rec: _ScopedActorRecord, runtime_env) -> Optional[Any]:
        wrapper = self._wrapper_cls()(dep_id, rec.config)
        started, error = wrapper.start(runtime_env)
        if not started:
            self._on_failed_start(dep_id, rec, error or "unknown error")
            return None
        rec.pending_start = False
        self._container(dep_id).add(DeploymentActorState.STARTING, wrapper)
        return wrapper

    def _on_failed_start(self, dep_id, rec: _ScopedActorRecord, error: str) -> None:
        rec.failed_starts += 1
        rec.pending_start = True
        if rec.failed_starts >= DEPLOYMENT_SCOPED_ACTOR_MAX_START_ATTEMPTS:
            rec.failed = True
            rec.message = (
                f"Failed to start {rec.failed_starts} times in a row; not retrying "
                f"until it is requested again. Last error: {error}"
            )
            logger.error(
                f"Deployment actor '{rec.config.name}' of {dep_id}: " + rec.message
            )
            return
        backoff = min(
            DEPLOYMENT_SCOPED_ACTOR_RESTART_BACKOFF_S * 2 ** (rec.failed_starts - 1),
            DEPLOYMENT_SCOPED_ACTOR_MAX_RESTART_BACKOFF_S,
        )
        rec.restart_at = time.time() + backoff
        rec.message = (
            f"Start attempt {rec.failed_starts}/"
            f"{DEPLOYMENT_SCOPED_ACTOR_MAX_START_ATTEMPTS} failed; retrying in "
            f"{backoff:.1f}s. Error: {error}"
        )
        logger.warning(
            f"Deployment actor '{rec.config.name}' of {dep_id}: " + rec.message
        )

    @staticmethod
    def _schedule_recreation(rec: _ScopedActorRecord) -> None:
        """Recreate a dead running actor: at once, or with backoff in a crash loop."""
        now = time.time()
        rec.restarts += 1
        rec.pending_start = True
        if now - rec.running_since < DEPLOYMENT_SCOPED_ACTOR_MAX_RESTART_BACKOFF_S:
            rec.quick_deaths += 1
        else:
            rec.quick_deaths = 0
        delay = 0.0
        if rec.quick_deaths > 1:
            # The first quick death is recreated at once; a crash loop backs off.
            delay = min(
                DEPLOYMENT_SCOPED_ACTOR_RESTART_BACKOFF_S * 2 ** (rec.quick_deaths - 2),
                DEPLOYMENT_SCOPED_ACTOR_MAX_RESTART_BACKOFF_S,
            )
        rec.restart_at = now + delay
        rec.message = (
            f"Recreating after a failed health check (restart {rec.restarts}"
            + (f", in {delay:.1f}s" if delay else "")
            + ")."
        )

    def update(self, deployment_states: Dict) -> None:
        """One control loop step: readiness, health checks and recreation.

        Looks only at the deployments whose actors are due (a start, a
        restart or a health check due or outstanding); with many deployments
        a step touches a few of them, and none until the earliest is due.
        """
        now = time.time()
        if now < self._next_update_at:
            return
        next_at = float("inf")
        for dep_id, recs in self._records.items():
            due = self._due.get(dep_id, 0.0)
            if due <= now:
                due = self._update_deployment(
                    dep_id, recs, deployment_states.get(dep_id), now
                )
                self._due[dep_id] = due
            next_at = min(next_at, due)
        self._next_update_at = next_at

    def _update_deployment(self, dep_id, recs, deployment_state, now) -> float:
        """Update one deployment's actors; returns when they next need a look.

        Deployments being deleted are left alone; their actors are killed once
        the deployment is gone (``on_deployment_deleted``).
        """
        if not recs:
            return float("inf")
        if deployment_state is None or deployment_state.deleting:
            return 0.0  # look again next step
        next_at = float("inf")
        container = self._container(dep_id)
        pending = [DeploymentActorState.STARTING, DeploymentActorState.RECOVERING]
        if container.get(states=pending):
            self._update_pending(dep_id, recs, container, pending)
            next_at = 0.0
        # Only actors with a health check outstanding or due are touched.
        unhealthy = []
        for wrapper in container.get(states=[DeploymentActorState.RUNNING]):
            at = wrapper.next_health_check_at()
            if now >= at:
                if not wrapper.check_health():
                    unhealthy.append(wrapper)
                    continue
                at = wrapper.next_health_check_at()
            next_at = min(next_at, at)
        if unhealthy:
            self._recreate_unhealthy(dep_id, recs, container, unhealthy)
        runtime_env = None
        for rec in recs.values():
            if rec.pending_start and not rec.failed:
                if now >= rec.restart_at:
                    if runtime_env is None:
                        runtime_env = self._runtime_env(deployment_state)
                    self._start(dep_id, rec, runtime_env)
                    next_at = 0.0
                else:
                    next_at = min(next_at, rec.restart_at)
        return next_at

    def wake(self, deployment_id: Optional[DeploymentID] = None) -> None:
        """Make the next control loop step look at the deployment's actors.

        Args:
            deployment_id: The deployment; None for every deployment.
        """
        if deployment_id is None:
            self._due.clear()
        else:
            self._due.pop(deployment_id, None)
        self._next_update_at = 0.0

    def _update_pending(self, dep_id, recs, container, pending) -> None:
        """Move started actors that answer to RUNNING; handle failed starts."""
        for state, entry in container.pop(states=pending):
            wrapper, rec = entry.wrapper, recs[entry.name]
            ready, error = wrapper.check_ready()
            if ready:
                wrapper.reset_health_state_after_running()
                container.add(DeploymentActorState.RUNNING, wrapper)
                self._node_id(wrapper.handle)  # ask early, for details
                rec.failed_starts = 0
                rec.running_since = time.time()
                rec.message = ""
            elif error is not None:
                wrapper.kill()
                self._on_failed_start(dep_id, rec, error)
            else:
                container.add(state, wrapper)

    def _recreate_unhealthy(self, dep_id, recs, container, unhealthy) -> None:
        """Kill unhealthy or dead actors and schedule their recreation."""
        dead = {id(wrapper) for wrapper in unhealthy}
        for _, entry in container.pop(states=[DeploymentActorState.RUNNING]):
            if id(entry.wrapper) not in dead:
                container.add(DeploymentActorState.RUNNING, entry.wrapper)
        for wrapper in unhealthy:
            name = wrapper.actor_logical_name
            logger.warning(
                f"Deployment actor '{name}' of {dep_id} is unhealthy or "
                "dead; recreating it with the same arguments."
            )
            wrapper.kill()
            self._drop_node_id(wrapper)
            self._schedule_recreation(recs[name])
            self._count("recreated", dep_id)

    def on_deployment_deleted(self, deployment_id: DeploymentID) -> None:
        """Kill the deployment's actors (its replicas have stopped) and forget them."""
        self._due.pop(deployment_id, None)
        recs = self._records.pop(deployment_id, None)
        container = self._containers.pop(deployment_id, None)
        if not recs:
            return
        wrapper_cls = self._wrapper_cls()
        live = {w.actor_logical_name for w in container.get()} if container else set()
        for wrapper in container.get() if container else []:
            wrapper.kill()
            self._drop_node_id(wrapper)
        for name in recs:
            if name not in live:
                wrapper_cls.kill_by_name(
                    get_deployment_scoped_actor_name(deployment_id, name)
                )
        self._count("cleaned_up", deployment_id, len(recs))
        logger.info(
            f"Killed {len(recs)} deployment actor(s) of deleted {deployment_id}: "
            f"{sorted(recs)}."
        )
        self._save_checkpoint()

    def kill_all(self) -> None:
        """Kill every tracked actor (``serve.shutdown()``'s last step)."""
        for dep_id in list(self._records):
            self.on_deployment_deleted(dep_id)

    # ------------------------------------------------------------------ #
    # Visibility
    # ------------------------------------------------------------------ #

    def _node_id(self, handle: Optional[ActorHandle]) -> Optional[str]:
        """The node of an actor instance; asked once, answered on a later call."""
        if handle is None:
            return None
        try:
            actor_id = handle._actor_id.hex()
            if actor_id in self._node_ids:
                return self._node_ids[actor_id]
            wrapper_cls = self._wrapper_cls()
            ref = self._node_refs.get(actor_id)
            if ref is None:
                self._node_refs[actor_id] = wrapper_cls.request_node_id(handle)
                return None
            resolved, node_id = wrapper_cls.node_id_if_ready(ref)
            if resolved:
                del self._node_refs[actor_id]
                self._node_ids[actor_id] = node_id
            return node_id
        except Exception:
            return None

    def _drop_node_id(self, wrapper) -> None:
        actor_id = wrapper.actor_id
        self._node_refs.pop(actor_id, None)
        self._node_ids.pop(actor_id, None)

    def _state_of(self, dep_id, name: str, rec: _ScopedActorRecord) -> str:
        if rec.failed:
            return "FAILED"
        container = self._containers.get(dep_id)
        if container is not None:
            for state in DeploymentActorState:
                for wrapper in container.get(states=[state]):
                    if wrapper.actor_logical_name == name:
                        return state.name
        return "RESTARTING" if rec.pending_start else "UNKNOWN"

    def list_details(
        self, deployment_id: DeploymentID, deployment_state
    ) -> List[DeploymentActorDetails]:
        """Runtime-created and declarative actors of a deployment, with state."""
        details = []
        for name, rec in sorted(self._records.get(deployment_id, {}).items()):
            wrapper = self._wrapper(deployment_id, name)
            details.append(
                DeploymentActorDetails(
                    name=name,
                    actor_name=get_deployment_scoped_actor_name(deployment_id, name),
                    actor_class=rec.config.actor_class,
                    actor_id=wrapper.actor_id if wrapper is not None else None,
                    node_id=self._node_id(wrapper.handle) if wrapper else None,
                    state=self._state_of(deployment_id, name, rec),
                    created_by=CREATED_BY_API,
                    restarts=rec.restarts,
                    message=rec.message,
                )
            )
        if deployment_state is not None:
            containers = deployment_state._deployment_actors
            for state in DeploymentActorState:
                for wrapper in containers.get(states=[state]):
                    handle = wrapper._handle
                    details.append(
                        DeploymentActorDetails(
                            name=wrapper.actor_logical_name,
                            actor_name=wrapper._actor_name,
                            actor_class=str(wrapper._config.actor_class),
                            actor_id=handle._actor_id.hex() if handle else None,
                            node_id=self._node_id(handle),
                            state=state.name,
                            created_by=CREATED_BY_CONFIG,
                            restarts=0,
                            message="",
                        )
                    )
        return details

    def has_actors(self, deployment_id: DeploymentID) -> bool:
        return bool(self._records.get(deployment_id))
