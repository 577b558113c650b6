"""Routing benchmark: prefix-aware router vs power-of-two on one deployment.

Runs under any Ray 2.60.0 (stock or patched): 2 replicas of a trivial async
model, driven closed-loop through a DeploymentHandle at several concurrency
levels, with prompts that share one of a few long prefixes plus a unique
suffix. Both routers' apps run side by side and their measurement windows
alternate (--rounds per level, ABBA order), so that drift on a shared machine
affects both alike. Writes requests/s, p50/p99 latency and the affinity rate
per router and concurrency to ``TEST_OUTPUT_JSON`` (or --output).
"""

import argparse
import asyncio
import collections
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Dict, List

import bench_common

import ray
from ray import cloudpickle, serve
from ray.serve.config import RequestRouterConfig

if __name__ != "__main__":
    # Imported (by another workload, or by ci/bench.py running several in one
    # process): replicas cannot import this file, so ship its classes by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])

PREFIX_ROUTER = (
    "ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router:"
    "PrefixCacheAffinityRouter"
)


@dataclass
class Prompt:
    """What the prefix router reads: an object with a `prompt` attribute."""

    prompt: str


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
class TrivialModel:
    async def __call__(self, request: Prompt) -> str:
        return serve.get_replica_context().replica_id.unique_id


def percentile(values: List[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


def affinity_rate(pairs: List[tuple]) -> float:
    """Share of each prefix's requests that went to its most frequent replica."""
    by_prefix = collections.defaultdict(collections.Counter)
    for prefix, replica in pairs:
        by_prefix[prefix][replica] += 1
    total = sum(sum(c.values()) for c in by_prefix.values())
    top = sum(c.most_common(1)[0][1] for c in by_prefix.values())
    return top / total if total else 0.0


async def closed_loop(handle, concurrency: int, duration_s: float, prompts) -> Dict:
    """One closed-loop window; returns its raw latencies and (prefix, replica)."""
    latencies, pairs, failures = [], [], 0
    counter = iter(range(10**9))
    deadline = time.monotonic() + duration_s

    async def caller():
        nonlocal failures
        while time.monotonic() < deadline:
            i = next(counter)
            prefix = i % len(prompts)
            start = time.monotonic()
            try:
                replica = await handle.remote(Prompt(prompts[prefix] + f" #{i}"))
            except Exception:
                failures += 1
                continue
            latencies.append(time.monotonic() - start)
            pairs.append((prefix, replica))

    start = time.monotonic()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return {
        "elapsed_s": time.monotonic() - start,
        "latencies": latencies,
        "pairs": pairs,
        "failed": failures,
    }


def summarize(concurrency: int, windows: List[Dict]) -> Dict:
    """Requests/s, p50/p99 and affinity over all windows of one router and level."""
    latencies = [x for w in windows for x in w["latencies"]]
    pairs = [x for w in windows for x in w["pairs"]]
    elapsed = sum(w["elapsed_s"] for w in windows)
    return {
        "concurrency": concurrency,
        "rounds": len(windows),
        "requests": len(latencies),
        "failed": sum(w["failed"] for w in windows),
        "req_per_s": len(latencies) / elapsed if elapsed else 0.0,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "affinity": affinity_rate(pairs),
        # Per-window rates, to see the spread the aggregate hides.
        "window_req_per_s": [
            round(len(w["latencies"]) / w["elapsed_s"], 1) for w in windows
        ],
    }


def make_prompts(prefixes: int = 8, prefix_chars: int = 2000) -> List[str]:
    """The shared prefixes: ``prefixes`` distinct strings of ``prefix_chars``."""
    return [
        (f"[{p}] " + "The quick brown fox jumps over the lazy dog. " * 60)[
            :prefix_chars
        ]
        for p in range(prefixes)
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="alternating windows per router and level (--duration-s in all)",
    )
    parser.add_argument("--prefixes", type=int, default=8)
    parser.add_argument("--prefix-chars", type=int, default=2000)
    parser.add_argument("--routers", nargs="+", default=["pow2", "prefix"])
    parser.add_argument("--output", default=os.environ.get("TEST_OUTPUT_JSON"))
    parser.add_argument("--smoke", action="store_true", help="seconds, not minutes")
    args = parser.parse_args(argv)
    if args.smoke:
        args.duration_s, args.warmup_s, args.rounds = 2.0, 1.0, 2

    prompts = make_prompts(args.prefixes, args.prefix_chars)
    results = {"ray_version": ray.__version__, "runs": []}
    with bench_common.local_serve():
        from importlib.metadata import version

        results["distribution_version"] = version("ray")
        # Both apps run side by side, and their windows alternate (ABBA within
        # each level), so that drift on a shared machine (other processes,
        # caches, the order of runs) lands on both routers alike.
        handles = {}
        for router in args.routers:
            options = {"name": "Model", "num_replicas": 2}
            if router == "prefix":
                options["request_router_config"] = RequestRouterConfig(
                    request_router_class=PREFIX_ROUTER
                )
            handles[router] = serve.run(
                TrivialModel.options(**options).bind(),
                name=f"bench_{router}",
                route_prefix=None,
            )
        for router in args.routers:
            asyncio.run(closed_loop(handles[router], 8, args.warmup_s, prompts))
        window_s = args.duration_s / args.rounds
        for c in args.concurrency:
            windows = {router: [] for router in args.routers}
            for r in range(args.rounds):
                order = args.routers if r % 2 == 0 else args.routers[::-1]
                for router in order:
                    windows[router].append(
                        asyncio.run(closed_loop(handles[router], c, window_s, prompts))
                    )
            for router in args.routers:
                run = summarize(c, windows[router])
                run["router"] = router
                results["runs"].append(run)
                print(json.dumps(run), flush=True)
        for router in args.routers:
            serve.delete(f"bench_{router}")
    bench_common.write_json(args.output, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
