"""Serve LLM's real OpenAI path: prefix-aware router vs power of two.

Deploys ``sim_llm.app.build_sim_openai_app`` twice on one local cluster (apps
``prefix`` and ``pow2`` under the route prefixes ``/prefix`` and ``/pow2`` of
one proxy, 2 replicas each) and measures, for the Ray of the running venv:

* first-request latency: ``serve.run`` returning -> first answered chat;
* an empty chat message against the prefix app (status, body, time or "hung");
  sent last, because stock 2.60.0's router raises there and may stay wedged;
* upstream's client (``python -m ray.llm._internal.serve.benchmark``) in rounds
  pow2, prefix, prefix, pow2 (same seed per pair), engine stats and prefix
  cache reset before each round.

Workload (client, rate mode): 4 req/s, ISL 1200 engine tokens, hit rate 0.75,
4 turns, OSL 24, shared system prompt ratio 1.0 (~414 shared system-prompt
tokens, 300 new user tokens per turn; mean prompt ~1090 tokens). Engine per
replica: 2 sequence slots (``max_num_seqs``), prefill 10 ms + 0.5 ms per
uncached prompt token, 20 ms per further output token (streamed 4 tokens a
chunk), 16-token blocks, 4096-block LRU, tokenizer ``build/sim-tokenizer``
(the client's, so lengths are engine tokens). A request holds a slot
~10 + 300 x 0.5 + 23 x 20 = 620 ms when its conversation is cached, ~810 ms
when only the system prompt is, so one replica carries at most ~3.2 req/s
< 4: piling everything onto one replica makes its queue grow all round long,
while two replicas run at ~60-80 % of their slots.

Throughput is measured from the client's saved per-request records
(completed requests / span from first start to last end), since its own
figure in rate mode is the offered load. Engine hit rate = cached / prompt
tokens over the whole round (warm-up included). Client output goes to
``<output without .json>/`` (logs and saved results), not the console.

    <venv>/bin/python bench/llm_bench.py --output out/bench/llm-<side>.json [--smoke]
"""

import argparse
import importlib.metadata
import json
import logging
import os
import subprocess
import sys
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # "PyTorch was not found"
warnings.filterwarnings("ignore", category=DeprecationWarning)
# Serve LLM warns "Could not import torch" when sim_llm imports it (below).
logging.getLogger("ray.llm").setLevel(logging.ERROR)

import fastapi  # noqa: E402
import httpx  # noqa: E402
from sim_llm.app import (  # noqa: E402
    build_sim_openai_app,
    fetch_sim_stats,
    sim_deployment_name,
)

from bench import toolkit  # noqa: E402

import ray  # noqa: E402
from ray import serve  # noqa: E402
from ray._common.test_utils import wait_for_condition  # noqa: E402
from ray.llm._internal.serve.utils.broadcast import broadcast  # noqa: E402

TOKENIZER = str(BENCH.parent / "build" / "sim-tokenizer")
MODEL = "sim-model"
ROUTERS = ("prefix", "pow2")
ENGINE = {
    "max_num_seqs": 2,
    "overhead_ms": 10.0,
    "prefill_ms_per_token": 0.5,
    "decode_ms_per_token": 20.0,
    "tokens_per_chunk": 4,
    "block_size": 16,
    "num_blocks": 4096,
    "tokenizer": TOKENIZER,
}
WORKLOAD = {
    "request-rate": 4.0,
    "isl": 1200,
    "hit-rate": 0.75,
    "num-turns": 4,
    "osl": 24,
    "shared-system-prompt-ratio": 1.0,
}
RUNS = {
    "full": {
        "duration": 40,
        "warm_up": 5,
        "rounds": ("pow2", "prefix", "prefix", "pow2"),
    },
    "smoke": {"duration": 12, "warm_up": 0, "rounds": ("pow2", "prefix")},
}


