#!/usr/bin/env python3
"""Lint: every test file is registered in its BUILD.bazel and runs standalone.

Ray registers test files with ``py_test_module_list(files=[...])`` (or
``py_test(srcs=[...])``) in the BUILD.bazel next to them, and every test file
ends with ``if __name__ == "__main__": sys.exit(pytest.main(...))``.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEARCH_DIRS = ["python", "ci", "release", "doc"]
MAIN_RE = re.compile(
    r'^if __name__ == "__main__":\n\s+sys\.exit\(pytest\.main\(', re.MULTILINE
)


def registered_files(build_file: Path) -> set:
    text = build_file.read_text()
    names = set()
    for block in re.findall(r"(?:files|srcs)\s*=\s*\[(.*?)\]", text, re.S):
        names.update(re.findall(r'"([^"]+\.py)"', block))
    return names


def problems(root: Path = ROOT) -> list:
    found = []
    for top in SEARCH_DIRS:
        base = root / top
        if not base.exists():
            continue
        for path in sorted(base.rglob("test_*.py")):
            if "__pycache__" in path.parts:
                continue
            rel = path.relative_to(root)
            build = path.parent / "BUILD.bazel"
            if not build.exists():
                found.append(f"{rel}: no BUILD.bazel next to it")
            elif path.name not in registered_files(build):
                found.append(f"{rel}: not registered in {build.relative_to(root)}")
            if not MAIN_RE.search(path.read_text()):
                found.append(
                    f'{rel}: lacks the `if __name__ == "__main__": '
                    "sys.exit(pytest.main([...]))` block"
                )
        for build in sorted(base.rglob("BUILD.bazel")):
            for name in sorted(registered_files(build)):
                if not (build.parent / name).exists():
                    found.append(
                        f"{build.relative_to(root)} registers {name}, which does "
                        "not exist"
                    )
    return found


def main() -> int:
    found = problems()
    for p in found:
        print(f"lint_tests: {p}")
    if found:
        return 1
    print("lint_tests: every test file is registered and has its __main__ block")
    return 0


if __name__ == "__main__":
    sys.exit(main())
