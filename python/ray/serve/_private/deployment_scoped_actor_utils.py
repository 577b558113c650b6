"""Names, validation and client helpers for controller-managed deployment actors.

Deployment-scoped actors created at run time through
``ServeController.get_or_create_deployment_actor`` are detached actors in the
``serve`` namespace, named deterministically from their deployment and their
name. This module is light (no controller state) so that request routers,
proxies and replicas can import it.
"""

import asyncio
import importlib
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import ray
from ray import cloudpickle
from ray.actor import ActorClass, ActorHandle
from ray.serve._private.common import DeploymentID
from ray.serve._private.constants import (
    SERVE_CONTROLLER_NAME,
    SERVE_DEPLOYMENT_ACTOR_PREFIX,
    SERVE_NAMESPACE,
)
from ray.serve._private.deployment_scoped_actor_constants import (
    MAX_DEPLOYMENT_SCOPED_ACTOR_NAME_LENGTH,
)

# Actor names: a letter or digit, then letters, digits, '_', '-' or '.'.
# No ':' (so the Ray actor name splits unambiguously) and no '#' (reserved by
# Serve).
_VALID_ACTOR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")

# Options that the controller owns: a caller cannot set them.
CONTROLLER_OWNED_ACTOR_OPTIONS = (
    "name",
    "namespace",
    "lifetime",
    "get_if_exists",
    "max_restarts",
)


def _escape(component: str) -> str:
    """Percent-escape '%' and ':' so a component never contains '::'."""
    return component.replace("%", "%25").replace(":", "%3A")


def _unescape(component: str) -> str:
    return component.replace("%3A", ":").replace("%25", "%")


def validate_deployment_scoped_actor_name(actor_name: Any) -> None:
    """Raise ValueError unless ``actor_name`` is a valid deployment actor name."""
    if not isinstance(actor_name, str):
        raise TypeError(
            "Deployment actor name must be a str, got "
            f"{type(actor_name).__name__}: {actor_name!r}."
        )
    if not actor_name:
        raise ValueError("Deployment actor name must not be empty.")
    if len(actor_name) > MAX_DEPLOYMENT_SCOPED_ACTOR_NAME_LENGTH:
        raise ValueError(
            f"Deployment actor name '{actor_name[:40]}...' is {len(actor_name)} "
            f"characters long; the limit is {MAX_DEPLOYMENT_SCOPED_ACTOR_NAME_LENGTH}."
        )
    if not _VALID_ACTOR_NAME.match(actor_name):
        raise ValueError(
            f"Invalid deployment actor name {actor_name!r}: it must start with a "
            "letter or digit and contain only letters, digits, '_', '-' and '.'."
        )


def get_deployment_scoped_actor_name(
    deployment_id: DeploymentID, actor_name: str
) -> str:
    """Return the Ray actor name of a runtime-created deployment actor.

    ``SERVE_DEPLOYMENT_ACTOR::<app>::<deployment>::<name>`` with ':' and '%' in
    the app and deployment names percent-escaped, so the mapping is injective
    whatever characters Serve allows. The part after the prefix holds exactly
    four ':' characters, while upstream's declarative (code-versioned) names
    ``...::<app>::<deployment>::<code_version>::<name>`` hold at least six, so
    the two kinds never collide; replicas, proxies and the controller use other
    prefixes.
    """
    validate_deployment_scoped_actor_name(actor_name)
    return (
        f"{SERVE_DEPLOYMENT_ACTOR_PREFIX}{_escape(deployment_id.app_name)}"
        f"::{_escape(deployment_id.name)}::{actor_name}"
    )


def parse_deployment_scoped_actor_name(
    ray_actor_name: str,
) -> Optional[Tuple[DeploymentID, str]]:
    """Inverse of ``get_deployment_scoped_actor_name``; None for other names."""
    if not ray_actor_name.startswith(SERVE_DEPLOYMENT_ACTOR_PREFIX):
        return None
    rest = ray_actor_name[len(SERVE_DEPLOYMENT_ACTOR_PREFIX) :]
    if rest.count(":") != 4:
        return None
    parts = rest.split("::")
    if len(parts) != 3 or not _VALID_ACTOR_NAME.match(parts[2]):
        return None
    app, deployment, name = parts
    return DeploymentID(name=_unescape(deployment), app_name=_unescape(app)), name


