"""Lifecycle benchmark of controller-managed deployment-scoped actors.

Measures, on one local Ray cluster with Serve:

* the floor: latency of a no-op call on a plain actor and on the Serve
  controller (stock and patched);
* ``get_or_create_deployment_actor``: cold (first call, until the new actor
  answers), warm (later calls, p50/p99, called as the prefix router calls it,
  with a breakdown of where the time goes), and 100 concurrent callers, on an
  existing actor and on a new one (all must get the same actor);
* time from ``serve.delete`` returning until the deployment's actor is gone;
* time from a controller kill until ``get_or_create_deployment_actor`` returns
  the same actor again (re-adoption);
* prefix tree death under load: an app routed by ``PrefixCacheAffinityRouter``
  under closed-loop load; its prefix tree actor is killed and the workload
  measures when a new tree exists, when per-second affinity is back at 0.95 or
  more, and how many requests failed.

The ``get_or_create`` parts exist only in the patched wheel; under stock Ray
2.60.0 they are reported as ``null`` (n/a), and the tree death part kills
stock's ``LlmPrefixTreeActor``, which nothing recreates ("never" within the
window). Writes JSON to ``TEST_OUTPUT_JSON`` (or --output).
"""

import argparse
import asyncio
import collections
import json
import os
import sys
import threading
import time
from importlib.metadata import version
from typing import Any, Callable, Dict, List, Optional, Tuple

import bench_common
import prefix_router_bench as routing
from bench_common import controller, is_patched

import ray
from ray import cloudpickle, serve
from ray.serve._private.common import DeploymentID
from ray.serve._private.constants import SERVE_NAMESPACE
from ray.serve.config import RequestRouterConfig

# Replicas and actors cannot import the workload files: ship their classes by
# value (as for classes defined in __main__), also when this file is imported.
cloudpickle.register_pickle_by_value(routing)
if __name__ != "__main__":
    cloudpickle.register_pickle_by_value(sys.modules[__name__])

LIFECYCLE_APP = "lifecycle"
TREE_APP = "tree"
TREE_DEPLOYMENT = "Model"
ACTOR_NAME = "bench"
# A tree-death window is "recovered" only with this many requests in it.
MIN_WINDOW_REQUESTS = 8
AFFINITY_TARGET = 0.95


@ray.remote(num_cpus=0)
class Noop:
    """The baseline: a plain actor with a no-op method."""

    def __init__(self):
        self._handle = None

    def ping(self) -> None:
        return None

    def keep(self, handles: List[Any]) -> None:
        self._handle = handles[0]

    def handle_for(self, deployment_id: DeploymentID, name: str, cls: Any) -> Any:
        """The floor of a warm call: same arguments, returns a kept handle."""
        return self._handle


@serve.deployment(ray_actor_options={"num_cpus": 0}, num_replicas=1)
class Target:
    """The deployment that owns the benchmark's deployment actors."""

    def __call__(self) -> str:
        return "ok"


def stats_ms(latencies_s: List[float]) -> Dict[str, float]:
    """Summarize latencies given in seconds as milliseconds."""
    return {
        "n": len(latencies_s),
        "p50": routing.percentile(latencies_s, 0.5) * 1000,
        "p99": routing.percentile(latencies_s, 0.99) * 1000,
        "mean": (sum(latencies_s) / len(latencies_s) * 1000) if latencies_s else None,
    }


def time_interleaved(
    calls: Dict[str, Callable[[], Any]], n: int, warmup: int = 10
) -> Dict[str, List[float]]:
    """Run each call ``warmup`` + ``n`` times, alternating which goes first."""
    names = list(calls)
    times: Dict[str, List[float]] = {name: [] for name in names}
    for i in range(warmup + n):
        for name in names if i % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            calls[name]()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def time_calls(call: Callable[[], Any], n: int, warmup: int = 10) -> List[float]:
    """Run ``call`` ``warmup`` + ``n`` times serially; return the last n times."""
    return time_interleaved({"call": call}, n, warmup)["call"]


def actor_id(handle) -> str:
    """The hex actor id behind a handle (the same across controller restarts)."""
    return handle._actor_id.hex()


def named_actors() -> set:
    """(namespace, name) of every named actor alive in the cluster."""
    return {
        (a["namespace"], a["name"])
        for a in ray.util.list_named_actors(all_namespaces=True)
    }


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s=0.02):
    """Poll ``predicate`` (exceptions count as False) until it holds.

    Args:
        predicate: The condition to wait for.
        timeout_s: How long to wait at most.
        interval_s: Delay between polls.

    Returns:
        Seconds until the predicate held, or None on timeout.
    """
    start = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - start
        except Exception:
            pass
        if time.monotonic() - start > timeout_s:
            return None
        time.sleep(interval_s)


