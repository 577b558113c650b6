"""Controller scale benchmark: control-loop step time by number of deployments.

Deploys N applications of one trivial deployment each (1 replica, num_cpus=0)
for each N in --deployments (ascending, adding applications), and samples the
Serve controller's control-loop step time in steady state, as Serve records it
(``ControllerHealthMetrics.loop_duration_s``, whose rolling window holds the
last 100 steps). With --with-actors (patched Ray only) it then gives every
deployment one controller-managed deployment actor and samples again, for each
N in descending order (deleting applications in between); --actor-levels
limits that to some N. Before that, at the largest N, it samples once more
with N plain actors of the same class that Serve does not manage (the control:
what N more actor processes cost the machine, and so the controller's wall
time, without any controller work for them).

The step time is taken from the raw durations the controller's health metrics
tracker holds, restricted to the steps run after the settle time, so that the
window never includes the deployment itself; ``get_health_metrics()`` is
recorded next to it. Writes JSON to ``TEST_OUTPUT_JSON`` (or --output).
"""

import argparse
import json
import os
import statistics
import sys
import time
from importlib.metadata import version
from typing import Any, Dict, List, Optional

import bench_common
from bench_common import controller, is_patched

import ray
from ray import cloudpickle, serve
from ray.serve._private.common import DeploymentID

if __name__ != "__main__":
    # Imported (ci/bench.py runs several workloads in one process): replicas
    # cannot import this file, so ship its classes by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])

APP_PREFIX = "scale_"
DEPLOYMENT = "Trivial"


@serve.deployment(ray_actor_options={"num_cpus": 0}, num_replicas=1)
class Trivial:
    def __call__(self) -> str:
        return "ok"


def app_name(i: int) -> str:
    return f"{APP_PREFIX}{i}"


def _tracker_state(ctrl) -> Dict[str, Any]:
    """Raw loop and deployment-state-update durations held by the controller."""

    def read(self):
        t = self._health_metrics_tracker
        return {
            "num_control_loops": t.num_control_loops,
            "loop": list(t.loop_durations),
            # The parts of a step, as the tracker records them.
            "dsm_update": list(t.dsm_update_durations),
            "asm_update": list(t.asm_update_durations),
            "proxy_update": list(t.proxy_update_durations),
            "node_update": list(t.node_update_durations),
        }

    return ray.get(ctrl.__ray_call__.remote(read))


