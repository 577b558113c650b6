"""Demo: Serve LLM's prefix-aware router on controller-managed deployment actors.

An LLM-like Serve app (an ingress deployment in front of a "model" deployment
routed by ``PrefixCacheAffinityRouter``; a trivial async model stands in for
the engine) runs under closed-loop load with prompts that share a few long
prefixes. While the load runs, the demo

1. kills a model replica,
2. kills the Serve controller,
3. kills the prefix tree actor,
4. deletes the app, and
5. shuts Serve down,

and shows, live and in a final report, what each fault did: requests, failures,
prefix affinity per phase, recovery times, and the deployment actors left
behind (zero). It also writes a PNG timeline.

Usage:
    python demo/prefix_router_demo.py [--phase-s 6] [--concurrency 8]
        [--address auto] [--json out.json] [--png out.png]
"""

import argparse
import asyncio
import collections
import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import ray
from ray import serve
from ray.serve._private.common import DeploymentID
from ray.serve._private.constants import (
    SERVE_CONTROLLER_NAME,
    SERVE_DEPLOYMENT_ACTOR_PREFIX,
    SERVE_NAMESPACE,
)
from ray.serve._private.deployment_scoped_actor_utils import (
    get_deployment_scoped_actor_name,
)
from ray.serve.config import RequestRouterConfig

PREFIX_ROUTER = (
    "ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router:"
    "PrefixCacheAffinityRouter"
)
APP = "demo_llm"
MODEL = "FakeLLM"
TREE = get_deployment_scoped_actor_name(
    DeploymentID(name=MODEL, app_name=APP), "prefix-tree"
)


@dataclass
class CompletionRequest:
    """Stand-in for an OpenAI completion request: the router reads `prompt`."""

    prompt: str


@serve.deployment(ray_actor_options={"num_cpus": 0})
class FakeLLM:
    """A trivial async "engine": answers with the id of the replica it ran on."""

    async def __call__(self, request: CompletionRequest) -> str:
        await asyncio.sleep(0.002)
        return serve.get_replica_context().replica_id.unique_id


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Ingress:
    """The app's entry point; its replicas hold the routers of the model."""

    def __init__(self, llm):
        self._llm = llm

    async def __call__(self, prompt: str) -> str:
        return await self._llm.remote(CompletionRequest(prompt=prompt))


def build_app(num_replicas: int):
    llm = FakeLLM.options(
        name=MODEL,
        num_replicas=num_replicas,
        request_router_config=RequestRouterConfig(request_router_class=PREFIX_ROUTER),
    ).bind()
    return Ingress.bind(llm)


def make_prefixes(num_prefixes: int, prefix_chars: int) -> List[str]:
    return [
        (f"system prompt {p}: " + "You are a helpful assistant. " * 200)[:prefix_chars]
        for p in range(num_prefixes)
    ]


class LoadGenerator:
    """Closed-loop load in a background thread; records every request."""

    def __init__(self, handle, prefixes: List[str], concurrency: int):
        self._handle = handle
        self._prefixes = prefixes
        self._concurrency = concurrency
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.records: List[Dict] = []
        self.phase = "start"
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self):
        asyncio.run(self._main())

    async def _main(self):
        counter = iter(range(10**9))

        async def worker():
            while not self._stop.is_set():
                i = next(counter)
                prefix = i % len(self._prefixes)
                start = time.time()
                try:
                    replica = await asyncio.wait_for(
                        self._handle.remote(self._prefixes[prefix] + f" q{i}"), 30
                    )
                    ok, error = True, None
                except Exception as e:  # noqa: BLE001 - every outcome counts
                    replica, ok, error = None, False, type(e).__name__
                    await asyncio.sleep(0.05)
                with self._lock:
                    self.records.append(
                        {
                            "start": start,
                            "end": time.time(),
                            "prefix": prefix,
                            "ok": ok,
                            "replica": replica,
                            "error": error,
                            "phase": self.phase,
                        }
                    )

        await asyncio.gather(*(worker() for _ in range(self._concurrency)))

    def snapshot(self, since: float) -> List[Dict]:
        with self._lock:
            return [r for r in self.records if r["end"] >= since]