# --------------------------------------------------------------------------- #
# get_or_create_deployment_actor (patched only)
# --------------------------------------------------------------------------- #


def bench_get_or_create(args) -> Dict[str, Any]:
    """Cold, warm and concurrent get_or_create; delete -> gone; controller kill.

    The main actor is created as the prefix router creates its tree:
    ``PrefixTreeActor.options(num_cpus=0)``, an importable ``@ray.remote``
    class. Warm calls are timed as the router makes them (the class sent as an
    ``ActorClassReference``), interleaved with no-op actor calls and with the
    floor of such a call (a no-op method with the same arguments returning a
    handle); then through ``get_or_create_deployment_actor_async`` against an
    awaited no-op call. For the breakdown, warm calls are also timed as raw
    controller calls with the ``options()`` wrapper (which Ray pickles by
    value), with the class passed as an ObjectRef (serialized once), with a
    plain importable class (pickled by reference), and as a lookup without any
    class (``get_deployment_actor_handle``).

    Args:
        args: The parsed command line (--calls, --concurrent, --timeout-s).

    Returns:
        The latencies (ms for calls, s for the rest) and consistency checks.
    """
    from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_tree import (
        PrefixTree,
        PrefixTreeActor,
    )
    from ray.serve._private.deployment_scoped_actor_utils import (
        get_deployment_scoped_actor_name,
        get_or_create_deployment_actor_async,
        to_actor_class_reference,
    )

    actor_cls = PrefixTreeActor.options(num_cpus=0)
    dep = DeploymentID(name="Target", app_name=LIFECYCLE_APP)
    serve.run(Target.bind(), name=LIFECYCLE_APP, route_prefix=None)
    ctrl = controller()

    def get_or_create(name: str = ACTOR_NAME, cls: Any = actor_cls):
        return ctrl.get_or_create_deployment_actor.remote(dep, name, cls)

    out: Dict[str, Any] = {}
    start = time.perf_counter()
    handle = ray.get(get_or_create())
    out["cold_call_s"] = time.perf_counter() - start
    ray.get(handle.add_tenants.remote([ACTOR_NAME], 0.0))
    out["cold_s"] = time.perf_counter() - start
    first_id = actor_id(handle)

    ids = set()

    def warm(cls: Any = actor_cls, name: str = ACTOR_NAME) -> Callable[[], None]:
        return lambda: ids.add(actor_id(ray.get(get_or_create(name, cls))))

    # Warm calls as the prefix router makes them: the class goes as an
    # ActorClassReference (what get_or_create_deployment_actor_async sends).
    # Timed interleaved with no-op calls (alternating order), so that drift on
    # a shared machine lands on both; also the floor of any such call: a no-op
    # actor method with the same arguments that returns a handle.
    noop = Noop.remote()
    ray.get(noop.keep.remote([handle]))

    def warm_ref() -> None:
        ref = to_actor_class_reference(actor_cls)
        ids.add(actor_id(ray.get(get_or_create(ACTOR_NAME, ref))))

    timed = time_interleaved(
        {
            "noop": lambda: ray.get(noop.ping.remote()),
            "warm": warm_ref,
            "floor": lambda: ray.get(
                noop.handle_for.remote(
                    dep, ACTOR_NAME, to_actor_class_reference(actor_cls)
                )
            ),
        },
        args.calls,
    )
    out["noop_interleaved_ms"] = stats_ms(timed["noop"])
    out["warm_ms"] = stats_ms(timed["warm"])
    out["floor_same_args_handle_ms"] = stats_ms(timed["floor"])

    # The same through the async helper, against an awaited no-op call, on one
    # event loop that stays up (as a router's).
    loop = asyncio.new_event_loop()

    async def awaited_noop() -> None:
        await noop.ping.remote()

    async def helper_call() -> None:
        ids.add(
            actor_id(
                await get_or_create_deployment_actor_async(dep, ACTOR_NAME, actor_cls)
            )
        )

    try:
        timed = time_interleaved(
            {
                "noop": lambda: loop.run_until_complete(awaited_noop()),
                "helper": lambda: loop.run_until_complete(helper_call()),
            },
            args.calls,
        )
    finally:
        loop.close()
    ray.kill(noop)
    out["noop_awaited_ms"] = stats_ms(timed["noop"])
    out["warm_helper_ms"] = stats_ms(timed["helper"])
    # The raw controller call with `ActorClass.options(...)`: Ray pickles the
    # options wrapper, and with it the class, by value.
    out["warm_raw_options_ms"] = stats_ms(time_calls(warm(), args.calls))
    cls_ref = ray.put(actor_cls)
    out["warm_class_ref_ms"] = stats_ms(time_calls(warm(cls_ref), args.calls))
    out["lookup_ms"] = stats_ms(
        time_calls(
            lambda: ids.add(
                actor_id(
                    ray.get(ctrl.get_deployment_actor_handle.remote(dep, ACTOR_NAME))
                )
            ),
            args.calls,
        )
    )
    out["warm_same_actor"] = ids == {first_id}
    # What the ActorClass costs on the wire, measured here in the driver.
    data = cloudpickle.dumps(actor_cls)
    out["actor_class_pickle"] = {
        "bytes": len(data),
        "dumps_ms": stats_ms(time_calls(lambda: cloudpickle.dumps(actor_cls), 50))[
            "p50"
        ],
        "loads_ms": stats_ms(time_calls(lambda: cloudpickle.loads(data), 50))["p50"],
    }

    # 100 concurrent callers of an existing actor.
    start = time.perf_counter()
    handles = ray.get([get_or_create() for _ in range(args.concurrent)])
    out["concurrent_existing_s"] = time.perf_counter() - start
    existing_ids = {actor_id(h) for h in handles}

    # 100 concurrent callers racing to create a new actor (a plain class).
    start = time.perf_counter()
    handles = ray.get(
        [get_or_create("race", PrefixTree) for _ in range(args.concurrent)]
    )
    ray.get(handles[0].__ray_ready__.remote())
    out["concurrent_new_s"] = time.perf_counter() - start
    new_ids = {actor_id(h) for h in handles}
    out["concurrent_callers"] = args.concurrent
    out["concurrent_one_actor"] = existing_ids == {first_id} and len(new_ids) == 1
    ids.clear()
    out["warm_plain_class_ms"] = stats_ms(
        time_calls(warm(PrefixTree, "race"), args.calls)
    )
    out["warm_plain_same_actor"] = ids == new_ids

    # Controller kill -> re-adoption of the same actor.
    old_pid = ray.get(ctrl.get_pid.remote())
    ray.kill(ctrl, no_restart=False)
    kill_start = time.monotonic()

    def new_controller_answers() -> bool:
        return ray.get(controller().get_pid.remote(), timeout=2) != old_pid

    back = wait_until(new_controller_answers, args.timeout_s)
    readopted_id: List[Optional[str]] = [None]

    def readopted() -> bool:
        c = controller()
        h = ray.get(
            c.get_or_create_deployment_actor.remote(dep, ACTOR_NAME, actor_cls),
            timeout=5,
        )
        readopted_id[0] = actor_id(h)
        return True

    ok = back is not None and wait_until(readopted, args.timeout_s) is not None
    out["controller_kill"] = {
        "controller_back_s": back,
        "readopted_s": (time.monotonic() - kill_start) if ok else None,
        "same_actor": readopted_id[0] == first_id,
        # Same process, same state: the tenant added after the cold call.
        "state_kept": ray.get(handle.get_smallest_tenants.remote()) == [ACTOR_NAME],
    }

    # serve.delete returning -> the deployment's actors are gone.
    names = {
        (SERVE_NAMESPACE, get_deployment_scoped_actor_name(dep, n))
        for n in (ACTOR_NAME, "race")
    }
    assert names <= named_actors(), "deployment actors missing before delete"
    serve.delete(LIFECYCLE_APP)
    out["delete_to_gone_s"] = wait_until(
        lambda: not (names & named_actors()), args.timeout_s
    )
    return out


