"""Scale test: many deployments, each with controller-managed deployment actors.

Deploys ``--deployments`` single-deployment apps (default 50; ``--smoke``: 5).
Each deployment declares one upstream-style declarative deployment actor
(``deployment_actors=[DeploymentActorConfig(...)]``) and gets one actor created
at run time through ``ServeController.get_or_create_deployment_actor`` (all
requested at once). Then it checks and times, at that scale:

* every actor is created, alive, and listed RUNNING in ``serve.status()`` and
  in the instance details (``created_by`` "api" and "config");
* every replica reaches its runtime actor by name
  (``get_deployment_actor_async``);
* asking again returns the same actors (idempotent);
* after a controller kill, every runtime actor is re-adopted (same actor id)
  from the checkpoint and everything is RUNNING again;
* deleting all the apps leaves no ``SERVE_DEPLOYMENT_ACTOR::*`` actor and an
  empty checkpoint.

Writes timings, checks and ``perf_metrics`` to ``TEST_OUTPUT_JSON`` (or
--output) and exits non-zero if a check failed.

Usage:
    python workloads/deployment_actor_scale.py [--deployments 50] [--smoke]
"""

import argparse
import json
import os
import socket
import sys
import time
from typing import Any, Callable, Dict, List

import ray
from ray import cloudpickle, serve
from ray._common.test_utils import wait_for_condition
from ray.serve._private.common import DeploymentID
from ray.serve._private.constants import (
    SERVE_CONTROLLER_NAME,
    SERVE_DEPLOYMENT_ACTOR_PREFIX,
    SERVE_NAMESPACE,
)
from ray.serve._private.deployment_scoped_actor_constants import (
    DEPLOYMENT_SCOPED_ACTORS_CHECKPOINT_KEY,
)
from ray.serve._private.deployment_scoped_actor_utils import (
    get_deployment_actor_async,
    get_deployment_scoped_actor_name,
)
from ray.serve.config import DeploymentActorConfig

DEPLOYMENT = "Target"
RUNTIME_ACTOR = "counter"
DECLARED_ACTOR = "declared"


@ray.remote(num_cpus=0)
class Counter:
    """The runtime-created deployment actor: a counter."""

    def __init__(self, start: int = 0):
        self._value = start

    def incr(self) -> int:
        self._value += 1
        return self._value


@ray.remote(num_cpus=0)
class Declared:
    """The declarative deployment actor."""

    def ping(self) -> str:
        return "pong"


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=16)
class Target:
    """Reaches its deployment's runtime actor by name, as a router would."""

    async def __call__(self) -> int:
        ctx = serve.get_replica_context()
        actor = await get_deployment_actor_async(
            DeploymentID(name=ctx.deployment, app_name=ctx.app_name),
            RUNTIME_ACTOR,
            timeout_s=30,
        )
        return await actor.incr.remote()


def app_name(i: int) -> str:
    return f"scale_{i:03d}"


def dep_id(i: int) -> DeploymentID:
    return DeploymentID(name=DEPLOYMENT, app_name=app_name(i))


def controller():
    return ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)


