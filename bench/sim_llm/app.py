"""Build Serve LLM's real OpenAI app (``build_openai_app``) around the simulated engine.

    app = build_sim_openai_app(num_replicas=2, router="prefix")
    serve.run(app, name="sim", route_prefix="/")
    stats = fetch_sim_stats("sim")      # per-replica engine stats

Path: OpenAI HTTP client -> Serve proxy -> ``OpenAiIngress`` (``core/ingress``) ->
DeploymentHandle with the deployment's request router (``PrefixCacheAffinityRouter``
for ``router="prefix"``, Serve's default ``PowerOfTwoChoicesRequestRouter`` for
``"pow2"``) -> ``SimLLMServer`` replicas -> ``SimulatedEngine``.

The request router is configured the way Serve LLM documents it: through
``LLMConfig.deployment_config["request_router_config"]`` (a Serve
``RequestRouterConfig``: ``request_router_class`` + ``request_router_kwargs``, which
are passed to the router's ``initialize_state``). ``build_llm_deployment`` copies the
deployment_config into ``serve.deployment(...)`` options.

Engine parameters go in ``LLMConfig.engine_kwargs`` (validated by ``SimEngineConfig``).
"""

from typing import Any, Dict, List, Optional, Union

from sim_llm.engine import SimEngineConfig
from sim_llm.server import SimLLMServer

from ray.llm._internal.serve.core.configs.llm_config import LLMConfig
from ray.llm._internal.serve.core.ingress.builder import build_openai_app

PREFIX_ROUTER = "ray.serve.llm.request_router.PrefixCacheAffinityRouter"
POW2_ROUTER = None  # Serve's default: PowerOfTwoChoicesRequestRouter

ROUTERS = {"prefix": PREFIX_ROUTER, "pow2": POW2_ROUTER}


def build_sim_llm_config(
    *,
    num_replicas: int = 2,
    router: str = "prefix",
    engine_config: Union[None, SimEngineConfig, Dict[str, Any]] = None,
    model_id: str = "sim-model",
    router_kwargs: Optional[Dict[str, Any]] = None,
    deployment_config: Optional[Dict[str, Any]] = None,
    router_cls: Optional[str] = None,
) -> LLMConfig:
    if router not in ROUTERS and router_cls is None:
        raise ValueError(f"router must be one of {sorted(ROUTERS)}, got {router!r}")
    if isinstance(engine_config, SimEngineConfig):
        engine_kwargs = engine_config.model_dump(exclude_defaults=True)
    else:
        engine_kwargs = dict(engine_config or {})
        SimEngineConfig.from_engine_kwargs(engine_kwargs)  # validate early

    dep = {"num_replicas": num_replicas, **(deployment_config or {})}
    router_path = router_cls or ROUTERS[router]
    if router_path is not None:
        dep["request_router_config"] = {
            "request_router_class": router_path,
            "request_router_kwargs": dict(router_kwargs or {}),
        }
    elif router_kwargs:
        raise ValueError("router_kwargs only apply to a non-default router")

    return LLMConfig(
        model_loading_config={"model_id": model_id},
        server_cls=SimLLMServer,
        engine_kwargs=engine_kwargs,
        deployment_config=dep,
        log_engine_metrics=False,
    )


def build_sim_openai_app(
    ingress_deployment_config: Optional[Dict[str, Any]] = None, **config_kwargs
):
    """Serve LLM's ``build_openai_app`` around one simulated model.

    ``config_kwargs`` are those of :func:`build_sim_llm_config`.
    """
    builder_config: Dict[str, Any] = {
        "llm_configs": [build_sim_llm_config(**config_kwargs)]
    }
    if ingress_deployment_config:
        builder_config["ingress_deployment_config"] = ingress_deployment_config
    return build_openai_app(builder_config)


def sim_deployment_name(model_id: str = "sim-model") -> str:
    """Name that ``build_llm_deployment`` gives the SimLLMServer deployment."""
    return f"{SimLLMServer.__name__}:" + model_id.replace("/", "--").replace(".", "_")


def fetch_sim_stats(
    app_name: str, model_id: str = "sim-model", reset: bool = False
) -> List[Dict[str, Any]]:
    """Per-replica engine stats, one dict per replica (sorted by replica id).

    Uses Serve LLM's own ``broadcast`` utility (``utils/broadcast.py``), which calls the
    method on every replica of the deployment (the one behind ``/reset_prefix_cache``).
    Blocking; call from a driver thread, not from inside an event loop.
    """
    from ray import serve
    from ray.llm._internal.serve.utils.broadcast import broadcast

    handle = serve.get_deployment_handle(sim_deployment_name(model_id), app_name)
    # Work around a race in broadcast() (utils/broadcast.py:77-85): it reads
    # ``router._asyncio_router.request_router`` from this (loop-less) thread; if the
    # replica set arrived before the router was built, that property builds the
    # request router here and update_replicas() -> asyncio.get_running_loop() raises
    # "RuntimeError: no running event loop" on every poll. One ordinary handle call
    # first makes the router get built inside its own event loop. (No positional
    # args, so the prefix router falls back to power of two for it.)
    handle.sim_stats.remote(reset=False).result(timeout_s=60)
    stats = broadcast(handle, "sim_stats", kwargs={"reset": reset})
    return sorted(stats, key=lambda s: s["replica_id"])