# --------------------------------------------------------------------------- #
# Prefix tree death under load (stock and patched)
# --------------------------------------------------------------------------- #


class Load:
    """Closed-loop load through a DeploymentHandle, on its own thread and loop."""

    def __init__(self, handle, prompts: List[str], concurrency: int, timeout_s: float):
        self.handle = handle
        self.prompts = prompts
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.records: List[Tuple[float, int, str]] = []  # (done, prefix, replica)
        self.failures: List[Tuple[float, str]] = []  # (time, kind)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()))

    async def _caller(self, counter):
        while not self._stop.is_set():
            i = next(counter)
            prefix = i % len(self.prompts)
            response = self.handle.remote(
                routing.Prompt(self.prompts[prefix] + f" #{i}")
            )
            try:
                replica = await asyncio.wait_for(response, self.timeout_s)
            except asyncio.TimeoutError:
                response.cancel()
                self.failures.append((time.monotonic(), "timeout"))
                continue
            except Exception as e:
                self.failures.append((time.monotonic(), type(e).__name__))
                # Do not spin on instant failures: they would starve the node.
                await asyncio.sleep(0.01)
                continue
            self.records.append((time.monotonic(), prefix, replica))

    async def _run(self):
        counter = iter(range(10**9))
        await asyncio.gather(*(self._caller(counter) for _ in range(self.concurrency)))

    def start(self) -> "Load":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def affinity(self, start: float, end: float) -> Tuple[int, float, int]:
        """Requests, affinity and failures of what completed in (start, end]."""
        pairs = [(p, r) for t, p, r in self.records if start < t <= end]
        failed = sum(1 for t, _ in self.failures if start < t <= end)
        return len(pairs), routing.affinity_rate(pairs), failed


