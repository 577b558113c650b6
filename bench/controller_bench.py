"""Serve controller CPU per control-loop step, by kind of deployment actors.

One deployment (1 replica) on a local cluster, in three set-ups one after the
other: no deployment actors; N declarative ones (``deployment_actors=``); N
runtime ones (``serve.get_or_create_deployment_actor``, patched Ray only).
Once every actor runs and a settle time has passed (the controller's steps
stay slow for some 40 s after 50 actors were created), it samples the
controller's process CPU time (/proc/<pid>/stat) and its control-loop count
(``get_health_metrics()["num_control_loops"]``) over a window, and reports CPU
milliseconds per step and the mean loop duration Serve records.

    <venv>/bin/python bench/controller_bench.py --actors 50 --output out.json
"""

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Dict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import toolkit  # noqa: E402

import ray  # noqa: E402
from ray import serve  # noqa: E402
from ray._common.test_utils import wait_for_condition  # noqa: E402
from ray.serve._private.constants import (  # noqa: E402
    SERVE_CONTROLLER_NAME,
    SERVE_NAMESPACE,
)
from ray.serve.config import DeploymentActorConfig  # noqa: E402

APP = "controller_bench"
OPTIONS = {"num_cpus": 0}


@ray.remote
class Store:
    """A deployment actor that does nothing but exist."""

    def ping(self) -> str:
        return "ok"


@serve.deployment(num_replicas=1, ray_actor_options=OPTIONS)
class Model:
    def __call__(self) -> str:
        return "ok"


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sample(window_s: float, windows: int = 3) -> Dict[str, float]:
    """Controller CPU ms per control-loop step: the median of a few windows."""
    ctrl = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    pid = ray.get(ctrl.get_pid.remote())

    def loops() -> int:
        return ray.get(ctrl.get_health_metrics.remote())["num_control_loops"]

    per_step, rates = [], []
    for _ in range(windows):
        cpu0, loops0 = cpu_seconds(pid), loops()
        time.sleep(window_s / windows)  # the measurement window itself
        steps = max(1, loops() - loops0)
        per_step.append((cpu_seconds(pid) - cpu0) * 1e3 / steps)
        rates.append(steps * windows / window_s)
    metrics = ray.get(ctrl.get_health_metrics.remote())
    return {
        "cpu_ms_per_step": statistics.median(per_step),
        "cpu_ms_per_step_windows": per_step,
        "steps_per_s": statistics.median(rates),
        "loop_duration_mean_ms": metrics["loop_duration_s"]["mean"] * 1e3,
    }


def deployment_actors() -> int:
    names = ray.util.list_named_actors(all_namespaces=True)
    return sum(a["name"].startswith("SERVE_DEPLOYMENT_ACTOR::") for a in names)


def setup(kind: str, n: int, settle_s: float) -> None:
    actors = []
    if kind == "declarative":
        actors = [
            DeploymentActorConfig(
                name=f"a{i}", actor_class=Store, actor_options=OPTIONS
            )
            for i in range(n)
        ]
    serve.run(Model.options(deployment_actors=actors).bind(), name=APP)
    if kind == "runtime":
        for i in range(n):
            serve.get_or_create_deployment_actor(
                f"a{i}",
                Store,
                actor_options=OPTIONS,
                deployment_name="Model",
                app_name=APP,
            )
    expected = n if kind != "none" else 0
    wait_for_condition(lambda: deployment_actors() == expected, timeout=180)
    time.sleep(settle_s)  # let start-up work leave the controller's loop


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actors", type=int, default=50)
    parser.add_argument("--window-s", type=float, default=15.0)
    parser.add_argument("--settle-s", type=float, default=60.0)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    kinds = ["none", "declarative"]
    if hasattr(serve, "get_or_create_deployment_actor"):
        kinds.append("runtime")
    results = {"ray": ray.__version__, "actors": args.actors}
    with toolkit.local_serve():
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
        for kind in kinds:
            setup(kind, args.actors, args.settle_s)
            results[kind] = sample(args.window_s)
            print(
                f"controller, {kind:11} ({args.actors if kind != 'none' else 0} "
                f"actors): {results[kind]['cpu_ms_per_step']:.2f} ms CPU per step, "
                f"{results[kind]['steps_per_s']:.1f} steps/s",
                flush=True,
            )
            serve.delete(APP)
    toolkit.write_json(args.output, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