def cpu_seconds(pid: int) -> Optional[float]:
    """User + system CPU seconds of a local process (None if unreadable)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def sample_step_time(settle_s: float, measure_s: float) -> Dict[str, Any]:
    """Step times (ms) of the control loops run in the measurement window.

    Besides the wall-clock step time that Serve records, reports the
    controller process's CPU time per step, which other load on the machine
    inflates far less.
    """
    ctrl = controller()
    pid = ray.get(ctrl.get_pid.remote())
    time.sleep(settle_s)
    begin = _tracker_state(ctrl)["num_control_loops"]
    cpu_begin = cpu_seconds(pid)
    time.sleep(measure_s)
    cpu_end = cpu_seconds(pid)
    state = _tracker_state(ctrl)
    loops_run = state["num_control_loops"] - begin
    new = min(loops_run, len(state["loop"]))

    def window_ms(key: str) -> List[float]:
        return [d * 1000 for d in state[key][-new:]] if new else []

    def mean(values: List[float]) -> Optional[float]:
        return statistics.fmean(values) if values else None

    loops = window_ms("loop")
    health = ray.get(ctrl.get_health_metrics.remote())
    serve_stats = health.get("loop_duration_s") or {}
    cpu_per_step = (
        (cpu_end - cpu_begin) * 1000 / loops_run
        if loops_run and cpu_begin is not None and cpu_end is not None
        else None
    )
    return {
        "loops": len(loops),
        "step_ms_mean": mean(loops),
        "step_ms_p50": statistics.median(loops) if loops else None,
        "step_ms_max": max(loops) if loops else None,
        "dsm_update_ms_mean": mean(window_ms("dsm_update")),
        "asm_update_ms_mean": mean(window_ms("asm_update")),
        "proxy_update_ms_mean": mean(window_ms("proxy_update")),
        "node_update_ms_mean": mean(window_ms("node_update")),
        "controller_cpu_ms_per_step": cpu_per_step,
        "loops_per_second": health.get("loops_per_second"),
        # Serve's own rolling window (last 100 steps), for reference.
        "serve_loop_duration_ms_mean": (serve_stats.get("mean") or 0) * 1000,
    }


def deploy_apps(start: int, stop: int) -> float:
    """Deploy applications start..stop-1 in one call; seconds until running."""
    t0 = time.monotonic()
    if stop > start:
        serve.run_many(
            [
                serve.RunTarget(
                    target=Trivial.bind(), name=app_name(i), route_prefix=None
                )
                for i in range(start, stop)
            ]
        )
    return time.monotonic() - t0


def delete_apps(start: int, stop: int, timeout_s: float) -> None:
    """Delete applications start..stop-1 and wait until they are gone."""
    names = {app_name(i) for i in range(start, stop)}
    for name in names:
        serve.delete(name, _blocking=False)
    deadline = time.monotonic() + timeout_s
    while names & set(serve.status().applications):
        if time.monotonic() > deadline:
            raise TimeoutError(f"applications not deleted: {sorted(names)}")
        time.sleep(0.2)


def add_actors(start: int, stop: int) -> float:
    """Give deployments start..stop-1 one deployment actor each; until answering."""
    from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_tree import (
        PrefixTreeActor,
    )

    t0 = time.monotonic()
    ctrl = controller()
    cls = PrefixTreeActor.options(num_cpus=0)
    handles = ray.get(
        [
            ctrl.get_or_create_deployment_actor.remote(
                DeploymentID(name=DEPLOYMENT, app_name=app_name(i)), "bench", cls
            )
            for i in range(start, stop)
        ]
    )
    ray.get([h.__ray_ready__.remote() for h in handles])
    return time.monotonic() - t0


def plain_actors(n: int) -> List[Any]:
    """N actors of the deployment actors' class, not managed by Serve."""
    from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_tree import (
        PrefixTreeActor,
    )

    actors = [PrefixTreeActor.options(num_cpus=0).remote() for _ in range(n)]
    ray.get([a.__ray_ready__.remote() for a in actors])
    return actors


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployments", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--settle-s", type=float, default=5.0)
    parser.add_argument("--measure-s", type=float, default=10.0)
    parser.add_argument(
        "--with-actors",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also measure with one deployment actor each (default: if patched)",
    )
    parser.add_argument(
        "--actor-levels",
        type=int,
        nargs="+",
        help="numbers of deployments to measure with actors (default: all)",
    )
    parser.add_argument(
        "--plain-control",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --with-actors, also sample with N plain (unmanaged) actors",
    )
    parser.add_argument("--timeout-s", type=float, default=300.0)
    parser.add_argument("--output", default=os.environ.get("TEST_OUTPUT_JSON"))
    parser.add_argument("--smoke", action="store_true", help="seconds, not minutes")
    args = parser.parse_args(argv)
    if args.smoke:
        args.deployments, args.settle_s, args.measure_s = [1, 5], 1.0, 2.5
        # With actors only at the top: scaling down costs seconds in CI.
        args.actor_levels = args.actor_levels or [5]
    patched = is_patched()
    if args.with_actors is None:
        args.with_actors = patched
    if args.with_actors and not patched:
        parser.error("--with-actors needs the patched Ray (deployment actors)")
    levels = sorted(set(args.deployments))
    actor_levels = sorted(set(args.actor_levels or levels) & set(levels))

    results: Dict[str, Any] = {
        "ray_version": ray.__version__,
        "distribution_version": version("ray"),
        "patched": patched,
        "smoke": args.smoke,
        "settle_s": args.settle_s,
        "measure_s": args.measure_s,
        "runs": [],
        "plain_actor_runs": [],
    }
    runs: List[Dict[str, Any]] = results["runs"]
    with bench_common.local_serve():
        deployed = 0
        for n in levels:
            deploy_s = deploy_apps(deployed, n)
            deployed = n
            run = {"deployments": n, "actors": False, "setup_s": deploy_s}
            run.update(sample_step_time(args.settle_s, args.measure_s))
            runs.append(run)
            print(json.dumps(run), flush=True)
        if args.with_actors and args.plain_control and actor_levels:
            n = actor_levels[-1]
            if n < deployed:
                delete_apps(n, deployed, args.timeout_s)
                deployed = n
            t0 = time.monotonic()
            plain = plain_actors(n)
            run = {"deployments": n, "plain_actors": n}
            run["setup_s"] = time.monotonic() - t0
            run.update(sample_step_time(args.settle_s, args.measure_s))
            for actor in plain:
                ray.kill(actor)
            results["plain_actor_runs"].append(run)
            print(json.dumps(run), flush=True)
        if args.with_actors:
            with_actors = 0
            for n in reversed(actor_levels):
                if n < deployed:
                    delete_apps(n, deployed, args.timeout_s)
                    deployed = n
                setup_s = add_actors(with_actors, n) if n > with_actors else 0.0
                with_actors = max(with_actors, n)
                run = {"deployments": n, "actors": True, "setup_s": setup_s}
                run.update(sample_step_time(args.settle_s, args.measure_s))
                runs.append(run)
                print(json.dumps(run), flush=True)
    runs.sort(key=lambda r: (r["actors"], r["deployments"]))
    bench_common.write_json(args.output, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