def tree_location(patched: bool) -> Tuple[str, str]:
    """(name, namespace) of the tree actor of the benchmark's deployment."""
    if patched:
        from ray.llm._internal.serve.routing_policies.prefix_aware import (
            prefix_tree_client,
        )
        from ray.serve._private.deployment_scoped_actor_utils import (
            get_deployment_scoped_actor_name,
        )

        dep = DeploymentID(name=TREE_DEPLOYMENT, app_name=TREE_APP)
        name = get_deployment_scoped_actor_name(
            dep, prefix_tree_client.PREFIX_TREE_ACTOR_NAME
        )
        return name, SERVE_NAMESPACE
    return "LlmPrefixTreeActor", f"{SERVE_NAMESPACE}::{TREE_APP}::{TREE_DEPLOYMENT}"


def live_tree(patched: bool, not_id: Optional[str] = None):
    """The tree actor if it exists, answers, and is not ``not_id``; else None."""
    name, namespace = tree_location(patched)
    try:
        tree = ray.get_actor(name, namespace=namespace)
        if actor_id(tree) == not_id:
            return None
        ray.get(tree.__ray_ready__.remote(), timeout=1)
        return tree
    except Exception:
        return None


def bench_tree_death(args, patched: bool) -> Dict[str, Any]:
    """Kill the prefix tree under load; time until a tree and affinity are back.

    The load runs until the last second is at the affinity target, then the
    tree actor is killed (``no_restart``). "Restored" is the first moment after
    a new tree answers at which the last second of load had at least
    ``MIN_WINDOW_REQUESTS`` requests, affinity >= 0.95 and no failures. Both
    waits are bounded by ``--tree-window-s``; None means "never" in it.

    Args:
        args: The parsed command line.
        patched: Whether the tree is the controller-managed one (else stock's).

    Returns:
        Timings, failures (by kind) and the per-second affinity after the kill.
    """
    handle = serve.run(
        routing.TrivialModel.options(
            name=TREE_DEPLOYMENT,
            num_replicas=2,
            request_router_config=RequestRouterConfig(
                request_router_class=routing.PREFIX_ROUTER
            ),
        ).bind(),
        name=TREE_APP,
        route_prefix=None,
    )
    prompts = routing.make_prompts(args.prefixes, args.prefix_chars)
    load = Load(handle, prompts, args.tree_concurrency, args.request_timeout_s)
    load.start()
    try:
        # Kill only in steady state: a full second at the affinity target.
        time.sleep(args.tree_warmup_s)

        def steady() -> bool:
            now = time.monotonic()
            n, aff, failed = load.affinity(now - 1.0, now)
            return n >= MIN_WINDOW_REQUESTS and aff >= AFFINITY_TARGET and not failed

        steady_s = wait_until(steady, args.timeout_s, interval_s=0.1)
        tree = None
        if wait_until(lambda: live_tree(patched) is not None, args.timeout_s):
            tree = live_tree(patched)
        if tree is None:
            raise RuntimeError("the prefix tree actor never appeared")
        old_id = actor_id(tree)
        kill_time = time.monotonic()
        ray.kill(tree, no_restart=True)

        recreated_s: Optional[float] = None
        restored_s: Optional[float] = None
        deadline = kill_time + args.tree_window_s
        while time.monotonic() < deadline:
            now = time.monotonic()
            if recreated_s is None and live_tree(patched, not_id=old_id) is not None:
                recreated_s = time.monotonic() - kill_time
            if recreated_s is not None and restored_s is None:
                n, aff, failed = load.affinity(now - 1.0, now)
                if n >= MIN_WINDOW_REQUESTS and aff >= AFFINITY_TARGET and not failed:
                    restored_s = max(recreated_s, now - kill_time)
            if restored_s is not None and now - kill_time >= restored_s + 1.0:
                break  # keep the load on one more second to see no failures
            time.sleep(0.05)
        end_time = time.monotonic()
    finally:
        load.stop()

    n_before, affinity_before, failed_before = load.affinity(kill_time - 1.0, kill_time)
    per_second = []
    t = kill_time
    while t < end_time:
        n, aff, failed = load.affinity(t, min(t + 1.0, end_time))
        per_second.append(
            {
                "t_s": round(t - kill_time, 1),
                "requests": n,
                "affinity": aff,
                "failed": failed,
            }
        )
        t += 1.0
    failed_after = sum(1 for t, _ in load.failures if t > kill_time)
    kinds = collections.Counter(kind for t, kind in load.failures if t > kill_time)
    result = {
        "concurrency": args.tree_concurrency,
        "window_s": args.tree_window_s,
        "observed_s": end_time - kill_time,
        "steady_before_kill": steady_s is not None,
        "requests_before": n_before,
        "affinity_before": affinity_before,
        "failed_before": failed_before,
        "tree_recreated_s": recreated_s,
        "affinity_restored_s": restored_s,
        "failed_after_kill": failed_after,
        "failure_kinds": dict(kinds),
        "min_affinity_after": min(
            (s["affinity"] for s in per_second if s["requests"]), default=None
        ),
        "per_second": per_second,
    }

    # serve.delete returning -> the (recreated) tree is gone (patched only:
    # stock's tree is dead already, and stock would leak a live one).
    if patched and recreated_s is not None:
        name, namespace = tree_location(patched)
        serve.delete(TREE_APP)
        result["delete_to_tree_gone_s"] = wait_until(
            lambda: (namespace, name) not in named_actors(), args.timeout_s
        )
    else:
        serve.delete(TREE_APP)
    return result