def affinity(records: List[Dict]) -> Optional[float]:
    """Share of each prefix's requests that went to its most frequent replica."""
    by_prefix = collections.defaultdict(collections.Counter)
    for r in records:
        if r["ok"]:
            by_prefix[r["prefix"]][r["replica"]] += 1
    total = sum(sum(c.values()) for c in by_prefix.values())
    if not total:
        return None
    return sum(c.most_common(1)[0][1] for c in by_prefix.values()) / total


def serve_actor_names() -> List[str]:
    return [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == SERVE_NAMESPACE
    ]


def deployment_actor_names() -> List[str]:
    return [
        n for n in serve_actor_names() if n.startswith(SERVE_DEPLOYMENT_ACTOR_PREFIX)
    ]


def tree_actor_id() -> Optional[str]:
    try:
        return ray.get_actor(TREE, namespace=SERVE_NAMESPACE)._actor_id.hex()
    except ValueError:
        return None


def wait_until(predicate, timeout_s: float, interval_s: float = 0.1) -> bool:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if predicate():
                return True
        except Exception:
            pass
        time.sleep(interval_s)
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Demo:
    def __init__(self, args):
        self.args = args
        self.events: List[Dict] = []
        self.recovery: Dict[str, Optional[float]] = {}
        self.load: Optional[LoadGenerator] = None

    def log(self, msg: str) -> None:
        print(msg, flush=True)

    def mark(self, name: str) -> float:
        t = time.time()
        self.events.append({"time": t, "event": name})
        if self.load is not None:
            self.load.phase = name
        return t

    def watch(self, seconds: float, label: str) -> None:
        """Let the load run, printing one progress line per second."""
        end = time.time() + seconds
        while time.time() < end:
            time.sleep(min(1.0, max(0.0, end - time.time())))
            window = self.load.snapshot(time.time() - 1.0)
            ok = sum(r["ok"] for r in window)
            failed = len(window) - ok
            aff = affinity(window)
            tree = tree_actor_id()
            self.log(
                f"  [{label:<16}] {ok:4d} ok/s  {failed:3d} failed/s  "
                f"affinity {'-' if aff is None else f'{aff:.2f}'}  "
                f"tree {'-' if tree is None else tree[:8]}"
            )

    def affinity_back(self, since: float) -> bool:
        window = [r for r in self.load.snapshot(since) if r["start"] >= since]
        recent = [r for r in window if r["end"] >= time.time() - 1.0]
        a = affinity(recent)
        return len(recent) >= 5 and a is not None and a >= 0.95

    def print_status(self, dashboard: Optional[str]) -> None:
        status = serve.status().applications[APP].deployments[MODEL]
        self.log("  serve.status() deployment_actors of FakeLLM:")
        for name, info in status.deployment_actors.items():
            self.log(
                f"    {name}: state={info['state']} actor_id="
                f"{(info['actor_id'] or '-')[:12]} node={(info['node_id'] or '-')[:12]}"
                f" restarts={info['restarts']} created_by={info['created_by']}"
            )
        if dashboard:
            self.log(f"  (also: serve status -a {dashboard})")

    def run(self) -> Dict:
        args = self.args
        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        prefixes = make_prefixes(args.prefixes, args.prefix_chars)
        self.log(f"deploying app '{APP}': Ingress -> {MODEL} x{args.replicas} ...")
        handle = serve.run(build_app(args.replicas), name=APP, route_prefix=None)
        # Warm up: the first request creates the ingress' router, which gets the
        # prefix tree from the controller (a new actor process).
        t = time.time()
        for i, prefix in enumerate(prefixes):
            handle.remote(prefix + f" warmup {i}").result(timeout_s=60)
        self.log(f"  app answers; warm-up took {time.time() - t:.1f} s")
        self.load = LoadGenerator(handle, prefixes, args.concurrency)
        self.mark("baseline")
        self.load.start()
        self.log(f"\nphase 1: baseline load ({args.concurrency} concurrent callers)")
        self.watch(args.phase_s, "baseline")
        self.print_status(args.dashboard)

        # Replica kill.
        replicas = [
            n
            for n in serve_actor_names()
            if n.startswith(f"SERVE_REPLICA::{APP}#{MODEL}")
        ]
        victim = replicas[0]
        self.log(f"\nphase 2: killing replica {victim.split('#')[-1]}")
        t = self.mark("replica kill")
        ray.kill(ray.get_actor(victim, namespace=SERVE_NAMESPACE), no_restart=True)
        replaced = wait_until(
            lambda: len(
                [
                    n
                    for n in serve_actor_names()
                    if n.startswith(f"SERVE_REPLICA::{APP}#{MODEL}") and n != victim
                ]
            )
            >= args.replicas
            and serve.status().applications[APP].deployments[MODEL].status == "HEALTHY",
            60,
        )
        self.recovery["replica replaced_s"] = time.time() - t if replaced else None
        self.watch(args.phase_s, "replica kill")

        # Controller kill.
        tree_before = tree_actor_id()
        self.log("\nphase 3: killing the Serve controller")
        t = self.mark("controller kill")
        ray.kill(controller, no_restart=False)
        back = wait_until(
            lambda: ray.get(controller.check_alive.remote(), timeout=2) is None, 60
        )
        self.recovery["controller back_s"] = time.time() - t if back else None
        self.watch(args.phase_s, "controller kill")
        same_tree = tree_actor_id() == tree_before
        self.log(f"  tree is the same actor after the controller restart: {same_tree}")

        # Tree kill.
        self.log("\nphase 4: killing the prefix tree actor")
        old_tree = tree_actor_id()
        t = self.mark("tree kill")
        ray.kill(ray.get_actor(TREE, namespace=SERVE_NAMESPACE), no_restart=True)
        recreated = wait_until(lambda: tree_actor_id() not in (None, old_tree), 60)
        self.recovery["tree recreated_s"] = time.time() - t if recreated else None
        restored = wait_until(lambda: self.affinity_back(t + 0.01), 60, 0.2)
        self.recovery["affinity restored_s"] = time.time() - t if restored else None
        self.watch(args.phase_s, "tree kill")
        self.print_status(args.dashboard)

        self.load.stop()
        self.mark("end of load")

        # Delete and shut down.
        self.log("\nphase 5: serve.delete(app)")
        t = time.time()
        serve.delete(APP)
        gone = wait_until(lambda: tree_actor_id() is None, 60)
        self.recovery["tree gone after delete_s"] = time.time() - t if gone else None
        left_after_delete = deployment_actor_names()
        self.log(f"  deployment actors left after delete: {len(left_after_delete)}")
        self.log("\nphase 6: serve.shutdown()")
        serve.shutdown()
        left_after_shutdown = deployment_actor_names()
        self.log(f"  deployment actors left after shutdown: {len(left_after_shutdown)}")
        return {
            "same_tree_after_controller_restart": same_tree,
            "deployment_actors_left_after_delete": left_after_delete,
            "deployment_actors_left_after_shutdown": left_after_shutdown,
        }


