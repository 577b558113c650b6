#!/usr/bin/env python3
"""Benchmark stock Ray 2.60.0 and the patched wheel side by side (`make bench`).

Runs each workload of ``release/serve_tests/workloads`` first under stock Ray
2.60.0 (its own venv, ``build/stock-venv``, built here from the cached,
sha256-verified base wheel) and then under the patched Ray of ``.venv``, one
after the other, each in its own process with its own local Ray cluster:

* routing (``prefix_router_bench.py``): power-of-two vs prefix-aware router;
* lifecycle (``deployment_actor_lifecycle_bench.py``): deployment actor
  get-or-create, deletion, controller kill, prefix tree death under load;
* controller scale (``controller_scale_bench.py``): control-loop step time by
  number of deployments, with and without deployment actors.

--smoke (CI) uses short durations and fewer levels, and runs each venv's
workloads in one process with one Ray cluster (--shared-cluster), because
starting a local cluster takes 7 s or more on 2 cores.

Prints a table with the ratios and the issue's targets (PASS/MISS), and writes
``out/bench/bench.json``, the raw workload outputs and logs, and PNG plots. A
MISS fails the run only with --enforce; a workload that fails always does.
"""

import argparse
import datetime
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
WORKLOAD_DIR = ROOT / "release" / "serve_tests" / "workloads"
STOCK_VENV = ROOT / "build" / "stock-venv"
PATCHED_VENV = ROOT / ".venv"
OUT_DIR = ROOT / "out" / "bench"
STOCK_STAMP = ".bench-stock-stamp"
SIDES = ("stock", "patched")

# name -> (script, full args, smoke args)
WORKLOADS: Dict[str, Tuple[str, List[str], List[str]]] = {
    # Not --smoke: its 1 s warm-up can end before the prefix router has its tree.
    "routing": (
        "prefix_router_bench.py",
        [],
        ["--concurrency", "8", "--duration-s", "2", "--warmup-s", "2", "--rounds", "2"],
    ),
    "lifecycle": ("deployment_actor_lifecycle_bench.py", [], ["--smoke"]),
    "scale": ("controller_scale_bench.py", [], ["--smoke"]),
}

AFFINITY_TARGET = 0.95


# --------------------------------------------------------------------------- #
# Environments
# --------------------------------------------------------------------------- #


