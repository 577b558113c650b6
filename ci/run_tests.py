#!/usr/bin/env python3
"""Run the test suites of `make test` one after another and report their times.

The tests are the series' own, run from the patched tree (`make tree`: the
pristine sources with the series applied by `git am`, nothing else) against
the wheel built from that tree, plus the fork's tooling tests in `ci/`. Suites
run serially: the integration tests start real Ray clusters, and side by side
on 2 cores they would only add noise.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import List, NamedTuple, Optional

ROOT = Path(__file__).resolve().parent.parent


class Suite(NamedTuple):
    name: str
    # pytest arguments (paths relative to the tree unless they start with //),
    # or None for the doc code scripts.
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
    """Each doc_code file runs top to bottom as a script (as upstream's doc CI)."""
    rc = 0
    for script in sorted((tree / "doc" / "source" / "serve" / "doc_code").glob("*.py")):
        print(f"--- {script.relative_to(tree)}", flush=True)
        proc = subprocess.run([python, str(script)], cwd=ROOT)
        print(f"--- {script.name}: {'ok' if proc.returncode == 0 else 'FAILED'}")
        rc |= proc.returncode
    return rc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", required=True)
    parser.add_argument("--tree", type=Path, required=True)
    parser.add_argument("--only", action="append", help="run only these suites")
    args = parser.parse_args()
    tree = args.tree.resolve()
    results = []
    for suite in SUITES:
        if args.only and suite.name not in args.only:
            continue
        print(f"\n===== {suite.name} =====", flush=True)
        start = time.monotonic()
        if suite.pytest_args is None:
            rc = run_doc_code(args.python, tree)
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