def scoped_actor_names() -> List[str]:
    return sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == SERVE_NAMESPACE
        and a["name"].startswith(SERVE_DEPLOYMENT_ACTOR_PREFIX)
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Checks:
    """Named pass/fail results and timings."""

    def __init__(self):
        self.results: Dict[str, Dict[str, Any]] = {}
        self.timings: Dict[str, float] = {}

    def check(self, name: str, ok: bool, detail: Any = "") -> bool:
        self.results[name] = {"ok": bool(ok), "detail": detail}
        print(f"check {'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
        return bool(ok)

    def timed(self, name: str, fn: Callable[[], Any]) -> Any:
        start = time.monotonic()
        out = fn()
        self.timings[name] = round(time.monotonic() - start, 3)
        print(f"timing {name}: {self.timings[name]:.2f}s", flush=True)
        return out

    def wait(self, name: str, predicate: Callable[[], bool], timeout: float) -> bool:
        start = time.monotonic()
        try:
            wait_for_condition(predicate, timeout=timeout, retry_interval_ms=500)
        except RuntimeError:
            return self.check(name, False, f"not within {timeout:.0f}s")
        self.timings[name] = round(time.monotonic() - start, 3)
        return self.check(name, True, f"{self.timings[name]:.2f}s")

    @property
    def ok(self) -> bool:
        return all(r["ok"] for r in self.results.values())


def all_actor_states() -> Dict[str, Dict[str, str]]:
    """Per app: deployment actor name -> state, from ``serve.status()``."""
    out = {}
    for name, app in serve.status().applications.items():
        dep = app.deployments.get(DEPLOYMENT)
        if dep is None:
            continue
        out[name] = {
            k: v.get("state") if isinstance(v, dict) else v
            for k, v in dep.deployment_actors.items()
        }
    return out


def all_running(n: int) -> bool:
    states = all_actor_states()
    want = {RUNTIME_ACTOR: "RUNNING", DECLARED_ACTOR: "RUNNING"}
    return len(states) == n and all(s == want for s in states.values())


def checkpoint_deployments() -> List[str]:
    def read(ctrl):
        raw = ctrl.kv_store.get(DEPLOYMENT_SCOPED_ACTORS_CHECKPOINT_KEY)
        data = cloudpickle.loads(raw) if raw is not None else {}
        return sorted(f"{d.app_name}/{d.name}" for d, v in data.items() if v)

    return ray.get(controller().__ray_call__.remote(read), timeout=60)


def run(args) -> Dict[str, Any]:
    n = args.deployments
    checks = Checks()
    timeout = args.timeout_s
    deployment = Target.options(
        num_replicas=args.replicas,
        deployment_actors=[
            DeploymentActorConfig(
                name=DECLARED_ACTOR,
                actor_class=Declared,
                actor_options={"num_cpus": 0},
            )
        ],
    )
    targets = [
        serve.RunTarget(target=deployment.bind(), name=app_name(i), route_prefix=None)
        for i in range(n)
    ]
    checks.timed("deploy_s", lambda: serve.run_many(targets))

    # All runtime actors requested at once; the controller serializes them.
    def create_all():
        refs = [
            controller().get_or_create_deployment_actor.remote(
                dep_id(i), RUNTIME_ACTOR, Counter, 0
            )
            for i in range(n)
        ]
        return ray.get(refs, timeout=timeout)

    handles = checks.timed("create_runtime_actors_s", create_all)
    ids = [h._actor_id.hex() for h in handles]
    checks.check("one distinct runtime actor per deployment", len(set(ids)) == n)
    values = checks.timed(
        "runtime_actors_ready_s",
        lambda: ray.get([h.incr.remote() for h in handles], timeout=timeout),
    )
    checks.check("every runtime actor answers", values == [1] * n, values[:5])

    expected_runtime = {
        get_deployment_scoped_actor_name(dep_id(i), RUNTIME_ACTOR) for i in range(n)
    }
    names = set(scoped_actor_names())
    declared = {
        name
        for name in names - expected_runtime
        if name.endswith(f"::{DECLARED_ACTOR}")
    }
    checks.check(
        "every runtime actor is a named actor",
        expected_runtime <= names,
        f"{len(expected_runtime & names)}/{n}",
    )
    checks.check(
        "every declarative actor is a named actor",
        len(declared) == n,
        f"{len(declared)}/{n}",
    )
    checks.wait("status shows every actor RUNNING", lambda: all_running(n), timeout)
    checks.timed("status_call_s", serve.status)
    details = checks.timed(
        "instance_details_call_s",
        lambda: ray.get(controller().get_serve_instance_details.remote(), timeout=60),
    )
    created_by = {
        (a["name"], a["created_by"])
        for app in details["applications"].values()
        for dep in app["deployments"].values()
        for a in dep.get("deployment_actors", [])
    }
    checks.check(
        "instance details list both kinds",
        created_by == {(RUNTIME_ACTOR, "api"), (DECLARED_ACTOR, "config")},
        sorted(created_by),
    )
    if args.replicas > 0:
        handles_by_app = [
            serve.get_deployment_handle(DEPLOYMENT, app_name=app_name(i))
            for i in range(n)
        ]
        got = checks.timed(
            "replicas_reach_their_actor_s",
            lambda: [h.remote().result(timeout_s=timeout) for h in handles_by_app],
        )
        checks.check("every replica reached its own actor", got == [2] * n, got[:5])

    again = checks.timed("get_or_create_again_s", create_all)
    checks.check(
        "asking again returns the same actors",
        [h._actor_id.hex() for h in again] == ids,
    )
    checks.check(
        "checkpoint holds every deployment",
        len(checkpoint_deployments()) == n,
        f"{len(checkpoint_deployments())}/{n}",
    )

    # Controller restart at scale: re-adopt every actor from the checkpoint.
    ctrl = controller()
    old_pid = ray.get(ctrl.get_pid.remote(), timeout=60)
    ray.kill(ctrl, no_restart=False)

    def back() -> bool:
        return ray.get(controller().get_pid.remote(), timeout=10) != old_pid

    checks.wait("controller back after a kill", back, timeout)
    checks.wait("every actor RUNNING after the kill", lambda: all_running(n), timeout)
    after = ray.get(
        [
            controller().get_deployment_actor_handle.remote(dep_id(i), RUNTIME_ACTOR)
            for i in range(n)
        ],
        timeout=timeout,
    )
    checks.check(
        "every runtime actor re-adopted (same actor id)",
        [h._actor_id.hex() if h is not None else None for h in after] == ids,
    )

    # Delete everything: nothing may be left.
    def delete_all():
        for i in range(n):
            serve.delete(app_name(i), _blocking=False)
        wait_for_condition(
            lambda: not serve.status().applications and not scoped_actor_names(),
            timeout=timeout,
            retry_interval_ms=500,
        )

    start = time.monotonic()
    try:
        delete_all()
        checks.timings["delete_all_s"] = round(time.monotonic() - start, 3)
    except RuntimeError:
        pass
    leaked = scoped_actor_names()
    checks.check("no deployment actor left after deleting", not leaked, leaked[:5])
    checks.check("checkpoint empty", not checkpoint_deployments())
    return {
        "deployments": n,
        "replicas_per_deployment": args.replicas,
        "checks": checks.results,
        "timings_s": checks.timings,
        "leaked_actors": leaked,
        "success": checks.ok,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployments", type=int, default=50)
    parser.add_argument("--replicas", type=int, default=1, help="per deployment")
    parser.add_argument("--timeout-s", type=float, default=300.0)
    parser.add_argument("--address", default=None, help="existing Ray cluster")
    parser.add_argument("--output", default=os.environ.get("TEST_OUTPUT_JSON"))
    parser.add_argument("--smoke", action="store_true", help="5 deployments")
    args = parser.parse_args(argv)
    if args.smoke:
        args.deployments = min(args.deployments, 5)

    os.environ.setdefault("RAY_SERVE_DEPLOYMENT_ACTOR_HEALTH_CHECK_PERIOD_S", "1")
    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:
        # "local": a new instance, never another cluster on this machine.
        ray.init(
            address="local", num_cpus=4, include_dashboard=False, log_to_driver=False
        )
    start = time.monotonic()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
        try:
            result = run(args)
        finally:
            serve.shutdown()
    finally:
        ray.shutdown()
    result["test"] = "deployment_actor_scale"
    result["mode"] = "smoke" if args.smoke else "full"
    result["duration_s"] = round(time.monotonic() - start, 1)
    result["perf_metrics"] = [
        {
            "perf_metric_name": f"{name}_{result['deployments']}_deployments",
            "perf_metric_value": value,
            "perf_metric_type": "LATENCY",
        }
        for name, value in sorted(result["timings_s"].items())
    ]
    print(json.dumps(result, indent=2, default=str))
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2, default=str)
    return 0 if result["success"] else 1


if __name__ == "__main__":
    sys.exit(main())