@dataclass(frozen=True)
class ActorClassReference:
    """An importable Ray actor class by name, with its actor options.

    What the client helpers send instead of ``MyActor.options(...)``: Ray
    pickles the ``options()`` wrapper, and with it the actor class, by value
    (tens of KB and milliseconds at both ends of every call), while the
    controller can import the class it names. Only made for classes that
    cloudpickle would pickle by reference anyway, so the controller needs no
    import it would not have needed before.

    Attributes:
        module: The module that defines the actor class.
        attr: The class's (possibly dotted) attribute path in that module.
        options: The Ray actor options of the call (the class's defaults
            merged with those of ``options()``).
    """

    module: str
    attr: str
    options: Dict[str, Any] = field(default_factory=dict)

    def resolve(self) -> ActorClass:
        """Import the actor class; TypeError if it is not importable here."""
        try:
            obj: Any = importlib.import_module(self.module)
            for part in self.attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as e:
            raise TypeError(
                f"Cannot import actor class {self.module}:{self.attr} in the "
                f"Serve controller: {e}"
            ) from None
        if isinstance(obj, type) and not isinstance(obj, ActorClass):
            obj = ray.remote(obj)
        if not isinstance(obj, ActorClass):
            raise TypeError(
                f"{self.module}:{self.attr} is a {type(obj).__name__}, not an "
                "actor class."
            )
        return obj


def _importable_as(objs: Tuple[Any, ...], module_name: str, qualname: str) -> bool:
    """Whether ``module_name``'s attribute path ``qualname`` is one of ``objs``,
    and cloudpickle would pickle that module's classes by reference."""
    if module_name in (None, "__main__") or "<locals>" in qualname:
        return False
    module = sys.modules.get(module_name)
    if module is None:
        return False
    try:
        if cloudpickle.cloudpickle._is_registered_pickle_by_value(module):
            return False
    except AttributeError:  # another cloudpickle: do not guess
        return False
    target: Any = module
    for part in qualname.split("."):
        target = getattr(target, part, None)
    return any(target is obj for obj in objs)


def to_actor_class_reference(actor_class: Any) -> Any:
    """``actor_class`` as an ``ActorClassReference`` when that is cheaper.

    ``@ray.remote`` classes and ``ActorClass.options(...)`` wrappers whose
    class is importable by name become a reference; anything else (plain
    classes, which cloudpickle already sends by name, and classes defined in
    ``__main__`` or registered to be pickled by value) is returned as is.
    """
    if isinstance(actor_class, ActorClassReference) or (
        isinstance(actor_class, type) and not isinstance(actor_class, ActorClass)
    ):
        return actor_class
    try:
        cls, options = split_actor_class(actor_class)
    except TypeError:
        return actor_class  # let the controller report it
    user_cls = cls.__ray_actor_class__
    # `@ray.remote class A` names the ActorClass; `ray.remote(A)` the class.
    if not _importable_as((cls, user_cls), user_cls.__module__, user_cls.__qualname__):
        return actor_class
    return ActorClassReference(user_cls.__module__, user_cls.__qualname__, options)


def split_actor_class(actor_class: Any) -> Tuple[ActorClass, Dict[str, Any]]:
    """Split ``actor_class`` into a Ray actor class and its actor options.

    Accepts a plain class, a ``@ray.remote(...)`` class, the result of
    ``ActorClass.options(...)``, or an ``ActorClassReference``. Options the
    controller owns (name, namespace, lifetime, get_if_exists, max_restarts)
    are dropped.
    """
    if isinstance(actor_class, ActorClassReference):
        cls, options = actor_class.resolve(), dict(actor_class.options)
    elif isinstance(actor_class, ActorClass):
        cls, options = actor_class, dict(actor_class._default_options or {})
    elif isinstance(actor_class, type):
        cls, options = ray.remote(actor_class), {}
    else:
        # `ActorClass.options(...)` returns a wrapper that closes over the class
        # and the merged options.
        remote = getattr(type(actor_class), "remote", None)
        cells = dict(
            zip(
                getattr(getattr(remote, "__code__", None), "co_freevars", ()),
                getattr(remote, "__closure__", None) or (),
            )
        )
        if "actor_cls" not in cells or "updated_options" not in cells:
            raise TypeError(
                "actor_class must be a class, a @ray.remote actor class or "
                "ActorClass.options(...), got "
                f"{type(actor_class).__name__}: {actor_class!r}."
            )
        cls = cells["actor_cls"].cell_contents
        options = dict(cells["updated_options"].cell_contents or {})
    options = {
        k: v for k, v in options.items() if k not in CONTROLLER_OWNED_ACTOR_OPTIONS
    }
    return cls, options


