"""Demo: Serve LLM's prefix-aware router on the patched Ray wheel.

An LLM-like Serve app (an ingress deployment in front of a "model" deployment
routed by ``PrefixCacheAffinityRouter``; a trivial async model stands in for
the engine) gets requests whose prompts share a few long prefixes. The report
says how many requests ran, how many failed, and which replica served each
prefix (prefix affinity).

Usage:
    python demo/prefix_router_demo.py [--requests 400] [--concurrency 8]
        [--address ray://... | auto]
"""

import argparse
import asyncio
import collections
import json
import socket
import sys
import time
from dataclasses import dataclass
from typing import Dict, List

import ray
from ray import serve
from ray.serve.config import RequestRouterConfig

PREFIX_ROUTER = (
    "ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router:"
    "PrefixCacheAffinityRouter"
)
APP = "demo_llm"


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
        name="FakeLLM",
        num_replicas=num_replicas,
        request_router_config=RequestRouterConfig(request_router_class=PREFIX_ROUTER),
    ).bind()
    return Ingress.bind(llm)


def make_prompts(n: int, num_prefixes: int, prefix_chars: int) -> List[tuple]:
    prefixes = [
        (f"system prompt {p}: " + "You are a helpful assistant. " * 200)[:prefix_chars]
        for p in range(num_prefixes)
    ]
    return [(i % num_prefixes, prefixes[i % num_prefixes] + f" q{i}") for i in range(n)]


async def drive(handle, prompts: List[tuple], concurrency: int) -> List[Dict]:
    queue = list(enumerate(prompts))
    results: List[Dict] = []

    async def worker():
        while queue:
            i, (prefix, prompt) = queue.pop(0)
            start = time.monotonic()
            try:
                replica = await handle.remote(prompt)
                ok, err = True, None
            except Exception as e:  # noqa: BLE001 - every outcome is recorded
                replica, ok, err = None, False, repr(e)
            results.append(
                {
                    "i": i,
                    "prefix": prefix,
                    "ok": ok,
                    "replica": replica,
                    "error": err,
                    "latency_s": time.monotonic() - start,
                }
            )

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sorted(results, key=lambda r: r["i"])


def affinity(results: List[Dict]) -> float:
    """Share of each prefix's requests that went to its most frequent replica."""
    by_prefix = collections.defaultdict(collections.Counter)
    for r in results:
        if r["ok"]:
            by_prefix[r["prefix"]][r["replica"]] += 1
    total = sum(sum(c.values()) for c in by_prefix.values())
    top = sum(c.most_common(1)[0][1] for c in by_prefix.values())
    return top / total if total else 0.0


def report(results: List[Dict], elapsed: float) -> Dict:
    ok = sum(r["ok"] for r in results)
    failed = len(results) - ok
    by_prefix = collections.defaultdict(collections.Counter)
    for r in results:
        if r["ok"]:
            by_prefix[r["prefix"]][r["replica"]] += 1
    print("\n=== prefix-aware routing report ===")
    print(f"requests: {len(results)}  ok: {ok}  failed: {failed}")
    print(f"throughput: {len(results) / elapsed:.1f} req/s over {elapsed:.1f} s")
    print(f"prefix affinity: {affinity(results):.3f}")
    print("prefix  requests  replicas that served it")
    for prefix in sorted(by_prefix):
        counts = ", ".join(f"{rep}: {n}" for rep, n in by_prefix[prefix].most_common())
        print(f"{prefix:>6}  {sum(by_prefix[prefix].values()):>8}  {counts}")
    return {
        "requests": len(results),
        "ok": ok,
        "failed": failed,
        "affinity": affinity(results),
        "req_per_s": len(results) / elapsed,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=None, help="existing Ray cluster")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--prefixes", type=int, default=8)
    parser.add_argument("--prefix-chars", type=int, default=2000)
    parser.add_argument("--http-port", type=int, default=0, help="0: a free port")
    parser.add_argument("--json", default=None, help="also write the report here")
    args = parser.parse_args(argv)

    ray.init(address=args.address, include_dashboard=False, log_to_driver=False)
    try:
        port = args.http_port or free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        print(f"deploying app '{APP}' ({args.replicas} model replicas) ...")
        handle = serve.run(build_app(args.replicas), name=APP, route_prefix=None)
        prompts = make_prompts(args.requests, args.prefixes, args.prefix_chars)
        start = time.monotonic()
        results = asyncio.run(drive(handle, prompts, args.concurrency))
        summary = report(results, time.monotonic() - start)
        serve.delete(APP)
        serve.shutdown()
    finally:
        ray.shutdown()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0 if summary["failed"] == 0 and summary["requests"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
