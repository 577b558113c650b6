#!/usr/bin/env python3
"""Create or refresh the development venv with the built patched Ray wheel.

The venv gets ``ray[serve]`` from ``dist/`` plus pinned test dependencies. When
the wheel in ``dist/`` changes, only Ray itself is reinstalled.
"""

import argparse
import subprocess
import sys
from pathlib import Path

from raypatch import sha256_of


def pip(venv: Path, *args: str) -> None:
    cmd = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*cmd, *args], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, required=True)
    parser.add_argument("--dist", type=Path, required=True)
    parser.add_argument("pins", nargs="*", help="extra pinned requirements")
    args = parser.parse_args()

    wheels = sorted(args.dist.glob("ray-*.whl"))
    if len(wheels) != 1:
        print(f"dev_env: expected one ray wheel in {args.dist}, found {wheels}")
        return 2
    wheel = wheels[0].resolve()
    digest = sha256_of(wheel)
    stamp = args.venv / ".ray-wheel"
    pins_stamp = args.venv / ".pins"
    pins = " ".join(args.pins)

    if not (args.venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(args.venv)], check=True)
    if not pins_stamp.exists() or pins_stamp.read_text() != pins:
        print(f"dev_env: installing ray[serve] from {wheel.name} and {pins}")
        pip(args.venv, "install", "-qq", f"ray[serve] @ {wheel.as_uri()}", *args.pins)
        pins_stamp.write_text(pins)
    # The version (2.60.0+<local>) stays the same across rebuilds, so pip
    # would keep an older build: reinstall Ray itself whenever the wheel changed.
    if not stamp.exists() or stamp.read_text() != digest:
        print(f"dev_env: reinstalling ray from {wheel.name}")
        pip(args.venv, "install", "-qq", "--force-reinstall", "--no-deps", str(wheel))
        stamp.write_text(digest)
    else:
        print(f"dev_env: {args.venv} is up to date with {wheel.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