# --------------------------------------------------------------------------- #
# main
# --------------------------------------------------------------------------- #


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500, help="warm/no-op calls")
    parser.add_argument("--concurrent", type=int, default=100)
    parser.add_argument("--tree-concurrency", type=int, default=8)
    parser.add_argument("--tree-warmup-s", type=float, default=3.0)
    parser.add_argument("--tree-window-s", type=float, default=15.0)
    parser.add_argument("--request-timeout-s", type=float, default=2.0)
    parser.add_argument("--timeout-s", type=float, default=60.0)
    parser.add_argument("--prefixes", type=int, default=8)
    parser.add_argument("--prefix-chars", type=int, default=2000)
    parser.add_argument("--output", default=os.environ.get("TEST_OUTPUT_JSON"))
    parser.add_argument("--smoke", action="store_true", help="seconds, not minutes")
    args = parser.parse_args(argv)
    if args.smoke:
        args.calls, args.tree_warmup_s, args.tree_window_s = 100, 1.0, 10.0

    patched = is_patched()
    results: Dict[str, Any] = {
        "ray_version": ray.__version__,
        "distribution_version": version("ray"),
        "patched": patched,
        "smoke": args.smoke,
    }
    phases = results["phase_s"] = {}
    phase_start = time.monotonic()
    with bench_common.local_serve():
        noop = Noop.remote()
        ray.get(noop.ping.remote())
        results["noop_actor_call_ms"] = stats_ms(
            time_calls(lambda: ray.get(noop.ping.remote()), args.calls)
        )
        ray.kill(noop)
        ctrl = controller()
        results["controller_noop_call_ms"] = stats_ms(
            time_calls(lambda: ray.get(ctrl.check_alive.remote()), args.calls)
        )
        print(json.dumps({k: results[k] for k in ("noop_actor_call_ms",)}), flush=True)
        phases["baseline"] = time.monotonic() - phase_start
        phase_start = time.monotonic()

        if patched:
            results["get_or_create"] = bench_get_or_create(args)
        else:
            results["get_or_create"] = None  # no such API in stock Ray
        print(json.dumps({"get_or_create": results["get_or_create"]}), flush=True)
        phases["get_or_create"] = time.monotonic() - phase_start
        phase_start = time.monotonic()

        results["tree_death"] = bench_tree_death(args, patched)
        print(
            json.dumps(
                {k: v for k, v in results["tree_death"].items() if k != "per_second"}
            ),
            flush=True,
        )
        phases["tree_death"] = time.monotonic() - phase_start
    bench_common.write_json(args.output, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
