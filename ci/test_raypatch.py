"""Tests of the patch series tooling (ci/raypatch.py) on the real pinned base."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RAYPATCH = ROOT / "ci" / "raypatch.py"
PATCHES = ROOT / "patches" / "ray"
CACHE = ROOT / ".cache" / "base"


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
            "Forwarded: not-needed\nLast-Update: 2026-11-22",
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
    text = text.replace("Forwarded: not-needed\n", "")
    path.write_text(text)
    proc = run("check", build_dir=b, patches_dir=patches)
    assert proc.returncode == 2
    assert "has no description saying why it exists" in proc.stderr
    assert "lacks the DEP-3 trailer 'Forwarded:'" in proc.stderr


def test_export_drift_fails_check(synthetic_series):
    """A patch that applies but is not what format-patch writes fails."""
    patches, b = synthetic_series
    path = patches / "serve-synthetic-change-0.patch"
    # e.g. exported without --zero-commit: a real commit id in the mbox line.
    path.write_text(path.read_text().replace("From " + "0" * 40, "From " + "1" * 40))
    proc = run("check", build_dir=b, patches_dir=patches)
    assert proc.returncode == 2
    assert "not byte-identical for: serve-synthetic-change-0.patch" in proc.stderr


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