def chat(base: str, content: str, timeout: float) -> httpx.Response:
    """POST one non-streaming chat completion."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 4,
    }
    return httpx.post(f"{base}/v1/chat/completions", json=body, timeout=timeout)


def deploy(port: int) -> Dict[str, float]:
    """Deploy both apps; per router, seconds from serve.run to a first answer.

    ``serve.run_many`` returns once both apps run; the two first requests are
    then sent concurrently, so neither waits for the other.
    """
    serve.run_many(
        [
            serve.RunTarget(
                build_sim_openai_app(num_replicas=2, router=r, engine_config=ENGINE),
                name=r,
                route_prefix=f"/{r}",
            )
            for r in ROUTERS
        ]
    )
    start = time.perf_counter()

    def first_answer(router: str) -> float:
        base = f"http://127.0.0.1:{port}/{router}"
        # The proxy may learn a new route a moment after serve.run returns.
        wait_for_condition(
            lambda: chat(base, "Hello there.", 60).status_code == 200,
            timeout=60,
            retry_interval_ms=10,
        )
        return round(time.perf_counter() - start, 3)

    with ThreadPoolExecutor(len(ROUTERS)) as pool:
        return dict(zip(ROUTERS, pool.map(first_answer, ROUTERS)))


def empty_chat(base: str, timeout: float = 10.0) -> Dict[str, Any]:
    """An empty user message: status code and body excerpt, or "hung"."""
    start = time.perf_counter()
    try:
        response = chat(base, "", timeout)
        result = {"status": response.status_code, "body": response.text[:300]}
    except httpx.TimeoutException:
        result = {"status": "hung", "body": ""}
    result["seconds"] = round(time.perf_counter() - start, 3)
    return result


def reset_engines(router: str) -> None:
    """Zero the engine stats and empty the prefix caches of an app's replicas."""
    fetch_sim_stats(router, reset=True)
    handle = serve.get_deployment_handle(sim_deployment_name(MODEL), router)
    broadcast(handle, "reset_prefix_cache")


