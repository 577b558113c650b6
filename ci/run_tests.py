#!/usr/bin/env python3
"""Run the test suites of `make test` one after another and report their times.

Suites run serially: the integration tests start real Ray clusters and Serve
(on free ports), so running them side by side on 2 cores would only add noise.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import List, NamedTuple

ROOT = Path(__file__).resolve().parent.parent


class Command(NamedTuple):
    """A suite that is a plain command, not pytest: argv after the venv's python."""

    argv: List[str]


SUITES = [
    ("patch tools", ["ci"]),
    (
        "unit",
        [
            "python/ray/serve/tests/unit",
            "python/ray/llm/tests/serve/cpu/deployments/routers/unit",
        ],
    ),
    (
        "integration",
        [
            "python/ray/serve/tests",
            "python/ray/llm/tests",
            "doc",
            "--ignore=python/ray/serve/tests/unit",
            "--ignore=python/ray/llm/tests/serve/cpu/deployments/routers/unit",
            "-m",
            "not chaos",
        ],
    ),
    ("chaos smoke", ["python/ray/serve/tests", "-m", "chaos"]),
    # The release workloads in smoke mode (`make release-smoke` runs the whole
    # soak smoke; here one scenario, as the chaos smoke above runs them all).
    (
        "release smoke",
        Command(
            [
                "release/serve_tests/workloads/deployment_actor_scale.py",
                "--smoke",
                "--output",
                "out/release-smoke/deployment_actor_scale.json",
            ]
        ),
    ),
    (
        "soak smoke",
        Command(
            [
                "release/serve_tests/workloads/deployment_actor_chaos.py",
                "--smoke",
                "--scenarios",
                "tree_kill",
                "--output",
                "out/release-smoke/deployment_actor_chaos.json",
                "--output-dir",
                "out/release-smoke/chaos",
            ]
        ),
    ),
    # Stock Ray 2.60.0 vs the patched wheel, short (`make bench-smoke`).
    ("bench smoke", Command(["ci/bench.py", "--smoke"])),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", required=True)
    parser.add_argument("--only", action="append", help="run only these suites")
    args = parser.parse_args()
    results = []
    for name, targets in SUITES:
        if args.only and name not in args.only:
            continue
        if isinstance(targets, Command):
            cmd = [args.python, *targets.argv]
        else:
            paths = [
                t for t in targets if not t.startswith("-") and "/" in t or t == "ci"
            ]
            targets = [
                t
                for t in targets
                if t.startswith("-")
                or t in ("not chaos", "chaos")
                or (ROOT / t).exists()
            ]
            if not any((ROOT / p).exists() for p in paths):
                continue
            cmd = [args.python, "-m", "pytest", "-c", "pyproject.toml", *targets]
        print(f"\n===== {name} =====", flush=True)
        start = time.monotonic()
        rc = subprocess.run(cmd, cwd=ROOT).returncode
        # pytest exits 5 when a marker selects nothing; that suite is just empty.
        if rc == 5 and not isinstance(targets, Command):
            rc = 0
        results.append((name, rc, time.monotonic() - start))
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
