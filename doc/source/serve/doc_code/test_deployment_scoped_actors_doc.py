"""The deployment-scoped actors guide: its examples run and its includes resolve.

``deployment_scoped_actors.py`` runs in a subprocess (it starts and stops its
own local Ray cluster), and every ``literalinclude`` of the guide must point at
an existing file and at markers that exist in it.
"""

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

DOC_CODE = Path(__file__).resolve().parent
SCRIPT = DOC_CODE / "deployment_scoped_actors.py"
GUIDE = DOC_CODE.parent / "advanced-guides" / "deployment-scoped-actors.md"
TIMEOUT_S = 300

# A MyST literalinclude directive: ```{literalinclude} <path> then :option: lines.
_DIRECTIVE = re.compile(
    r"^(?P<fence>`{3,}|:{3,})\{literalinclude\}\s+(?P<path>\S+)\s*\n"
    r"(?P<options>(?:\s*:[\w-]+:.*\n)*)",
    re.MULTILINE,
)
_OPTION = re.compile(r"^\s*:(?P<key>[\w-]+):\s*(?P<value>.*?)\s*$", re.MULTILINE)


def literal_includes(markdown: str) -> List[Dict[str, str]]:
    """The literalinclude directives of a MyST page: path and options."""
    includes = []
    for match in _DIRECTIVE.finditer(markdown):
        entry = {"path": match.group("path")}
        for option in _OPTION.finditer(match.group("options")):
            entry[option.group("key")] = option.group("value")
        includes.append(entry)
    return includes


def test_literal_includes_resolve():
    assert GUIDE.exists(), GUIDE
    includes = literal_includes(GUIDE.read_text())
    assert includes, "the guide has no literalinclude directives"
    for include in includes:
        path = (GUIDE.parent / include["path"]).resolve()
        assert path.is_file(), f"{include['path']} does not exist ({path})"
        text = path.read_text()
        start, end = include.get("start-after"), include.get("end-before")
        assert start and end, f"{include} lacks :start-after: or :end-before:"
        assert text.count(start) == 1, f"marker {start} not once in {path.name}"
        assert text.count(end) == 1, f"marker {end} not once in {path.name}"
        snippet = text[text.index(start) + len(start) : text.index(end)]
        assert snippet.strip(), f"{start}..{end} is empty or out of order"


def test_literal_include_parser():
    page = (
        "text\n"
        "```{literalinclude} ../doc_code/x.py\n"
        ":start-after: __begin_a__\n"
        ":end-before: __end_a__\n"
        ":language: python\n"
        "```\n"
    )
    assert literal_includes(page) == [
        {
            "path": "../doc_code/x.py",
            "start-after": "__begin_a__",
            "end-before": "__end_a__",
            "language": "python",
        }
    ]


def test_examples_run(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    output = f"stdout:\n{proc.stdout[-5000:]}\nstderr:\n{proc.stderr[-5000:]}"
    assert proc.returncode == 0, output
    assert "deployment_scoped_actors examples: OK" in proc.stdout, output
    # The status snippet printed every actor as RUNNING.
    for line in (
        "visits/Visits: counter is RUNNING",
        "echo/Echo: cursor is RUNNING",
        "tokens/Model: routing-token-manager is RUNNING",
    ):
        assert line in proc.stdout, output


if __name__ == "__main__":
    sys.exit(pytest.main(["-v", "-s", __file__]))
