#!/usr/bin/env python3
"""Lint: test files run standalone and are registered as upstream registers them.

* Every test file, the series' and the fork's (``ci/``), ends with
  ``if __name__ == "__main__": sys.exit(pytest.main(...))``.
* Upstream's ``python/ray/serve/tests/unit/BUILD.bazel`` and
  ``python/ray/llm/tests/BUILD.bazel`` glob their test files, so tests added
  there need no registration. ``python/ray/serve/tests/BUILD.bazel`` lists its
  files by size; the wheel ships no BUILD files, so a patch that adds a test
  there names it in its "Registration:" paragraph, the hunk its upstream PR
  adds.
"""

import re
import sys
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parent.parent
PATCHES = ROOT / "patches" / "ray"
MAIN_RE = re.compile(
    r'^if __name__ == "__main__":\n\s+sys\.exit\(pytest\.main\(', re.MULTILINE
)
ADDED_RE = re.compile(r"^--- /dev/null\n\+\+\+ b/(\S+)$", re.MULTILINE)
# Directories whose BUILD.bazel lists test files explicitly.
LISTED_DIRS = ("python/ray/serve/tests/",)


def added_files(patch_text: str) -> List[str]:
    return ADDED_RE.findall(patch_text)


def added_file_text(patch_text: str, path: str) -> str:
    """The content of a file the patch creates."""
    start = patch_text.index(f"+++ b/{path}\n")
    hunk = patch_text[start:].split("\ndiff --git ", 1)[0]
    return "".join(
        line[1:] + "\n"
        for line in hunk.splitlines()[2:]
        if line.startswith("+") and not line.startswith("+++")
    )


def registration_note(patch_text: str) -> str:
    description = patch_text.split("\ndiff --git ", 1)[0]
    m = re.search(r"^Registration:(.*?)(?:\n\n|\Z)", description, re.S | re.M)
    return m.group(1) if m else ""


def problems(root: Path = ROOT) -> List[str]:
    found = []
    tests: Dict[str, str] = {}
    for patch in sorted((root / "patches" / "ray").glob("*.patch")):
        text = patch.read_text()
        note = registration_note(text)
        for path in added_files(text):
            name = path.rsplit("/", 1)[-1]
            if not (name.startswith("test_") and name.endswith(".py")):
                continue
            tests[path] = added_file_text(text, path)
            in_listed = any(
                path.startswith(d) and "/" not in path[len(d) :] for d in LISTED_DIRS
            )
            if in_listed and name not in note:
                found.append(
                    f"{patch.name}: adds {path} but its Registration paragraph "
                    "does not name it (python/ray/serve/tests/BUILD.bazel lists "
                    "its tests)"
                )
            if path.endswith("BUILD.bazel"):
                found.append(f"{patch.name}: adds a BUILD file {path}")
    for path in sorted((root / "ci").rglob("test_*.py")):
        tests[str(path.relative_to(root))] = path.read_text()
    for path, text in sorted(tests.items()):
        if not MAIN_RE.search(text):
            found.append(
                f'{path}: lacks the `if __name__ == "__main__": '
                "sys.exit(pytest.main([...]))` block"
            )
    return found


def main() -> int:
    found = problems()
    for p in found:
        print(f"lint_tests: {p}")
    if found:
        return 1
    print("lint_tests: every test file has its __main__ block and its registration")
    return 0


if __name__ == "__main__":
    sys.exit(main())