def summarize(demo: Demo, extra: Dict) -> Dict:
    records = demo.load.records
    phases = []
    for name in ["baseline", "replica kill", "controller kill", "tree kill"]:
        rs = [r for r in records if r["phase"] == name]
        if not rs:
            continue
        span = max(r["end"] for r in rs) - min(r["start"] for r in rs)
        phases.append(
            {
                "phase": name,
                "requests": len(rs),
                "failed": sum(not r["ok"] for r in rs),
                "req_per_s": len(rs) / span if span > 0 else 0.0,
                "affinity": affinity(rs),
                "errors": dict(
                    collections.Counter(r["error"] for r in rs if not r["ok"])
                ),
            }
        )
    return {
        "requests": len(records),
        "failed": sum(not r["ok"] for r in records),
        "phases": phases,
        "recovery_s": demo.recovery,
        **extra,
    }


def print_report(summary: Dict) -> None:
    print("\n=== demo report ===")
    print(f"requests: {summary['requests']}  failed: {summary['failed']}")
    print(f"{'phase':<16} {'requests':>8} {'failed':>7} {'req/s':>7} {'affinity':>8}")
    for p in summary["phases"]:
        aff = "-" if p["affinity"] is None else f"{p['affinity']:.3f}"
        print(
            f"{p['phase']:<16} {p['requests']:>8} {p['failed']:>7} "
            f"{p['req_per_s']:>7.1f} {aff:>8}"
        )
    print("recovery:")
    for k, v in summary["recovery_s"].items():
        print(f"  {k:<26} {'not within 60 s' if v is None else f'{v:.2f} s'}")
    print(
        "tree same actor after controller restart: "
        f"{summary['same_tree_after_controller_restart']}"
    )
    print(
        "deployment actors left behind: after delete "
        f"{len(summary['deployment_actors_left_after_delete'])}, after shutdown "
        f"{len(summary['deployment_actors_left_after_shutdown'])}"
    )


