#!/usr/bin/env python3
"""Lint what the patch series changes, as Ray's CI would.

* Every Python file the series adds or changes passes Ray's pinned black
  (22.10.0), so patched upstream files keep upstream's formatting.
* Every Python file the series adds passes ruff with this repo's settings
  (Ray's line length and isort sections). Upstream files are not held to
  rules upstream itself does not enforce.
"""

import argparse
import subprocess
import sys
from pathlib import Path
from typing import List

UPSTREAM_REF = "refs/patches/upstream-head"


def changed(tree: Path, diff_filter: str) -> List[str]:
    out = subprocess.run(
        [
            "git",
            "diff",
            "--name-only",
            f"--diff-filter={diff_filter}",
            f"{UPSTREAM_REF}..HEAD",
            "--",
            "*.py",
        ],
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.split()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, required=True)
    parser.add_argument("--black", required=True)
    parser.add_argument("--ruff", required=True)
    args = parser.parse_args()
    config = Path(__file__).resolve().parent.parent / "pyproject.toml"
    touched = changed(args.tree, "AM")
    added = changed(args.tree, "A")
    rc = subprocess.run(
        [str(Path(args.black).resolve()), "--check", "--quiet", *touched],
        cwd=args.tree,
    ).returncode
    rc |= subprocess.run(
        [str(Path(args.ruff).resolve()), "check", "--quiet", "--config", str(config)]
        + added,
        cwd=args.tree,
    ).returncode
    if rc == 0:
        print(
            f"lint_series: {len(touched)} changed files pass black 22.10, "
            f"{len(added)} new files pass ruff"
        )
    return 1 if rc else 0


if __name__ == "__main__":
    sys.exit(main())
