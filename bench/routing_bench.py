"""Prefix-aware router vs power of two, through Serve handles (fork tooling).

Runs under stock Ray 2.60.0 and the patched wheel alike (``bench/run.py`` runs
both and prints the ratios). Workloads, each on one local cluster:

* ``cache``: a cache-bound simulated engine (``bench/cache_sim.py``) with
  uniform, Zipf and single-shared-prefix prompt mixes at 8 and 32 callers.
  req/s, p50/p99, engine hit rate against the oracle, busiest replica; where
  the latency goes (queued for a slot, in the engine, outside it); and the
  ceiling, the shared mix's req/s: what perfect affinity and balance reach
  on this machine.
* ``engine_bound``: the cache workload with every engine time scaled up
  (``--engine-bound-scale``, 4x), so that the engine, not this machine's CPU,
  is the bottleneck.
* ``echo``: a replica that answers at once, so the router's own cost shows:
  prefix/pow2 req/s, and the *neighbour cost*: power-of-two traffic beside
  prefix traffic in the same process (one router event loop) against its solo
  throughput.
* ``treekill``: the prefix tree's actor is killed under load; per-second
  affinity and failed requests.
* ``first``: latency of the first request after ``serve.run`` of a new app.

Windows of the two routers alternate (ABBA) so drift lands on both.
"""

import argparse
import asyncio
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import cache_sim, toolkit  # noqa: E402

import ray  # noqa: E402
from ray import serve  # noqa: E402
from ray.serve._private.constants import SERVE_NAMESPACE  # noqa: E402

PREFIX_ROUTER = (
    "ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router:"
    "PrefixCacheAffinityRouter"
)
ROUTERS = {"pow2": None, "prefix": PREFIX_ROUTER}
MIXES = {
    "uniform": dict(num_prefixes=16, skew=0.0),
    "zipf": dict(num_prefixes=16, skew=1.2),
    "shared": dict(num_prefixes=1, skew=0.0),
}


class Echo:
    """Answers at once: the request costs only Serve's and the router's work."""

    def __init__(self):
        self._replica = serve.get_replica_context().replica_id.to_full_id_str()

    async def __call__(self, request) -> dict:
        return {
            "replica": self._replica,
            "hit": 0,
            "blocks": 0,
            "wait_s": 0.0,
            "engine_s": 0.0,
        }


def echo_app(name: str, router):
    return cache_sim.deployment(name, router, config=None, model=Echo)


async def window(handle, mix, callers: int, seconds: float):
    async def call(c: int, i: int) -> toolkit.Record:
        request = mix.next()
        answer = await handle.remote(request)
        extra = {k: answer[k] for k in ("hit", "blocks", "wait_s", "engine_s")}
        return toolkit.Record(0, 0, True, request.key, answer["replica"], extra)

    return await toolkit.closed_loop(call, callers, seconds)


def figures(records: List[toolkit.Record], seconds: float, oracle: float) -> Dict:
    out = toolkit.summarize(records, seconds)
    ok = [r for r in records if r.ok]
    blocks = sum(r.extra["blocks"] for r in ok)
    out["hit_rate"] = sum(r.extra["hit"] for r in ok) / blocks if blocks else 0.0
    out["hit_vs_oracle"] = out["hit_rate"] / oracle if oracle else float("nan")
    # Where the latency goes: queued for an engine slot, in the engine in all
    # (queue, prefill, decode), and outside it (Serve, the router, the CPU).
    n = len(ok) or 1
    out["mean_ms"] = sum(r.latency_s for r in ok) / n * 1000
    out["engine_wait_ms"] = sum(r.extra["wait_s"] for r in ok) / n * 1000
    out["engine_ms"] = sum(r.extra["engine_s"] for r in ok) / n * 1000
    out["outside_engine_ms"] = out["mean_ms"] - out["engine_ms"]
    return out


