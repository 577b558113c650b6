"""``SimLLMServer``: Serve LLM's ``LLMServer`` with the simulated engine.

Only two things change versus the stock ``LLMServer``
(``ray/llm/_internal/serve/core/server/llm_server.py``):

* ``_default_engine_cls = SimulatedEngine`` - the hook ``_get_default_engine_class``
  honours (after the ``RAYLLM_VLLM_ENGINE_CLS`` variable), so vLLM is never imported.
* ``get_deployment_options`` - the stock one calls ``llm_config.get_engine_config()``,
  which imports vLLM (``engines/vllm/vllm_models.py``) to size placement groups. Here
  the replica is a plain actor with ``ray_actor_options`` (default ``num_cpus`` 0.25 so
  several replicas fit on a 2-CPU node), and the runtime_env gets this package as a
  ``py_modules`` entry so replicas can import it even when it is only on the
  driver's ``sys.path`` (not installed in site-packages). Serve refuses local paths
  in a deployment's runtime_env ("only supported at the job level"), so the package
  directory is zipped and uploaded to the GCS here, on the driver, with Ray's own
  ``upload_py_modules_if_needed`` (what ``ray.init(runtime_env=...)`` uses; content
  hashed, so re-uploads are no-ops) and the ``gcs://_ray_pkg_<hash>.zip`` URI goes
  in the runtime_env. Set ``SIM_LLM_SHIP_PACKAGE=0`` to skip (package installed on
  every node).

Plus two control-plane methods reachable through a DeploymentHandle (use
``ray.llm._internal.serve.utils.broadcast.broadcast`` - or ``sim_llm.app.fetch_sim_stats``
- to reach every replica): ``sim_stats(reset=False)`` and ``sim_reset_stats()``.
"""

import copy
import os
import tempfile
import time
from typing import Any, Dict

from sim_llm.engine import SimEngineConfig, SimulatedEngine

import ray
from ray import serve
from ray.llm._internal.serve.constants import ENABLE_WORKER_PROCESS_SETUP_HOOK
from ray.llm._internal.serve.core.configs.llm_config import LLMConfig
from ray.llm._internal.serve.core.server.llm_server import LLMServer

DEFAULT_REPLICA_NUM_CPUS = 0.25
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _package_uri() -> str:
    """Upload this package to the GCS (once per content hash); return its URI."""
    if not ray.is_initialized():
        raise RuntimeError(
            "ray.init() must be called before building the sim app: the sim_llm "
            "package is uploaded to the cluster for the replicas."
        )
    from ray._private.runtime_env.py_modules import upload_py_modules_if_needed

    env = upload_py_modules_if_needed(
        {"py_modules": [PACKAGE_DIR], "excludes": ["__pycache__", "*.pyc"]},
        include_gitignore=True,
        scratch_dir=tempfile.gettempdir(),
    )
    return env["py_modules"][0]


class SimLLMServer(LLMServer):
    _default_engine_cls = SimulatedEngine

    @classmethod
    def get_deployment_options(cls, llm_config: LLMConfig) -> Dict[str, Any]:
        # Validate the engine kwargs on the driver, so a typo fails at build time.
        SimEngineConfig.from_engine_kwargs(llm_config.engine_kwargs)

        options = copy.deepcopy(llm_config.deployment_config)
        if (
            "placement_group_bundles" in options
            or "placement_group_strategy" in options
        ):
            raise ValueError("SimLLMServer does not use placement groups")
        rao = options.setdefault("ray_actor_options", {})
        rao.setdefault("num_cpus", DEFAULT_REPLICA_NUM_CPUS)

        # Same runtime_env precedence as the stock LLMServer.get_deployment_options.
        default_env = (
            dict(ray.get_runtime_context().runtime_env) if ray.is_initialized() else {}
        )
        if ENABLE_WORKER_PROCESS_SETUP_HOOK:
            default_env["worker_process_setup_hook"] = (
                "ray.llm._internal.serve._worker_process_setup_hook"
            )
        runtime_env = {
            **default_env,
            **rao.get("runtime_env", {}),
            **(llm_config.runtime_env or {}),
        }
        if os.environ.get("SIM_LLM_SHIP_PACKAGE", "1") != "0":
            py_modules = list(runtime_env.get("py_modules") or [])
            py_modules.append(_package_uri())
            runtime_env["py_modules"] = py_modules
        rao["runtime_env"] = runtime_env
        return options

    # --- control plane: per-replica simulator stats -------------------------------
    async def sim_stats(self, reset: bool = False) -> Dict[str, Any]:
        ctx = serve.get_replica_context()
        stats = self.engine.stats() if self.engine is not None else {}
        stats.update(
            replica_id=ctx.replica_id.unique_id,
            replica=ctx.replica_id.to_full_id_str(),
            pid=os.getpid(),
            time=time.time(),
        )
        if reset and self.engine is not None:
            self.engine.reset_stats()
        return stats

    async def sim_reset_stats(self) -> None:
        if self.engine is not None:
            self.engine.reset_stats()
