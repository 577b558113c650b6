"""Tests of the patch series tooling (ci/raypatch.py) on the real pinned base."""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RAYPATCH = ROOT / "ci" / "raypatch.py"
PATCHES = ROOT / "patches" / "ray"
CACHE = ROOT / ".cache" / "base"
UPSTREAM = "refs/patches/upstream-head"


def run(*args, build_dir, patches_dir=PATCHES, cache_dir=CACHE, extra=()):
    cmd = [
        sys.executable,
        str(RAYPATCH),
        "--patches-dir",
        str(patches_dir),
        "--build-dir",
        str(build_dir),
        "--cache-dir",
        str(cache_dir),
        *extra,
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("build")
    proc = run("pristine", build_dir=d)
    assert proc.returncode == 0, proc.stderr
    return d


def git(cwd, *args):
    env = {
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    )


@pytest.fixture
def synthetic_series(build_dir, tmp_path):
    """A two-patch series made with the tool itself (import, commit, export)."""
    patches = tmp_path / "patches"
    patches.mkdir()
    shutil.copy(PATCHES / "base.toml", patches / "base.toml")
    (patches / ".patches").write_text("")
    b = tmp_path / "build"
    shutil.copytree(build_dir, b, symlinks=True)
    assert run("import", "--force", build_dir=b, patches_dir=patches).returncode == 0
    src = b / "src"
    for i, rel in enumerate(
        [
            "python/ray/serve/_private/constants.py",
            "python/ray/serve/_private/common.py",
        ]
    ):
        path = src / rel
        path.write_text(path.read_text() + f"\n# synthetic change {i}\n")
        git(src, "add", rel)
        git(
            src,
            "commit",
            "-q",
            "-m",
            f"serve: synthetic change {i}\n\nExercises the patch tools.\n\n"
            "Signed-off-by: t <t@example.com>",
        )
    proc = run("export", build_dir=b, patches_dir=patches)
    assert proc.returncode == 0, proc.stderr
    return patches, b


def test_real_series_round_trip_is_byte_identical(build_dir, tmp_path):
    """Import the real series, export it again: every file is byte-identical."""
    patches = tmp_path / "patches"
    shutil.copytree(PATCHES, patches)
    b = tmp_path / "build"
    shutil.copytree(build_dir, b, symlinks=True)
    proc = run("import", build_dir=b, patches_dir=patches)
    assert proc.returncode == 0, proc.stderr
    proc = run("export", build_dir=b, patches_dir=patches)
    assert proc.returncode == 0, proc.stderr
    before = {p.name: p.read_bytes() for p in PATCHES.iterdir()}
    after = {p.name: p.read_bytes() for p in patches.iterdir()}
    assert after == before


def test_real_series_passes_check(build_dir):
    proc = run("check", build_dir=build_dir)
    assert proc.returncode == 0, proc.stderr
    assert "re-export byte-identical" in proc.stdout


def test_synthetic_series_names_and_check(synthetic_series):
    patches, b = synthetic_series
    assert (patches / ".patches").read_text().splitlines() == [
        "serve-synthetic-change-0.patch",
        "serve-synthetic-change-1.patch",
    ]
    text = (patches / "serve-synthetic-change-0.patch").read_text()
    assert text.startswith("From 0000000000000000000000000000000000000000 ")
    assert "Subject: serve: synthetic change 0" in text
    assert "a/python/ray/serve/_private/constants.py" in text
    proc = run("check", build_dir=b, patches_dir=patches)
    assert proc.returncode == 0, proc.stderr


def test_broken_patch_names_patch_and_file(synthetic_series):
    patches, b = synthetic_series
    broken = patches / "serve-synthetic-change-1.patch"
    text = broken.read_text()
    # Corrupt one context line of the hunk: the patch no longer applies exactly.
    lines = text.splitlines(keepends=True)
    idx = next(
        i
        for i, ln in enumerate(lines)
        if ln.startswith(" ")
        and ln.strip()
        and i > text[: text.index("@@")].count("\n")
    )
    lines[idx] = " this line is not in common.py\n"
    broken.write_text("".join(lines))
    proc = run("check", build_dir=b, patches_dir=patches)
    assert proc.returncode == 2
    assert "patch serve-synthetic-change-1.patch does not apply" in proc.stderr
    assert "python/ray/serve/_private/common.py" in proc.stderr


def test_missing_unlisted_duplicate_patches_fail_lint(synthetic_series):
    patches, b = synthetic_series
    (patches / "serve-synthetic-change-0.patch").unlink()
    shutil.copy(
        patches / "serve-synthetic-change-1.patch", patches / "stray-change.patch"
    )
    with open(patches / ".patches", "a") as f:
        f.write("serve-synthetic-change-1.patch\n")
    proc = run("check", build_dir=b, patches_dir=patches)
    assert proc.returncode == 2
    err = proc.stderr
    assert "lists serve-synthetic-change-0.patch, but there is no such file" in err
    assert "stray-change.patch is not listed in .patches" in err
    assert "lists serve-synthetic-change-1.patch more than once" in err


def test_patch_without_description_or_trailers_fails_lint(synthetic_series):
    patches, b = synthetic_series
    path = patches / "serve-synthetic-change-0.patch"
    text = path.read_text()
    text = text.replace("Exercises the patch tools.\n\n", "")
    text = text.replace("Signed-off-by: t <t@example.com>\n", "")
    path.write_text(text)
    proc = run("check", build_dir=b, patches_dir=patches)
    assert proc.returncode == 2
    assert "has no description saying why it exists" in proc.stderr
    assert "lacks the trailer 'Signed-off-by:'" in proc.stderr


def test_export_drift_fails_check(synthetic_series):
    """A patch that applies but is not what format-patch writes fails."""
    patches, b = synthetic_series
    path = patches / "serve-synthetic-change-0.patch"
    # e.g. exported without --zero-commit: a real commit id in the mbox line.
    path.write_text(path.read_text().replace("From " + "0" * 40, "From " + "1" * 40))
    proc = run("check", build_dir=b, patches_dir=patches)
    assert proc.returncode == 2
    assert "not byte-identical for: serve-synthetic-change-0.patch" in proc.stderr


def commit_new_module(src: Path, import_line: str, subject: str) -> None:
    """Commit a new production module and a test next to it."""
    module = src / "python/ray/serve/_private/synthetic_module.py"
    module.write_text(f"{import_line}\n\nVALUE = 1\n")
    test = src / "python/ray/serve/tests/unit/test_synthetic_module.py"
    test.parent.mkdir(parents=True, exist_ok=True)
    test.write_text("def test_value():\n    assert True\n")
    git(src, "add", "-A")
    git(
        src,
        "commit",
        "-q",
        "-m",
        f"{subject}\n\nAdds a module.\n\nSigned-off-by: t <t@example.com>",
    )


def test_patch_importing_a_module_no_patch_provides_fails_check(synthetic_series):
    patches, b = synthetic_series
    commit_new_module(
        b / "src", "from ray.serve._private.nowhere import thing", "serve: bad import"
    )
    assert run("export", build_dir=b, patches_dir=patches).returncode == 0
    proc = run("check", build_dir=b, patches_dir=patches)
    assert proc.returncode == 2
    assert "patch serve-bad-import.patch imports modules" in proc.stderr
    assert "ray.serve._private.nowhere" in proc.stderr


def test_built_wheel_is_the_patched_tree_without_tests():
    """dist/'s wheel (make wheel): the series' modules in, its tests out."""
    wheels = sorted((ROOT / "dist").glob("ray-*.whl"))
    assert len(wheels) == 1, f"run `make wheel` first: {wheels}"
    tree = ROOT / "build" / "tree"
    with zipfile.ZipFile(wheels[0]) as zf:
        names = set(zf.namelist())
        patchset = json.loads(
            zf.read(next(n for n in names if n.endswith("PATCHSET.json")))
        )
        for path in patchset["changed_files"]:
            rel = path[len("python/") :]
            assert zf.read(rel) == (tree / path).read_bytes(), path
    assert patchset["patches"] == (PATCHES / ".patches").read_text().split()
    added = subprocess.run(
        ["git", "diff", "--name-only", "--diff-filter=A", f"{UPSTREAM}..HEAD"],
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    new_modules = [p for p in added if "/tests/" not in p and p.startswith("python/")]
    new_tests = [p for p in added if "/tests/" in p]
    assert new_modules and new_tests
    assert all(p[len("python/") :] in names for p in new_modules)
    assert not any(p[len("python/") :] in names for p in new_tests)


def test_wrong_base_sha256_fails_wheel_and_leaves_nothing(tmp_path):
    patches = tmp_path / "patches"
    shutil.copytree(PATCHES, patches)
    toml = (patches / "base.toml").read_text()
    bad = "0" * 64
    (patches / "base.toml").write_text(
        toml.replace(
            "e227f6b2af8ab4626dd9a35a5860b33864325ea137383d57f854d4637ee3fea2", bad
        )
    )
    build, dist, cache = tmp_path / "build", tmp_path / "dist", tmp_path / "cache"
    proc = run(
        "wheel",
        "--dist-dir",
        str(dist),
        build_dir=build,
        patches_dir=patches,
        cache_dir=cache,
    )
    assert proc.returncode == 2
    assert "sha256 mismatch for ray-2.60.0-cp311-cp311-manylinux2014_x86_64.whl" in (
        proc.stderr
    )
    assert bad in proc.stderr
    assert not dist.exists() or not list(dist.iterdir())
    assert not list(build.iterdir()), list(build.iterdir())
    assert not list(cache.rglob("*.whl"))


if __name__ == "__main__":
    sys.exit(pytest.main(["-v", "-s", __file__]))