async def compare(handles, mix_args, callers, args, oracle_of=None) -> Dict:
    """ABBA windows of both routers on one mix; their figures and ratios."""
    mix = cache_sim.PromptMix(**mix_args, seed=callers)
    oracle = oracle_of(mix) if oracle_of else 0.0
    for name in ROUTERS:  # warm up trees and caches
        await window(handles[name], mix, callers, args.warmup_s)
    records = {name: [] for name in ROUTERS}
    order = ["pow2", "prefix", "prefix", "pow2"] * max(1, args.rounds // 2)
    for name in order:
        records[name] += await window(handles[name], mix, callers, args.window_s)
    row = {
        name: figures(records[name], args.window_s * order.count(name), oracle)
        for name in ROUTERS
    }
    row["ratio_req_s"] = row["prefix"]["req_s"] / row["pow2"]["req_s"]
    row["ratio_p50"] = row["prefix"]["p50_ms"] / row["pow2"]["p50_ms"]
    row["ratio_p99"] = row["prefix"]["p99_ms"] / row["pow2"]["p99_ms"]
    row["oracle_hit_rate"] = oracle
    return row


def deploy(kind: str, config: cache_sim.EngineConfig) -> Dict:
    handles = {}
    for name, router in ROUTERS.items():
        app = (
            echo_app(f"Echo_{name}", router)
            if kind == "echo"
            else cache_sim.deployment(f"Model_{name}", router, config=config)
        )
        handles[name] = serve.run(app, name=f"{kind}_{name}", route_prefix=None)
    return handles


async def cache_workload(args, scale: float = 1.0) -> Dict:
    """The cache-bound engine; ``scale`` multiplies its decode and prefill time."""
    label = "cache" if scale == 1 else f"cache x{scale:g}"
    config = cache_sim.EngineConfig(
        decode_ms=cache_sim.EngineConfig.decode_ms * scale,
        prefill_ms_per_block=args.prefill_ms_per_block * scale,
    )
    handles = deploy("cache", config)
    results = {}
    for mix_name in args.mixes:
        for callers in args.callers:
            row = await compare(
                handles,
                MIXES[mix_name],
                callers,
                args,
                oracle_of=lambda mix: mix.oracle_hit_rate(config.block_chars),
            )
            results[f"{mix_name}/{callers}"] = row
            p, q = row["prefix"], row["pow2"]
            print(
                f"{label} {mix_name:8}{callers:3} callers: prefix/pow2 req/s "
                f"{row['ratio_req_s']:.2f}x, p99 {row['ratio_p99']:.2f}x, hit "
                f"{p['hit_rate']:.2f}/{q['hit_rate']:.2f} (oracle "
                f"{row['oracle_hit_rate']:.3f}), busiest {p['busiest_share']:.0%}/"
                f"{q['busiest_share']:.0%}",
                flush=True,
            )
            print(
                "    mean ms queued for a slot / in the engine / outside it: "
                + ", ".join(
                    f"{name} {r['engine_wait_ms']:.1f}/{r['engine_ms']:.1f}/"
                    f"{r['outside_engine_ms']:.1f}"
                    for name, r in (("prefix", p), ("pow2", q))
                ),
                flush=True,
            )
    ceilings(results, label)
    for name in ROUTERS:
        serve.delete(f"cache_{name}")
    return results


async def engine_bound_workload(args) -> Dict:
    """The cache workload with an engine ``--engine-bound-scale`` times slower.

    On a small machine the cache workload's requests spend about as long in
    Serve and the router as in the engine, so the CPU caps what any router
    gets (the ceiling). With every engine time scaled up, the engine is the
    bottleneck, as it is on a GPU, and the ratios show the routing alone.
    """
    return await cache_workload(args, scale=args.engine_bound_scale)


def ceilings(results: Dict, label: str = "cache") -> None:
    """What a perfect router could get on this machine, from the shared mix.

    Under one shared prompt both routers hit the cache at the oracle's rate
    and split the load evenly, so the shared mix's req/s at a caller count is
    what any router reaches with perfect affinity and balance, with this
    engine, Serve's own overhead and this machine's CPU. Against power of two
    on another mix it is the highest prefix/pow2 ratio that mix can show.
    """
    for key, row in results.items():
        mix, callers = key.split("/")
        shared = results.get(f"shared/{callers}")
        if mix == "shared" or shared is None:
            continue
        best = max(shared[name]["req_s"] for name in ROUTERS)
        row["ceiling_req_s"] = best
        row["ceiling_ratio_req_s"] = best / row["pow2"]["req_s"]
        print(
            f"{label} {key:11} ceiling (perfect cache, the shared mix): "
            f"{best:.0f} req/s, {row['ceiling_ratio_req_s']:.2f}x pow2; prefix "
            f"reaches {row['prefix']['req_s'] / best:.0%} of it",
            flush=True,
        )


async def echo_workload(args) -> Dict:
    handles = deploy("echo", None)
    results = {}
    for callers in args.callers:
        row = await compare(handles, MIXES["uniform"], callers, args)
        results[f"uniform/{callers}"] = row
        print(
            f"echo  uniform {callers:3} callers: prefix/pow2 req/s "
            f"{row['ratio_req_s']:.2f}x ({row['prefix']['req_s']:.0f} vs "
            f"{row['pow2']['req_s']:.0f})",
            flush=True,
        )
    # Neighbour cost: pow2 traffic beside as much prefix traffic, against
    # beside as much pow2 traffic (the same load on the shared router loop).
    callers = max(args.callers)
    mix = cache_sim.PromptMix(**MIXES["uniform"], seed=7)
    beside: Dict[str, List[toolkit.Record]] = {name: [] for name in ROUTERS}
    for neighbour in ["pow2", "prefix", "prefix", "pow2"] * max(1, args.rounds // 4):
        both = await asyncio.gather(
            window(handles["pow2"], mix, callers, args.window_s),
            window(handles[neighbour], mix, callers, args.window_s),
        )
        beside[neighbour] += both[0]
    seconds = args.window_s * 2 * max(1, args.rounds // 4)
    req_s = {n: toolkit.summarize(rs, seconds)["req_s"] for n, rs in beside.items()}
    results["neighbour"] = {
        "pow2_req_s_beside_pow2": req_s["pow2"],
        "pow2_req_s_beside_prefix": req_s["prefix"],
        "ratio": req_s["prefix"] / req_s["pow2"],
    }
    print(
        f"echo  neighbour: pow2 traffic beside prefix traffic gets "
        f"{results['neighbour']['ratio']:.2f}x what it gets beside pow2 traffic",
        flush=True,
    )
    for name in ROUTERS:
        serve.delete(f"echo_{name}")
    return results


def kill_tree(app: str, deployment: str) -> str:
    """Kill the deployment's prefix tree actor, wherever this Ray keeps it."""
    runtime = f"SERVE_DEPLOYMENT_ACTOR::{app}::{deployment}::prefix-tree"
    for name, namespace in [
        (runtime, SERVE_NAMESPACE),  # the patched wheel
        ("LlmPrefixTreeActor", f"{SERVE_NAMESPACE}::{app}::{deployment}"),  # stock
    ]:
        try:
            toolkit.kill_actor(name, namespace)
            return name
        except ValueError:
            continue
    raise RuntimeError(f"no prefix tree actor for {app}/{deployment}")


async def treekill_workload(args) -> Dict:
    config = cache_sim.EngineConfig(prefill_ms_per_block=args.prefill_ms_per_block)
    handle = serve.run(
        cache_sim.deployment("Model", PREFIX_ROUTER, config=config),
        name="treekill",
        route_prefix=None,
    )
    mix = cache_sim.PromptMix(**MIXES["uniform"], seed=3)
    await window(handle, mix, 16, args.warmup_s)
    t0 = time.monotonic()

    async def kill_later():
        await asyncio.sleep(args.kill_at_s)  # the fault's moment in the timeline
        return kill_tree("treekill", "Model")

    records, killed = await asyncio.gather(
        window(handle, mix, 16, args.kill_at_s + args.after_kill_s), kill_later()
    )
    timeline = toolkit.per_second(records, t0)
    after = [s for s in timeline if s["t"] >= int(args.kill_at_s)]
    result = {
        "killed": killed,
        "failed": sum(not r.ok for r in records),
        "affinity_before": toolkit.affinity(
            r for r in records if r.start - t0 < args.kill_at_s
        ),
        "min_affinity_after": min(s["affinity"] for s in after),
        "per_second": timeline,
    }
    print(
        f"treekill: affinity before {result['affinity_before']:.2f}, lowest "
        f"second after the kill {result['min_affinity_after']:.2f}, failed "
        f"{result['failed']}",
        flush=True,
    )
    serve.delete("treekill")
    return result


async def first_request_workload(args) -> Dict:
    mix = cache_sim.PromptMix(num_prefixes=1, seed=5)
    results = {}
    for name, router in ROUTERS.items():
        latencies = []
        for i in range(args.first_repeats):
            app = f"first_{name}_{i}"
            handle = serve.run(echo_app("Echo", router), name=app, route_prefix=None)
            start = time.monotonic()
            await handle.remote(mix.next())
            latencies.append(time.monotonic() - start)
            serve.delete(app)
        results[name] = {"median_s": statistics.median(latencies), "all_s": latencies}
    print(
        f"first request: prefix {results['prefix']['median_s'] * 1000:.0f} ms, "
        f"pow2 {results['pow2']['median_s'] * 1000:.0f} ms (median of "
        f"{args.first_repeats})",
        flush=True,
    )
    return results


WORKLOADS = {
    "cache": cache_workload,
    "engine_bound": engine_bound_workload,
    "echo": echo_workload,
    "treekill": treekill_workload,
    "first": first_request_workload,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS))
    parser.add_argument("--mixes", nargs="+", default=list(MIXES))
    parser.add_argument("--callers", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--window-s", type=float, default=5.0)
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--prefill-ms-per-block", type=float, default=1.0)
    parser.add_argument("--engine-bound-scale", type=float, default=4.0)
    parser.add_argument("--kill-at-s", type=float, default=4.0)
    parser.add_argument("--after-kill-s", type=float, default=8.0)
    parser.add_argument("--first-repeats", type=int, default=3)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    results = {"ray": {"version": ray.__version__, "commit": ray.__commit__}}
    results["engine_bound_scale"] = args.engine_bound_scale
    with toolkit.local_serve(num_cpus=8):
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
        for name in args.workloads:
            results[name] = asyncio.run(WORKLOADS[name](args))
    toolkit.write_json(args.output, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