def write_png(demo: Demo, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed; no PNG written")
        return False
    records = demo.load.records
    t0 = min(r["start"] for r in records)
    horizon = int(max(r["end"] for r in records) - t0) + 1
    ok, failed = [0] * horizon, [0] * horizon
    for r in records:
        sec = int(r["end"] - t0)
        (ok if r["ok"] else failed)[sec] += 1
    per_second = collections.defaultdict(list)
    for r in records:
        per_second[int(r["end"] - t0)].append(r)
    aff = [affinity(per_second[sec]) for sec in range(horizon)]
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(range(horizon), ok, label="ok req/s", color="tab:blue")
    ax.bar(range(horizon), failed, label="failed req/s", color="tab:red")
    ax2 = ax.twinx()
    ax2.plot(
        range(horizon),
        [float("nan") if a is None else a for a in aff],
        label="affinity",
        color="tab:green",
        linestyle=":",
    )
    ax2.set_ylim(0, 1.05)
    ax2.set_ylabel("prefix affinity (per second)")
    for e in demo.events:
        x = e["time"] - t0
        if 0 <= x <= horizon:
            ax.axvline(x, color="gray", linestyle="--", linewidth=1)
            ax.text(
                x,
                0.02,
                " " + e["event"],
                rotation=90,
                va="bottom",
                ha="right",
                transform=ax.get_xaxis_transform(),
            )
    ax.set_xlabel("seconds")
    ax.set_ylabel("requests per second")
    ax.set_title("PrefixCacheAffinityRouter on deployment-scoped actors under faults")
    ax.legend(loc="upper left")
    ax2.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=None, help="existing Ray cluster")
    parser.add_argument("--phase-s", type=float, default=6.0, help="seconds per phase")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--prefixes", type=int, default=8)
    parser.add_argument("--prefix-chars", type=int, default=2000)
    parser.add_argument("--http-port", type=int, default=0, help="0: a free port")
    parser.add_argument("--json", default="out/demo/report.json")
    parser.add_argument("--png", default="out/demo/timeline.png")
    args = parser.parse_args(argv)

    started_ray = args.address is None
    if started_ray:
        # Recreate dead deployment actors quickly in the demo.
        os.environ.setdefault("RAY_SERVE_DEPLOYMENT_ACTOR_HEALTH_CHECK_PERIOD_S", "1")
        dash_port = free_port()
        ctx = ray.init(
            address="local",
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            dashboard_port=dash_port,
            log_to_driver=False,
        )
        args.dashboard = f"http://{ctx.dashboard_url}" if ctx.dashboard_url else None
    else:
        ray.init(address=args.address, log_to_driver=False)
        args.dashboard = None
    demo = Demo(args)
    try:
        serve.start(
            http_options={"host": "127.0.0.1", "port": args.http_port or free_port()}
        )
        extra = demo.run()
    finally:
        if demo.load is not None:
            demo.load.stop()
        if started_ray:
            ray.shutdown()
    summary = summarize(demo, extra)
    print_report(summary)
    for path in (args.json, args.png):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(summary, f, indent=2)
    if write_png(demo, args.png):
        print(f"timeline: {args.png}")
    print(f"report: {args.json}")
    clean = (
        not summary["deployment_actors_left_after_delete"]
        and not summary["deployment_actors_left_after_shutdown"]
    )
    return 0 if clean and summary["requests"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