def run_client(base: str, seed: int, run: Dict, out_dir: Path, tag: str) -> Dict:
    """Run upstream's benchmark client against ``base``; return its saved result."""
    save = out_dir / f"{tag}.json"
    cmd = [sys.executable, "-m", "ray.llm._internal.serve.benchmark"]
    cmd += ["--base-url", base, "--model", MODEL, "--tokenizer", TOKENIZER]
    cmd += [f"--{k}={v}" for k, v in WORKLOAD.items()]
    cmd += [f"--duration={run['duration']}", f"--warm-up={run['warm_up']}"]
    cmd += [f"--seed={seed}", f"--save-result={save}"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TQDM_MININTERVAL": "5"}
    with open(out_dir / f"{tag}.log", "w") as log:
        log.write(" ".join(cmd) + "\n\n")
        log.flush()
        subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return json.loads(save.read_text())


def round_figures(saved: Dict, stats: List[Dict]) -> Dict[str, Any]:
    """Client latency/throughput and engine cache/placement figures of a round."""
    raw = saved["raw_metrics"]
    span_ms = max(m["start_time_ms"] + m["e2e_latency_ms"] for m in raw) - min(
        m["start_time_ms"] for m in raw
    )
    prompt = sum(s["prompt_tokens"] for s in stats)
    return {
        "requests": len(raw),
        "ttft_ms": [m["ttft_ms"] for m in raw],
        "span_s": span_ms / 1000,
        "output_tokens": sum(m["output_tokens"] for m in raw),
        "prompt_tokens": prompt,
        "cached_tokens": sum(s["hit_tokens"] for s in stats),
        "per_replica": {s["replica_id"]: s["requests"] for s in stats},
        "max_waiting": max(s["max_waiting"] for s in stats),
        "client_stats": saved["stats"],
    }


def summarize(rounds: List[Dict]) -> Dict[str, Any]:
    """Pool a router's rounds: TTFT percentiles, throughput, hit rate, placement."""
    ttft = [t for r in rounds for t in r["ttft_ms"]]
    span = sum(r["span_s"] for r in rounds)
    per_replica = Counter()
    for r in rounds:
        per_replica.update(r["per_replica"])
    prompt = sum(r["prompt_tokens"] for r in rounds)
    return {
        "ttft_p50_ms": round(toolkit.percentile(ttft, 50), 1),
        "ttft_p99_ms": round(toolkit.percentile(ttft, 99), 1),
        "requests_per_s": round(sum(r["requests"] for r in rounds) / span, 2),
        "output_tokens_per_s": round(sum(r["output_tokens"] for r in rounds) / span, 1),
        "engine_hit_rate": round(
            sum(r["cached_tokens"] for r in rounds) / prompt if prompt else 0.0, 3
        ),
        "requests_per_replica": sorted(per_replica.values(), reverse=True),
        "max_waiting": max(r["max_waiting"] for r in rounds),
        "rounds": [{k: v for k, v in r.items() if k != "ttft_ms"} for r in rounds],
    }


def print_table(result: Dict[str, Any]) -> None:
    print(
        f"Ray {result['ray_version']} ({result['ray_commit'][:8]}), "
        f"fastapi {result['fastapi_version']}"
    )
    row = "%-7s %9s %9s %6s %9s %6s %8s  %s"
    print(
        row
        % (
            "router",
            "TTFT p50",
            "TTFT p99",
            "req/s",
            "out tok/s",
            "hit",
            "1st req",
            "requests per replica",
        )
    )
    for name in ("pow2", "prefix"):
        r = result["routers"][name]
        print(
            row
            % (
                name,
                f"{r['ttft_p50_ms']:.0f}ms",
                f"{r['ttft_p99_ms']:.0f}ms",
                r["requests_per_s"],
                r["output_tokens_per_s"],
                r["engine_hit_rate"],
                f"{result['first_request_s'][name]}s",
                r["requests_per_replica"],
            )
        )
    e = result["empty_chat"]
    print(
        f"empty chat (prefix): {e['status']} after {e['seconds']}s {e['body'][:80]!r}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="out/bench/llm.json")
    parser.add_argument("--smoke", action="store_true", help="short run (~2 min)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    run = RUNS["smoke" if args.smoke else "full"]
    out_dir = Path(args.output).with_suffix("")
    out_dir.mkdir(parents=True, exist_ok=True)
    ray.init(
        address="local",
        num_cpus=4,  # logical: 2 ingresses x 1 CPU + 4 replicas x 0.25
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,  # e.g. the token-auth notice
    )
    # The driver's handles warn "Failed to get queue length" on a busy machine.
    logging.getLogger("ray.serve").setLevel(logging.ERROR)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    port = toolkit.find_free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        first = deploy(port)
        rounds: Dict[str, List[Dict]] = {router: [] for router in ROUTERS}
        for i, router in enumerate(run["rounds"]):
            reset_engines(router)
            seed = args.seed + i // 2  # each (pow2, prefix) pair shares a seed
            base = f"http://127.0.0.1:{port}/{router}"
            saved = run_client(base, seed, run, out_dir, f"round{i}-{router}")
            rounds[router].append(round_figures(saved, fetch_sim_stats(router)))
        empty = empty_chat(f"http://127.0.0.1:{port}/prefix")
    finally:
        ray.shutdown()

    result = {
        "ray_version": importlib.metadata.version("ray"),
        "ray_commit": ray.__commit__,
        "fastapi_version": fastapi.__version__,
        "python": sys.executable,
        "smoke": args.smoke,
        "first_request_s": first,
        "empty_chat": empty,
        "routers": {router: summarize(rs) for router, rs in rounds.items()},
        "config": {
            "engine": ENGINE,
            "workload": WORKLOAD,
            "replicas": 2,
            "seed": args.seed,
            **run,
        },
    }
    toolkit.write_json(args.output, result)
    print_table(result)
    print(f"wrote {args.output} (client logs in {out_dir}/)")


if __name__ == "__main__":
    main()