def log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def base_wheel(python: str) -> Path:
    """The cached, sha256-verified stock Ray 2.60.0 wheel (downloaded if needed)."""
    proc = subprocess.run(
        [python, str(ROOT / "ci" / "raypatch.py"), "fetch-base"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    match = re.search(r"base ok: (\S+\.whl)", proc.stdout + proc.stderr)
    if proc.returncode != 0 or not match:
        raise RuntimeError(f"raypatch fetch-base failed:\n{proc.stdout}{proc.stderr}")
    return Path(match.group(1))


def venv_ray(python: Path) -> Dict[str, Any]:
    """Ray's distribution version in a venv and whether it has the patch set."""
    code = (
        "import importlib.metadata as m, importlib.util as u, json;"
        "print(json.dumps({'version': m.version('ray'), 'patched': "
        "u.find_spec('ray.serve._private.deployment_scoped_actor_utils') "
        "is not None}))"
    )
    proc = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ensure_stock_venv(venv: Path, python: str) -> Path:
    """Create (or reuse) the stock Ray venv; idempotent through a stamp file.

    The stamp holds the exact requirement installed, which names the wheel by
    its sha256 directory, so a new pinned base rebuilds the venv's Ray.

    Args:
        venv: Where the venv lives (an existing one is reused).
        python: The CPython 3.11 that creates it and runs ``raypatch.py``.

    Returns:
        The venv's python.
    """
    wheel = base_wheel(python)
    requirement = f"ray[serve] @ {wheel.resolve().as_uri()}"
    stamp = venv / STOCK_STAMP
    venv_python = venv / "bin" / "python"
    if venv_python.exists() and stamp.exists() and stamp.read_text() == requirement:
        log(f"stock venv up to date: {venv}")
        return venv_python
    if not venv_python.exists():
        log(f"creating stock venv {venv}")
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
    log(f"installing {requirement} into {venv}")
    subprocess.run(
        [
            str(venv_python),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            requirement,
        ],
        check=True,
    )
    info = venv_ray(venv_python)
    if info["version"] != "2.60.0" or info["patched"]:
        raise RuntimeError(f"{venv} does not hold stock Ray 2.60.0: {info}")
    stamp.write_text(requirement)
    return venv_python


def machine() -> Dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem_gb = round(kb / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "mem_gb": mem_gb,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


# --------------------------------------------------------------------------- #
# Running the workloads
# --------------------------------------------------------------------------- #


def run_workload(
    name: str, side: str, python: Path, smoke: bool, timeout_s: float, retries: int
) -> Dict[str, Any]:
    """Run one workload in its own process (and Ray cluster) in one venv.

    Args:
        name: A key of ``WORKLOADS``.
        side: "stock" or "patched" (names the output and log files).
        python: The venv's python.
        smoke: Use the workload's smoke arguments.
        timeout_s: Per attempt.
        retries: Further attempts after a failure.

    Returns:
        The workload's JSON output plus ``_run`` (attempts, wall time, ok).
    """
    script, full_args, smoke_args = WORKLOADS[name]
    raw = OUT_DIR / "raw" / f"{name}-{side}.json"
    logfile = OUT_DIR / "logs" / f"{name}-{side}.log"
    raw.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [str(python), str(WORKLOAD_DIR / script), "--output", str(raw)]
    cmd += smoke_args if smoke else full_args
    meta: Dict[str, Any] = {"cmd": cmd, "attempts": 0}
    start = time.monotonic()
    for attempt in range(1 + retries):
        meta["attempts"] = attempt + 1
        log(f"{name} / {side}: {' '.join(cmd[1:])}")
        with open(logfile, "w") as out:
            try:
                rc = subprocess.run(
                    cmd,
                    cwd=ROOT,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=timeout_s,
                ).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        if rc == 0 and raw.exists():
            break
        log(f"{name} / {side} failed ({rc}); log: {logfile.relative_to(ROOT)}")
    meta["wall_s"] = time.monotonic() - start
    meta["ok"] = rc == 0 and raw.exists()
    log(
        f"{name} / {side}: {'ok' if meta['ok'] else 'FAILED'} in {meta['wall_s']:.0f} s"
    )
    result = json.loads(raw.read_text()) if meta["ok"] else {}
    result["_run"] = meta
    return result


# Runs several workloads in one process with one Ray cluster (--shared-cluster):
# starting a local cluster costs 7 s or more on 2 cores, which the smoke run
# cannot afford six times. argv: workload dir, jobs JSON, status file.
RUNNER = """
import json, sys, time, traceback
sys.path.insert(0, sys.argv[1])
import ray
jobs, status = json.loads(sys.argv[2]), {}
ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
try:
    for name, module, argv in jobs:
        print(f"[bench-runner] {name}: {module} {argv}", flush=True)
        start = time.monotonic()
        try:
            rc = __import__(module).main(argv)
        except BaseException:
            traceback.print_exc()
            rc = 1
        status[name] = {"rc": rc, "wall_s": time.monotonic() - start}
        with open(sys.argv[3], "w") as f:
            json.dump(status, f)
finally:
    ray.shutdown()
"""


def run_shared(
    names: List[str],
    side: str,
    python: Path,
    smoke: bool,
    timeout_s: float,
    retries: int,
) -> Dict[str, Dict[str, Any]]:
    """Run workloads in one process (one Ray cluster); failed ones are retried.

    Args:
        names: Keys of ``WORKLOADS``, run in this order.
        side: "stock" or "patched" (names the output and log files).
        python: The venv's python.
        smoke: Use the workloads' smoke arguments.
        timeout_s: Per attempt (for all of them).
        retries: Further attempts, for the failed workloads only.

    Returns:
        Per workload: its JSON output plus ``_run`` (attempts, wall time, ok).
    """
    results: Dict[str, Dict[str, Any]] = {}
    logfile = OUT_DIR / "logs" / f"shared-{side}.log"
    status_file = OUT_DIR / "raw" / f"shared-{side}-status.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONUNBUFFERED"] = "1"
    pending = list(names)
    with open(logfile, "w") as out:
        for attempt in range(1 + retries):
            jobs = []
            for name in pending:
                script, full_args, smoke_args = WORKLOADS[name]
                raw = OUT_DIR / "raw" / f"{name}-{side}.json"
                raw.unlink(missing_ok=True)
                argv = ["--output", str(raw)] + (smoke_args if smoke else full_args)
                jobs.append([name, script.removesuffix(".py"), argv])
            status_file.unlink(missing_ok=True)
            log(f"{', '.join(pending)} / {side}: one process, one Ray cluster")
            start = time.monotonic()
            cmd = [str(python), "-c", RUNNER, str(WORKLOAD_DIR), json.dumps(jobs)]
            try:
                subprocess.run(
                    cmd + [str(status_file)],
                    cwd=ROOT,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=timeout_s,
                )
            except subprocess.TimeoutExpired:
                pass
            wall = time.monotonic() - start
            status = json.loads(status_file.read_text()) if status_file.exists() else {}
            for name in list(pending):
                raw = OUT_DIR / "raw" / f"{name}-{side}.json"
                st = status.get(name, {})
                ok = st.get("rc") == 0 and raw.exists()
                result = json.loads(raw.read_text()) if ok else {}
                result["_run"] = {
                    "shared_cluster": True,
                    "attempts": attempt + 1,
                    "ok": ok,
                    "wall_s": st.get("wall_s"),
                    "process_wall_s": wall,
                }
                results[name] = result
                if ok:
                    pending.remove(name)
                log(
                    f"{name} / {side}: {'ok' if ok else 'FAILED'}"
                    + (f" in {st['wall_s']:.0f} s" if "wall_s" in st else "")
                )
            if not pending:
                break
            log(f"failed: {', '.join(pending)}; log: {logfile.relative_to(ROOT)}")
    return results


# --------------------------------------------------------------------------- #
# Summary: ratios, targets, table
# --------------------------------------------------------------------------- #


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def routing_rows(routing: Dict[str, Any]) -> Dict[Tuple[int, str], Dict[str, Any]]:
    return {(r["concurrency"], r["router"]): r for r in routing.get("runs", [])}


def routing_summary(results: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per side and concurrency: prefix/pow2 throughput and p99 ratios."""
    out = []
    for side in SIDES:
        rows = routing_rows(results[side].get("routing", {}))
        for c in sorted({c for c, _ in rows}):
            pow2, prefix = rows.get((c, "pow2")), rows.get((c, "prefix"))
            if not pow2 or not prefix:
                continue
            out.append(
                {
                    "side": side,
                    "concurrency": c,
                    "throughput_ratio": ratio(prefix["req_per_s"], pow2["req_per_s"]),
                    "p99_ratio": ratio(prefix["p99_ms"], pow2["p99_ms"]),
                    "prefix_affinity": prefix["affinity"],
                    "failed": prefix["failed"] + pow2["failed"],
                }
            )
    return out


def scale_runs(scale: Dict[str, Any]) -> Dict[Tuple[int, bool], Dict[str, Any]]:
    return {(r["deployments"], r["actors"]): r for r in scale.get("runs", [])}


def targets(results: Dict[str, Dict[str, Any]], summary: Dict[str, Any]):
    """The issue's targets, each PASS, MISS or SKIP (not measured in this run)."""
    found = []

    def add(name: str, status: str, value: str) -> None:
        found.append({"target": name, "status": status, "value": value})

    by = {(r["side"], r["concurrency"]): r for r in summary["routing"]}
    for c in (8, 32):
        name = f"prefix/pow2 req/s at {c} callers >= 0.9x, affinity >= 0.95"
        r, s = by.get(("patched", c)), by.get(("stock", c))
        if r is None or r["throughput_ratio"] is None:
            add(name, "SKIP", "not run")
            continue
        ok = r["throughput_ratio"] >= 0.9 and r["prefix_affinity"] >= AFFINITY_TARGET
        stock = f" (stock {fmt_x(s['throughput_ratio'])})" if s else ""
        add(
            name,
            "PASS" if ok else "MISS",
            f"{fmt_x(r['throughput_ratio'])}, affinity {r['prefix_affinity']:.3f}"
            + stock,
        )
    name = "prefix/pow2 p99 at 32 callers <= 1.2x"
    r, s = by.get(("patched", 32)), by.get(("stock", 32))
    if r is None or r["p99_ratio"] is None:
        add(name, "SKIP", "not run (32 callers only in the full run)")
    else:
        stock = f" (stock {fmt_x(s['p99_ratio'])})" if s else ""
        add(name, "PASS" if r["p99_ratio"] <= 1.2 else "MISS", fmt_x(r["p99_ratio"]))
        found[-1]["value"] += stock

    # The API call as the prefix router makes it (the class sent by name, as
    # an ActorClassReference), against no-op actor calls timed interleaved with
    # it. The raw call with `ActorClass.options(...)` adds Ray's by-value
    # pickling of the class; it is reported next to it and in the table.
    name = "warm get_or_create p50 <= 2x no-op actor call p50 (as the router calls it)"
    life = results["patched"].get("lifecycle", {})
    goc = life.get("get_or_create") or {}
    noop = (goc.get("noop_interleaved_ms") or {}).get("p50")
    x = ratio((goc.get("warm_ms") or {}).get("p50"), noop)
    if x is None:
        add(name, "SKIP", "not measured")
    else:
        x_raw = ratio((goc.get("warm_raw_options_ms") or {}).get("p50"), noop)
        add(name, "PASS" if x <= 2.0 else "MISS", fmt_x(x))
        if x_raw is not None:
            found[-1]["value"] += f" (raw call with ActorClass.options: {fmt_x(x_raw)})"

    runs = scale_runs(results["patched"].get("scale", {}))
    top = max((n for n, a in runs if a), default=None)
    name = "control-loop step with actors <= 1.2x without (50 deployments)"
    if top is None or (top, False) not in runs:
        add(name, "SKIP", "not measured")
    else:
        x = ratio(runs[(top, True)]["step_ms_p50"], runs[(top, False)]["step_ms_p50"])
        label = "" if top == 50 else f" at {top} deployments"
        if top != 50:
            name = name.replace("50 deployments", f"{top} deployments; target at 50")
        add(name, "PASS" if x is not None and x <= 1.2 else "MISS", fmt_x(x) + label)
        row = next((r for r in summary.get("scale", []) if r["deployments"] == top), {})
        if row.get("patched_plain") is not None:
            found[-1]["value"] += (
                f" (with {top} plain, unmanaged actors instead: "
                f"{fmt_x(row.get('plain_without'))}; managed vs plain: "
                f"{fmt_x(row.get('with_plain'))}; controller CPU per step "
                f"{fmt_x(ratio(row.get('patched_actors_cpu'), row.get('patched_cpu')))})"
            )
    return found


def fmt_x(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def fmt(value: Optional[float], unit: str = "", digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}{unit}"


def fmt_s(value: Optional[float], window: Optional[float] = None) -> str:
    """Seconds, or 'never' when a bounded wait ran out."""
    if value is None:
        return f"never ({window:.0f} s)" if window else "n/a"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def lifecycle_rows(results: Dict[str, Dict[str, Any]]) -> List[Tuple[str, str, str]]:
    """(metric, stock, patched) rows of the lifecycle table."""

    def get(side: str, *path: str) -> Any:
        value: Any = results[side].get("lifecycle") or {}
        for key in path:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        return value

    def both(label: str, render: Callable[[str], str]) -> Tuple[str, str, str]:
        return (
            label,
            render("stock") if results["stock"].get("lifecycle") else "n/a",
            render("patched") if results["patched"].get("lifecycle") else "n/a",
        )

    def ms(*path: str) -> Callable[[str], str]:
        return lambda side: fmt(get(side, *path), " ms")

    def sec(*path: str) -> Callable[[str], str]:
        return lambda side: fmt_s(get(side, *path))

    def tree(key: str) -> Callable[[str], str]:
        def render(side: str) -> str:
            td = get(side, "tree_death")
            if not td:
                return "n/a"
            return fmt_s(td.get(key), td.get("observed_s"))

        return render

    def goc_ratio(side: str, key: str = "warm_ms", base: str = "noop_interleaved_ms"):
        return fmt_x(
            ratio(
                get(side, "get_or_create", key, "p50"),
                get(side, "get_or_create", base, "p50"),
            )
        )

    def failed(side: str) -> str:
        td = get(side, "tree_death")
        if not td:
            return "n/a"
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(td["failure_kinds"].items()))
        return str(td["failed_after_kill"]) + (f" ({kinds})" if kinds else "")

    def readopt(side: str) -> str:
        ck = get(side, "get_or_create", "controller_kill")
        if not ck:
            return "n/a"
        same = "same actor" if ck.get("same_actor") else "NOT the same actor"
        return f"{fmt_s(ck.get('readopted_s'))} ({same})"

    return [
        both("no-op actor call p50", ms("noop_actor_call_ms", "p50")),
        both("no-op actor call p99", ms("noop_actor_call_ms", "p99")),
        both("no-op controller call p50", ms("controller_noop_call_ms", "p50")),
        both("get_or_create warm p50", ms("get_or_create", "warm_ms", "p50")),
        both("get_or_create warm p99", ms("get_or_create", "warm_ms", "p99")),
        both(
            "  no-op actor call p50, interleaved",
            ms("get_or_create", "noop_interleaved_ms", "p50"),
        ),
        both("  warm / no-op actor call", goc_ratio),
        both(
            "  floor: no-op, same args, returns handle",
            ms("get_or_create", "floor_same_args_handle_ms", "p50"),
        ),
        both(
            "  via async helper / awaited no-op",
            lambda side: goc_ratio(side, "warm_helper_ms", "noop_awaited_ms"),
        ),
        both(
            "  warm p50, raw call, ActorClass.options",
            ms("get_or_create", "warm_raw_options_ms", "p50"),
        ),
        both(
            "  warm p50, class as ObjectRef",
            ms("get_or_create", "warm_class_ref_ms", "p50"),
        ),
        both(
            "  warm p50, plain importable class",
            ms("get_or_create", "warm_plain_class_ms", "p50"),
        ),
        both("  lookup p50 (no class)", ms("get_or_create", "lookup_ms", "p50")),
        both(
            "  ActorClass pickle dumps+loads",
            lambda side: fmt(
                (
                    (get(side, "get_or_create", "actor_class_pickle", "dumps_ms") or 0)
                    + (
                        get(side, "get_or_create", "actor_class_pickle", "loads_ms")
                        or 0
                    )
                    if get(side, "get_or_create", "actor_class_pickle")
                    else None
                ),
                " ms",
            ),
        ),
        both("get_or_create cold (actor answers)", sec("get_or_create", "cold_s")),
        both(
            "100 concurrent callers, existing",
            sec("get_or_create", "concurrent_existing_s"),
        ),
        both(
            "100 concurrent callers, new actor",
            sec("get_or_create", "concurrent_new_s"),
        ),
        both("serve.delete -> actors gone", sec("get_or_create", "delete_to_gone_s")),
        both(
            "controller kill -> controller back",
            sec("get_or_create", "controller_kill", "controller_back_s"),
        ),
        both("controller kill -> re-adoption", readopt),
        both("tree kill -> new tree", tree("tree_recreated_s")),
        both("tree kill -> affinity >= 0.95", tree("affinity_restored_s")),
        both("requests failed after tree kill", failed),
    ]


def build_summary(results: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    summary: Dict[str, Any] = {"routing": routing_summary(results)}
    scale = []
    stock_runs = scale_runs(results["stock"].get("scale", {}))
    patched_runs = scale_runs(results["patched"].get("scale", {}))
    plain_runs = {
        r["deployments"]: r
        for r in results["patched"].get("scale", {}).get("plain_actor_runs", [])
    }
    for n in sorted({n for n, _ in stock_runs} | {n for n, _ in patched_runs}):
        row = {"deployments": n}
        for key, run in (
            ("stock", stock_runs.get((n, False))),
            ("patched", patched_runs.get((n, False))),
            ("patched_actors", patched_runs.get((n, True))),
            ("patched_plain", plain_runs.get(n)),
        ):
            row[key] = run["step_ms_p50"] if run else None
            row[key + "_mean"] = run["step_ms_mean"] if run else None
            row[key + "_cpu"] = run.get("controller_cpu_ms_per_step") if run else None
        row["with_without"] = ratio(row["patched_actors"], row["patched"])
        row["plain_without"] = ratio(row["patched_plain"], row["patched"])
        row["with_plain"] = ratio(row["patched_actors"], row["patched_plain"])
        scale.append(row)
    summary["scale"] = scale
    summary["targets"] = targets(results, summary)
    return summary


def table(headers: List[str], rows: List[List[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]

    def line(cells: List[str]) -> str:
        return "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return "\n".join(
        [line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows]
    )


def report(report_data: Dict[str, Any]) -> str:
    results, summary = report_data["results"], report_data["summary"]
    lines = []
    m = report_data["machine"]
    lines.append(
        f"===== benchmark: stock Ray 2.60.0 vs patched "
        f"({'smoke' if report_data['smoke'] else 'full'}) ====="
    )
    lines.append(
        f"{report_data['date']}  {m['cpu']}, {m['cpus']} CPUs, {m['mem_gb']} GB, "
        f"{m['os']}; load average {report_data['loadavg_start']} at start, "
        f"{report_data['loadavg_end']} at end"
    )
    versions = ", ".join(
        f"{side} {results[side].get('routing', {}).get('distribution_version', '?')}"
        for side in SIDES
    )
    lines.append(f"ray: {versions}")

    lines.append("\n--- routing: 2 replicas, 8 prefixes x 2,000 chars, closed loop ---")
    rows = []
    stock_rows = routing_rows(results["stock"].get("routing", {}))
    patched_rows = routing_rows(results["patched"].get("routing", {}))
    ratios = {(r["side"], r["concurrency"]): r for r in summary["routing"]}
    for c in sorted({c for c, _ in stock_rows} | {c for c, _ in patched_rows}):
        for router in ("pow2", "prefix"):
            cells = [str(c), router]
            for side_rows in (stock_rows, patched_rows):
                r = side_rows.get((c, router))
                cells += (
                    [
                        fmt(r["req_per_s"], "", 1),
                        fmt(r["p50_ms"], "", 1),
                        fmt(r["p99_ms"], "", 1),
                        fmt(r["affinity"], "", 3),
                        str(r["failed"]),
                    ]
                    if r
                    else ["n/a"] * 5
                )
            rows.append(cells)
        cells = [str(c), "prefix/pow2"]
        for side in SIDES:
            r = ratios.get((side, c))
            cells += (
                [fmt_x(r["throughput_ratio"]), "", fmt_x(r["p99_ratio"]), "", ""]
                if r
                else ["n/a", "", "n/a", "", ""]
            )
        rows.append(cells)
    columns = ("req/s", "p50ms", "p99ms", "aff", "fail")
    headers = ["callers", "router"] + [f"{s} {h}" for s in SIDES for h in columns]
    lines.append(table(headers, rows))

    lines.append("\n--- lifecycle: deployment actors and the prefix tree ---")
    lines.append(
        table(
            ["metric", "stock", "patched"], [list(r) for r in lifecycle_rows(results)]
        )
    )

    lines.append(
        "\n--- controller scale: control-loop step ms, p50 / mean (wall) /"
        " controller CPU per step ---"
    )
    rows = []
    for row in summary["scale"]:
        rows.append(
            [str(row["deployments"])]
            + [
                f"{fmt(row[k], '', 1)} / {fmt(row[k + '_mean'], '', 1)}"
                f" / {fmt(row[k + '_cpu'], '', 1)}"
                for k in ("stock", "patched", "patched_actors", "patched_plain")
            ]
            + [fmt_x(row["with_without"]), fmt_x(row["with_plain"])]
        )
    if len(summary["scale"]) > 1:
        first, last = summary["scale"][0], summary["scale"][-1]
        rows.append(
            [f"growth {first['deployments']}->{last['deployments']}"]
            + [
                fmt_x(ratio(last[k], first[k]))
                for k in ("stock", "patched", "patched_actors")
            ]
            + ["", "", ""]
        )
    lines.append(
        table(
            [
                "deployments",
                "stock, no actors",
                "patched, no actors",
                "patched, 1 actor each",
                "patched, N plain actors",
                "with/without",
                "with/plain",
            ],
            rows,
        )
    )

    lines.append("\n--- targets (patched) ---")
    for t in summary["targets"]:
        lines.append(f"{t['status']:<5} {t['target']}: {t['value']}")
    failed = [
        f"{name}/{side}"
        for side in SIDES
        for name, res in results[side].items()
        if not res.get("_run", {}).get("ok", True)
    ]
    if failed:
        lines.append(f"FAILED workloads: {', '.join(failed)} (see out/bench/logs)")
    lines.append(f"wall time: {report_data['wall_s']:.0f} s")
    return "\n".join(lines)


# --------------------------------------------------------------------------- #
# Plots
# --------------------------------------------------------------------------- #


def plots(report_data: Dict[str, Any]) -> List[Path]:
    """Write the PNG plots; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results, written = report_data["results"], []
    styles = {"stock": "--", "patched": "-"}
    markers = {"stock": "s", "patched": "o"}
    colors = {"pow2": "tab:blue", "prefix": "tab:orange"}

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for side in SIDES:
        rows = routing_rows(results[side].get("routing", {}))
        for router in ("pow2", "prefix"):
            points = sorted((c, r) for (c, rt), r in rows.items() if rt == router)
            if not points:
                continue
            xs = [c for c, _ in points]
            for ax, key in zip(axes, ("req_per_s", "p99_ms")):
                ax.plot(
                    xs,
                    [r[key] for _, r in points],
                    styles[side],
                    marker=markers[side],
                    fillstyle="none" if side == "stock" else "full",
                    color=colors[router],
                    label=f"{side} {router}",
                )
    callers = sorted(
        {c for side in SIDES for c, _ in routing_rows(results[side].get("routing", {}))}
    )
    for ax, title in zip(axes, ("throughput (req/s)", "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        if callers:
            ax.set_xticks(callers, [str(c) for c in callers])
        ax.set_xlabel("concurrent callers")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle("Routing: power-of-two vs prefix-aware, stock vs patched")
    fig.tight_layout()
    written.append(OUT_DIR / "routing.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)

    life = {side: results[side].get("lifecycle") or {} for side in SIDES}

    def value(side: str, *path: str) -> Optional[float]:
        v: Any = life[side]
        for key in path:
            v = v.get(key) if isinstance(v, dict) else None
        return v

    metrics = [
        ("no-op actor call p50", ("noop_actor_call_ms", "p50"), 1e-3),
        ("no-op controller call p50", ("controller_noop_call_ms", "p50"), 1e-3),
        ("get_or_create warm p50", ("get_or_create", "warm_ms", "p50"), 1e-3),
        ("get_or_create warm p99", ("get_or_create", "warm_ms", "p99"), 1e-3),
        (
            "warm, raw call with ActorClass.options",
            ("get_or_create", "warm_raw_options_ms", "p50"),
            1e-3,
        ),
        ("get_or_create cold", ("get_or_create", "cold_s"), 1),
        ("100 concurrent, existing", ("get_or_create", "concurrent_existing_s"), 1),
        ("100 concurrent, new", ("get_or_create", "concurrent_new_s"), 1),
        ("delete -> gone", ("get_or_create", "delete_to_gone_s"), 1),
        (
            "controller kill -> re-adopted",
            ("get_or_create", "controller_kill", "readopted_s"),
            1,
        ),
        ("tree kill -> new tree", ("tree_death", "tree_recreated_s"), 1),
        ("tree kill -> affinity back", ("tree_death", "affinity_restored_s"), 1),
    ]
    fig, ax = plt.subplots(figsize=(9, 6))
    height = 0.38
    for i, side in enumerate(SIDES):
        for j, (_label, path, scale) in enumerate(metrics):
            v = value(side, *path)
            y = j + (i - 0.5) * height
            color = "tab:gray" if side == "stock" else "tab:green"
            if v is not None:
                ax.barh(y, max(v * scale, 1e-5), height, color=color)
            elif path[0] == "tree_death" and life[side].get("tree_death"):
                window = life[side]["tree_death"]["observed_s"]
                ax.barh(y, window, height, color="white", edgecolor="red", hatch="//")
                ax.text(window, y, " never", va="center", color="red", fontsize=8)
    ax.set_yticks(range(len(metrics)), [m[0] for m in metrics])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("seconds (log)")
    ax.legend(
        handles=[
            plt.Rectangle((0, 0), 1, 1, color="tab:gray", label="stock"),
            plt.Rectangle((0, 0), 1, 1, color="tab:green", label="patched"),
        ]
    )
    ax.set_title("Lifecycle latencies (missing bar: n/a in stock)")
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    written.append(OUT_DIR / "lifecycle.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label, style in (
        ("stock", "stock, no actors", "--"),
        ("patched", "patched, no actors", "-"),
        ("patched_actors", "patched, 1 actor each", "-."),
        ("patched_plain", "patched, N plain actors (control)", "x"),
    ):
        points = [
            (r["deployments"], r[key])
            for r in report_data["summary"]["scale"]
            if r[key] is not None
        ]
        if points:
            if style == "x":  # a single control point, no line
                ax.plot(*zip(*points), "x", markersize=9, label=label)
            else:
                ax.plot(*zip(*points), style, marker="o", label=label)
    ax.set_xlabel("deployments")
    ax.set_ylabel("control-loop step p50 (ms)")
    ax.set_title("Controller scale")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    written.append(OUT_DIR / "controller_scale.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)
    return written


# --------------------------------------------------------------------------- #
# main
# --------------------------------------------------------------------------- #


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CI: under 3 minutes")
    parser.add_argument("--enforce", action="store_true", help="exit 1 on a MISS")
    parser.add_argument(
        "--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS)
    )
    parser.add_argument("--venv-python", default="python3", help="for the stock venv")
    parser.add_argument("--stock-venv", type=Path, default=STOCK_VENV)
    parser.add_argument(
        "--patched-python", type=Path, default=PATCHED_VENV / "bin" / "python"
    )
    parser.add_argument("--retries", type=int, default=1, help="per failed workload")
    parser.add_argument(
        "--shared-cluster",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run a venv's workloads in one process and Ray cluster "
        "(default: with --smoke only; the full run isolates every workload)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild the report from out/bench/raw without running anything",
    )
    args = parser.parse_args(argv)
    start = time.monotonic()
    loadavg_start = [round(x, 1) for x in os.getloadavg()]
    (OUT_DIR / "raw").mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "logs").mkdir(parents=True, exist_ok=True)

    results: Dict[str, Dict[str, Any]] = {side: {} for side in SIDES}
    if args.report_only:
        for side in SIDES:
            for name in args.workloads:
                raw = OUT_DIR / "raw" / f"{name}-{side}.json"
                if raw.exists():
                    results[side][name] = json.loads(raw.read_text())
    else:
        pythons = {
            "stock": ensure_stock_venv(args.stock_venv, args.venv_python),
            "patched": args.patched_python,
        }
        info = venv_ray(args.patched_python)
        if not info["patched"]:
            log(f"{args.patched_python} does not hold the patched Ray: {info}")
            return 2
        timeout_s = 600 if args.smoke else 3600
        shared = args.smoke if args.shared_cluster is None else args.shared_cluster
        if shared:
            for side in SIDES:
                results[side] = run_shared(
                    args.workloads,
                    side,
                    pythons[side],
                    args.smoke,
                    timeout_s,
                    args.retries,
                )
        else:
            for name in args.workloads:
                for side in SIDES:
                    results[side][name] = run_workload(
                        name, side, pythons[side], args.smoke, timeout_s, args.retries
                    )

    report_data: Dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "smoke": args.smoke,
        "loadavg_start": loadavg_start,
        "loadavg_end": [round(x, 1) for x in os.getloadavg()],
        "wall_s": time.monotonic() - start,
        "results": results,
    }
    previous = OUT_DIR / "bench.json"
    if args.report_only and previous.exists():
        # Re-rendering: keep when, where and how the figures were measured.
        old = json.loads(previous.read_text())
        for key in ("date", "machine", "smoke", "loadavg_start", "loadavg_end"):
            report_data[key] = old.get(key, report_data[key])
        report_data["wall_s"] = old.get("wall_s", 0.0)
    report_data["summary"] = build_summary(results)
    text = report(report_data)
    print("\n" + text)
    (OUT_DIR / "bench.json").write_text(json.dumps(report_data, indent=2) + "\n")
    (OUT_DIR / "bench.txt").write_text(text + "\n")
    try:
        written = plots(report_data)
        log("wrote " + ", ".join(str(p.relative_to(ROOT)) for p in written))
    except Exception as e:  # the figures matter more than the pictures
        log(f"plots failed: {type(e).__name__}: {e}")
    log(f"wrote {(OUT_DIR / 'bench.json').relative_to(ROOT)}")

    failed = [
        f"{name}/{side}"
        for side in SIDES
        for name, res in results[side].items()
        if not res.get("_run", {}).get("ok", True)
    ]
    missed = [t for t in report_data["summary"]["targets"] if t["status"] == "MISS"]
    if failed:
        return 1
    if args.enforce and missed:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
