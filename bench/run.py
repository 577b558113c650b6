"""`make bench`: stock Ray 2.60.0 and the patched wheel side by side, one run.

Runs, in each venv, ``bench/routing_bench.py`` (the prefix router against power
of two through Serve handles, on a cache-bound simulated engine, on the same
engine 4x slower (engine-bound) and on an echo replica; a tree kill; the first
request), ``bench/llm_bench.py`` (Serve LLM's
OpenAI path under upstream's benchmark client) and ``bench/controller_bench.py``
(controller CPU per control-loop step with no, declarative and runtime
deployment actors), then prints one table of
the figures with the patched/stock ratio and writes ``<out>/summary.json``.
The two sides run one after the other on the same machine.

    python3 bench/run.py --patched .venv/bin/python --stock build/stock-venv/bin/python
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

BENCH = Path(__file__).resolve().parent
SMOKE_ROUTING = ["--window-s", "2", "--warmup-s", "1", "--rounds", "2"]
SMOKE_ROUTING += ["--callers", "8", "--first-repeats", "1"]
SMOKE_CONTROLLER = ["--actors", "10", "--window-s", "6", "--settle-s", "3"]


def run(python: str, script: str, output: Path, extra: List[str]) -> Dict:
    cmd = [python, str(BENCH / script), "--output", str(output), *extra]
    print(f"\n$ {' '.join(cmd)}", flush=True)
    start = time.monotonic()
    subprocess.run(cmd, check=True)
    print(f"({script}: {time.monotonic() - start:.0f} s)", flush=True)
    return json.loads(output.read_text())


def rows(
    routing: Dict, llm: Dict, controller: Dict
) -> List[Tuple[str, Optional[float]]]:
    """The figures of one side, as (label, value) in a fixed order."""
    out = []
    for kind in ("none", "declarative", "runtime"):
        value = controller.get(kind, {}).get("cpu_ms_per_step")
        label = f"controller CPU ms/step, {controller['actors']} {kind} actors"
        out.append((label.replace(f"{controller['actors']} none", "no"), value))
    scale = routing.get("engine_bound_scale", 0)
    for workload, name in [("cache", "cache"), ("engine_bound", f"cache x{scale:g}")]:
        for key, row in routing.get(workload, {}).items():
            label = f"{name} {key}"
            out += [
                (f"{label}: prefix/pow2 req/s", row["ratio_req_s"]),
                (f"{label}: prefix/pow2 p99", row["ratio_p99"]),
                (f"{label}: hit rate / oracle", row["prefix"]["hit_vs_oracle"]),
                (f"{label}: busiest replica share", row["prefix"]["busiest_share"]),
            ]
            if "ceiling_ratio_req_s" in row:
                ceiling = row["ceiling_ratio_req_s"]
                out.append((f"{label}: ceiling/pow2 req/s", ceiling))
    for key, row in routing.get("echo", {}).items():
        if key == "neighbour":
            out.append(("echo: pow2 beside prefix / beside pow2", row["ratio"]))
        else:
            out.append((f"echo {key}: prefix/pow2 req/s", row["ratio_req_s"]))
    if "treekill" in routing:
        t = routing["treekill"]
        out += [
            ("tree kill: failed requests", t["failed"]),
            ("tree kill: affinity before", t["affinity_before"]),
            ("tree kill: lowest per-second affinity after", t["min_affinity_after"]),
        ]
    for name, first in routing.get("first", {}).items():
        out.append((f"first request via handle, {name} (ms)", first["median_s"] * 1e3))
    for name, r in llm.get("routers", {}).items():
        out += [
            (f"OpenAI path {name}: TTFT p50 (ms)", r["ttft_p50_ms"]),
            (f"OpenAI path {name}: TTFT p99 (ms)", r["ttft_p99_ms"]),
            (f"OpenAI path {name}: req/s", r["requests_per_s"]),
            (f"OpenAI path {name}: engine hit rate", r["engine_hit_rate"]),
        ]
    for name, seconds in llm.get("first_request_s", {}).items():
        value = seconds * 1e3 if isinstance(seconds, (int, float)) else None
        out.append((f"OpenAI path first request, {name} (ms)", value))
    return out


def fmt(value: Optional[float]) -> str:
    if value is None:
        return "n/a"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patched", required=True, help="python of the patched venv")
    parser.add_argument("--stock", required=True, help="python of the stock venv")
    parser.add_argument("--out", type=Path, default=Path("out/bench"))
    parser.add_argument("--smoke", action="store_true", help="a short run")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sides = {}
    for side, python in [("stock", args.stock), ("patched", args.patched)]:
        routing = run(
            python,
            "routing_bench.py",
            args.out / f"routing-{side}.json",
            SMOKE_ROUTING if args.smoke else [],
        )
        llm = run(
            python,
            "llm_bench.py",
            args.out / f"llm-{side}.json",
            ["--smoke"] if args.smoke else [],
        )
        controller = run(
            python,
            "controller_bench.py",
            args.out / f"controller-{side}.json",
            SMOKE_CONTROLLER if args.smoke else [],
        )
        sides[side] = {"routing": routing, "llm": llm, "controller": controller}
        empty = llm["empty_chat"]
        print(f"{side}: empty chat message -> {empty['status']} {empty['body'][:80]!r}")

    stock = dict(rows(**sides["stock"]))
    patched = rows(**sides["patched"])
    width = max(len(label) for label, _ in patched)
    print(f"\n{'figure':<{width}}  {'stock':>8}  {'patched':>8}  {'ratio':>6}")
    table = []
    for label, value in patched:
        base = stock.get(label)
        ratio = value / base if value is not None and base else None
        table.append({"figure": label, "stock": base, "patched": value, "ratio": ratio})
        print(f"{label:<{width}}  {fmt(base):>8}  {fmt(value):>8}  {fmt(ratio):>6}")
    summary = {"sides": sides, "table": table}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nwrote {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
