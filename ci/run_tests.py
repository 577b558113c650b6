#!/usr/bin/env python3
"""Run the test suites of `make test` one after another and report their times.

The tests are the series' own, run from the patched tree (`make tree`: the
pristine sources with the series applied by `git am`, nothing else) against
the wheel built from that tree, plus the fork's tooling tests in `ci/`. Suites
run serially: the integration tests start real Ray clusters, and side by side
on 2 cores they would only add noise.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List, NamedTuple, Optional

ROOT = Path(__file__).resolve().parent.parent


class Suite(NamedTuple):
    name: str
    # pytest arguments (paths relative to the tree unless they start with //),
    # or None for the doc code scripts and the chaos smoke run.
    pytest_args: Optional[List[str]]


SUITES = [
    Suite("patch tools", ["//ci"]),
    Suite("unit", ["python/ray/serve/tests/unit"]),
    Suite(
        "integration",
        [
            "python/ray/serve/tests",
            "python/ray/llm/tests",
            "--ignore=python/ray/serve/tests/unit",
        ],
    ),
    Suite("doc code", None),
    Suite("chaos smoke", None),
]


def pytest_command(python: str, tree: Path, args: List[str]) -> List[str]:
    resolved = []
    for arg in args:
        if arg.startswith("//"):
            resolved.append(str(ROOT / arg[2:]))
        elif arg.startswith("--ignore="):
            resolved.append("--ignore=" + str(tree / arg[len("--ignore=") :]))
        else:
            resolved.append(str(tree / arg))
    return [python, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), *resolved]


def run_doc_code(python: str, tree: Path) -> int:
    """Each doc_code file runs top to bottom as a script (as upstream's doc CI).

    ``RAY_ADDRESS=local``: the script's implicit ``ray.init()`` starts its own
    cluster instead of joining one that happens to run on this machine.
    """
    env = {**os.environ, "RAY_ADDRESS": "local"}
    rc = 0
    for script in sorted((tree / "doc" / "source" / "serve" / "doc_code").glob("*.py")):
        # A passing script's Ray logs are noise; a failing one's are the story.
        proc = subprocess.run(
            [python, str(script)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if proc.returncode != 0:
            print(proc.stdout[-20000:])
        print(
            f"{script.relative_to(tree)}: {'ok' if proc.returncode == 0 else 'FAILED'}"
        )
        rc |= proc.returncode
    return rc


# The chaos release workload (created by the series) on Serve LLM's OpenAI app
# around the fork's simulated engine (bench/sim_llm), 2 prefix-routed replicas.
CHAOS_APP = ["--app", "sim_llm.app:build_sim_openai_app"]
CHAOS_APP += ["--app-kwargs", '{"num_replicas": 2, "router": "prefix"}']


def run_chaos(python: str, tree: Path, duration_s: Optional[float]) -> int:
    """The chaos release workload: smoke mode (each fault once) or a long run."""
    workload = tree / "release" / "serve_tests" / "workloads"
    out = ROOT / "out" / "chaos"
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "bench")}
    cmd = [python, str(workload / "deployment_actor_chaos.py"), *CHAOS_APP]
    if duration_s is None:
        cmd += ["--smoke", "--output", str(out / "smoke.json")]
    else:
        cmd += ["--duration-s", str(duration_s), "--output", str(out / "chaos.json")]
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", required=True)
    parser.add_argument("--tree", type=Path, required=True)
    parser.add_argument("--only", action="append", help="run only these suites")
    parser.add_argument(
        "--chaos-duration-s", type=float, help="with --only chaos: the long run"
    )
    args = parser.parse_args()
    tree = args.tree.resolve()
    scripts = {
        "doc code": lambda: run_doc_code(args.python, tree),
        "chaos smoke": lambda: run_chaos(args.python, tree, None),
        "chaos": lambda: run_chaos(args.python, tree, args.chaos_duration_s),
    }
    results = []
    # `chaos` (the long run) is not part of `make test`; `--only chaos` runs it.
    for suite in SUITES + [Suite("chaos", None)]:
        if suite.name not in (args.only or [s.name for s in SUITES]):
            continue
        print(f"\n===== {suite.name} =====", flush=True)
        start = time.monotonic()
        if suite.pytest_args is None:
            rc = scripts[suite.name]()
        else:
            cmd = pytest_command(args.python, tree, suite.pytest_args)
            rc = subprocess.run(cmd, cwd=ROOT).returncode
        results.append((suite.name, rc, time.monotonic() - start))
    print("\n===== make test summary =====")
    for name, rc, secs in results:
        print(f"{name:<12} {'ok' if rc == 0 else 'FAILED':<7} {secs:7.1f} s")
    total = sum(r[2] for r in results)
    print(f"{'total':<12} {'':<7} {total:7.1f} s")
    passed = sum(rc == 0 for _, rc, _ in results)
    print(f"suites: {passed} passed, {len(results) - passed} failed")
    return 0 if all(rc == 0 for _, rc, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