def actor_class_path(actor_class: ActorClass) -> str:
    """``module:qualname`` of the user class behind a Ray actor class."""
    cls = actor_class.__ray_actor_class__
    return f"{cls.__module__}:{cls.__qualname__}"


def requested_class_path(actor_class: Any) -> str:
    """``module:qualname`` of what a caller passed, without creating anything.

    The warm path of get-or-create only compares this with the existing actor's
    class, so it must not wrap plain classes with ``ray.remote``.
    """
    if isinstance(actor_class, type) and not isinstance(actor_class, ActorClass):
        return f"{actor_class.__module__}:{actor_class.__qualname__}"
    cls, _ = split_actor_class(actor_class)
    return actor_class_path(cls)


class NoServeControllerError(RuntimeError):
    """Ray is not initialized in this process, so there is no controller to ask."""


def _cached_controller() -> Optional[ActorHandle]:
    """The controller handle Serve already holds in this process, or None."""
    from ray.serve import context

    client = context._global_client
    return client._controller if client is not None else None


async def _get_controller_async() -> ActorHandle:
    """The controller's handle: Serve's cached one, else looked up in a thread."""
    return _cached_controller() or await asyncio.to_thread(_get_controller)


def _get_controller() -> ActorHandle:
    """The Serve controller's handle (cached by Serve in every Serve process)."""
    from ray.serve.context import _get_global_client

    if not ray.is_initialized():
        # Never let a background lookup start a new local Ray instance.
        raise NoServeControllerError(
            "Ray is not initialized; no Serve controller to ask."
        )
    client = _get_global_client(raise_if_no_controller_running=False)
    if client is not None:
        return client._controller
    return ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)


async def get_or_create_deployment_actor_async(
    deployment_id: DeploymentID,
    actor_name: str,
    actor_class: Any,
    *args,
    timeout_s: Optional[float] = None,
    **kwargs,
) -> ActorHandle:
    """Await ``ServeController.get_or_create_deployment_actor`` without blocking.

    For request routers and other code running on an event loop: the controller
    lookup runs in a thread when it is not cached, and the result is awaited.
    An importable ``@ray.remote`` class or ``ActorClass.options(...)`` is sent
    as an ``ActorClassReference`` (see there), which keeps warm calls cheap.

    Args:
        deployment_id: The deployment the actor belongs to.
        actor_name: The actor's name within the deployment.
        actor_class: A class or ``@ray.remote`` class (its options apply).
        *args: Constructor arguments, used only when the actor is created.
        timeout_s: Give up after this many seconds (asyncio.TimeoutError).
        **kwargs: Constructor keyword arguments.

    Returns:
        A handle to the live actor.
    """

    actor_class = to_actor_class_reference(actor_class)

    async def call():
        controller = await _get_controller_async()
        ref = controller.get_or_create_deployment_actor.remote(
            deployment_id, actor_name, actor_class, *args, **kwargs
        )
        return await asyncio.wrap_future(ref.future())

    return await asyncio.wait_for(call(), timeout_s)


async def get_deployment_actor_async(
    deployment_id: DeploymentID,
    actor_name: str,
    timeout_s: Optional[float] = None,
) -> Optional[ActorHandle]:
    """Look up a deployment's actor by name without scanning named actors.

    Covers runtime-created actors and upstream's declarative
    ``deployment_actors`` (whose Ray names embed the code version).

    Returns:
        The handle, or None if the deployment has no such actor running.
    """

    async def call():
        controller = await _get_controller_async()
        ref = controller.get_deployment_actor_handle.remote(deployment_id, actor_name)
        return await asyncio.wrap_future(ref.future())

    return await asyncio.wait_for(call(), timeout_s)
