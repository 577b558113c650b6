#!/usr/bin/env python3
"""Electron-style patch series tooling for the patched Ray 2.60.0 wheel.

The series lives in ``patches/ray/``: ``.patches`` gives the order, one
``*.patch`` file per commit, named from its subject. The pristine base is the
Ray wheel pinned in ``patches/ray/base.toml``.

Subcommands:
    fetch-base: download (cached) and verify the pinned base wheel.
    pristine: create the pristine git tree of the base's Python sources, with
        its commit marked by ``refs/patches/upstream-head``.
    import: a throw-away git tree (``build/src``) = pristine + ``git am`` of
        the series, for editing upstream files with ordinary git.
    export: write the series back from ``build/src`` with ``git format-patch``.
    tree: the patched tree (``build/tree``) = pristine + ``git am`` of the
        series; the wheel is built from it and the tests run from it.
    check: lint the series, apply it onto the pristine base with zero fuzz,
        check that every patch provides the modules its added lines import,
        and demand a byte-identical dry-run export.
    wheel: build ``dist/ray-<version>+<local>-*.whl``: the base wheel with the
        patched tree's production files (everything under ``python/ray``
        except tests) in place of its own.
"""

import argparse
import email
import email.policy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PATCHES_DIR = ROOT / "patches" / "ray"
DEFAULT_BUILD_DIR = ROOT / "build"
DEFAULT_CACHE_DIR = Path(os.environ.get("RAYPATCH_CACHE", ROOT / ".cache" / "base"))
UPSTREAM_REF = "refs/patches/upstream-head"
SERIES_FILE = ".patches"
# Flags that make `git format-patch` output canonical (see Electron's
# script/lib/git.py); the export and the CI dry run both use exactly these.
FORMAT_PATCH_FLAGS = [
    "--zero-commit",
    "--full-index",
    "--no-stat",
    "--no-signature",
    "--keep-subject",
    "--no-renames",
    "--diff-algorithm=myers",
]
# Ray requires the DCO sign-off on every commit.
REQUIRED_TRAILERS = ("Signed-off-by:",)
# Fixed identity and dates make the pristine commit hash reproducible.
GIT_ENV = {
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "Ray Team",
    "GIT_AUTHOR_EMAIL": "ray-dev@googlegroups.com",
    "GIT_COMMITTER_NAME": "raypatch",
    "GIT_COMMITTER_EMAIL": "raypatch@localhost",
    "GIT_AUTHOR_DATE": "2000-01-01T00:00:00+0000",
    "GIT_COMMITTER_DATE": "2000-01-01T00:00:00+0000",
}


class PatchError(Exception):
    """A problem with the series or the base, with a message for the user."""


# --------------------------------------------------------------------------- #
# Small helpers
# --------------------------------------------------------------------------- #


def log(msg: str) -> None:
    print(f"[raypatch] {msg}", flush=True)


def git(
    args: List[str],
    cwd: Path,
    check: bool = True,
    dates: bool = False,
    input_bytes: Optional[bytes] = None,
) -> subprocess.CompletedProcess:
    """Run git with a neutral configuration.

    Args:
        args: Arguments after ``git``.
        cwd: Working directory.
        check: Raise PatchError on a non-zero exit.
        dates: Also pin author/committer dates (for the pristine commit).
        input_bytes: Bytes for stdin.

    Returns:
        The completed process, with stdout/stderr as text.
    """
    env = dict(os.environ)
    env.update(GIT_ENV)
    if not dates:
        env.pop("GIT_AUTHOR_DATE")
        env.pop("GIT_COMMITTER_DATE")
        env.pop("GIT_AUTHOR_NAME")
        env.pop("GIT_AUTHOR_EMAIL")
    proc = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env=env,
        input=input_bytes,
        capture_output=True,
    )
    proc.stdout = proc.stdout.decode("utf-8", "replace")
    proc.stderr = proc.stderr.decode("utf-8", "replace")
    if check and proc.returncode != 0:
        raise PatchError(
            f"git {' '.join(args)} failed in {cwd}:\n{proc.stderr.strip()}"
        )
    return proc


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_base(base_toml: Optional[Path] = None, patches_dir: Path = None) -> Dict:
    path = base_toml or (patches_dir or DEFAULT_PATCHES_DIR) / "base.toml"
    with open(path, "rb") as f:
        data = tomllib.load(f)
    base = data["base"]
    base["local_version"] = data.get("build", {}).get("local_version", "patched")
    return base


# --------------------------------------------------------------------------- #
# The base wheel
# --------------------------------------------------------------------------- #


def fetch_base(base: Dict, cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    """Return the cached base wheel, downloading it with pip if needed.

    Raises:
        PatchError: The file pip fetched (or the cached one) does not have the
            pinned sha256. Nothing is left in the cache in that case.
    """
    # Keyed by the pinned digest: a wrong pin never evicts a good download.
    cache_dir = cache_dir / base["sha256"][:16]
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / base["wheel"]
    if target.exists():
        if sha256_of(target) == base["sha256"]:
            return target
        log(f"cached {target} is corrupt; fetching it again")
        target.unlink()
    try:
        _download_base(base, target)
    finally:
        if not any(cache_dir.iterdir()):
            cache_dir.rmdir()
    return target


def _download_base(base: Dict, target: Path) -> None:
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        log(f"downloading {base['wheel']} from PyPI")
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            base["python_tag"][2:3] + "." + base["python_tag"][3:],
            "--implementation",
            "cp",
            "--platform",
            base["platform_tag"],
            "-d",
            tmp,
            f"{base['project']}=={base['version']}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise PatchError(
                f"pip could not download {base['project']}=={base['version']}:\n"
                f"{proc.stderr.strip()}"
            )
        got = Path(tmp) / base["wheel"]
        if not got.exists():
            names = ", ".join(sorted(os.listdir(tmp))) or "nothing"
            raise PatchError(f"pip downloaded {names}, not the pinned {base['wheel']}")
        digest = sha256_of(got)
        if digest != base["sha256"]:
            raise PatchError(
                f"sha256 mismatch for {base['wheel']}: base.toml pins "
                f"{base['sha256']} but PyPI served {digest}. Refusing to build "
                "from an unverified base."
            )
        os.replace(got, target)


def unpacked_base(base: Dict, build_dir: Path, cache_dir: Path) -> Path:
    """Return a directory with the verified base wheel unpacked (cached)."""
    dest = build_dir / f"base-{base['sha256'][:12]}"
    if (dest / ".complete").exists():
        return dest
    wheel = fetch_base(base, cache_dir)
    shutil.rmtree(dest, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=build_dir, prefix=".unpack-"))
    try:
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                zf.extract(info, tmp)
                mode = (info.external_attr >> 16) & 0o777
                if mode:
                    os.chmod(tmp / info.filename, mode)
        (tmp / ".complete").write_text(base["sha256"] + "\n")
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def ensure_pristine(base: Dict, build_dir: Path, cache_dir: Path) -> Path:
    """Return the pristine git tree: the base's Python sources at python/ray.

    Its single commit is reproducible (fixed identity and dates) and marked by
    ``refs/patches/upstream-head``.
    """
    repo = build_dir / "pristine"
    stamp = repo / ".git" / "raypatch-base"
    if stamp.exists() and stamp.read_text().strip() == base["sha256"]:
        return repo
    src = unpacked_base(base, build_dir, cache_dir)
    shutil.rmtree(repo, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=build_dir, prefix=".pristine-"))
    try:
        log("creating the pristine git tree of the base's Python sources")
        for path in sorted((src / "ray").rglob("*.py")):
            rel = path.relative_to(src)
            out = tmp / "python" / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out)
        git(["init", "-q", "-b", "main"], tmp)
        git(["add", "-A"], tmp)
        git(
            [
                "commit",
                "-q",
                "-m",
                f"Ray {base['version']} wheel sources\n\n"
                f"{base['wheel']} sha256 {base['sha256']}\n"
                f"ray.__commit__ {base['commit']}",
            ],
            tmp,
            dates=True,
        )
        git(["update-ref", UPSTREAM_REF, "HEAD"], tmp)
        (tmp / ".git" / "raypatch-base").write_text(base["sha256"] + "\n")
        os.replace(tmp, repo)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return repo


# --------------------------------------------------------------------------- #
# The series
# --------------------------------------------------------------------------- #


def read_series(patches_dir: Path) -> List[str]:
    series = patches_dir / SERIES_FILE
    if not series.exists():
        return []
    return [
        line.strip()
        for line in series.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def lint_series(patches_dir: Path) -> List[str]:
    """Return problems with the series file, its patches and their bodies."""
    problems = []
    if not (patches_dir / SERIES_FILE).exists():
        return [f"{patches_dir}/{SERIES_FILE} (the series file) is missing"]
    names = read_series(patches_dir)
    seen = set()
    for name in names:
        if name in seen:
            problems.append(f"{SERIES_FILE} lists {name} more than once")
        seen.add(name)
        if not (patches_dir / name).exists():
            problems.append(f"{SERIES_FILE} lists {name}, but there is no such file")
    for path in sorted(patches_dir.glob("*.patch")):
        if path.name not in seen:
            problems.append(f"{path.name} is not listed in {SERIES_FILE}")
    for name in names:
        path = patches_dir / name
        if path.exists():
            problems.extend(f"{name}: {p}" for p in lint_patch(path))
    return problems


def patch_description(text: str) -> Tuple[str, str]:
    """Return (subject, body) of a format-patch file."""
    head = re.split(r"\n---\n|\ndiff --git ", text, maxsplit=1)[0]
    if head.startswith("From "):
        head = head.split("\n", 1)[1]  # the mbox separator line
    msg = email.message_from_string(head, policy=email.policy.compat32)
    subject = " ".join((msg.get("Subject") or "").split())
    body = msg.get_payload() if not msg.is_multipart() else ""
    return subject, (body or "").strip()


def lint_patch(path: Path) -> List[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    problems = []
    if "\ndiff --git " not in text:
        problems.append("contains no diff")
    subject, body = patch_description(text)
    if not subject:
        problems.append("has no subject")
    prose = [
        ln for ln in body.splitlines() if ln.strip() and not re.match(r"^\S+: ", ln)
    ]
    if not prose:
        problems.append("has no description saying why it exists")
    for trailer in REQUIRED_TRAILERS:
        if not re.search(rf"^{re.escape(trailer)} \S", body, re.M):
            problems.append(f"lacks the trailer '{trailer}'")
    return problems


def _failing_file(stderr: str) -> str:
    for pattern in (
        r"patch failed: ([^:\n]+):\d+",
        r"error: ([^:\n]+): does not exist in index",
        r"error: ([^:\n]+): No such file",
        r"error: ([^:\n]+): already exists",
        r"error: ([^:\n]+): patch does not apply",
    ):
        m = re.search(pattern, stderr)
        if m:
            return m.group(1)
    return "?"


def apply_series(
    repo: Path, patches_dir: Path, check_imports: Optional[Path] = None
) -> None:
    """``git am`` every patch of the series onto ``repo``, with zero fuzz.

    Args:
        repo: A clone of the pristine tree.
        patches_dir: The series.
        check_imports: The unpacked base wheel: also demand that, after each
            patch, every module its added lines import exists in the tree or
            is a compiled module of the base (each patch self-contained).

    Raises:
        PatchError: Naming the first patch that does not apply and its file,
            or (check_imports) the first patch that imports a missing module.
    """
    for name in read_series(patches_dir):
        patch = patches_dir / name
        proc = git(["apply", "--check", str(patch)], repo, check=False)
        if proc.returncode != 0:
            raise PatchError(
                f"patch {name} does not apply with zero fuzz: "
                f"file {_failing_file(proc.stderr)}\n{proc.stderr.strip()}"
            )
        proc = git(["am", "-q", "--keep", "--keep-cr", str(patch)], repo, check=False)
        if proc.returncode != 0:
            git(["am", "--abort"], repo, check=False)
            raise PatchError(f"git am failed on {name}:\n{proc.stderr.strip()}")
        missing = (
            unresolved_imports(repo, patch, check_imports) if check_imports else []
        )
        if missing:
            raise PatchError(
                f"patch {name} imports modules that neither the base nor the "
                f"series up to it provides: {', '.join(missing)}"
            )


def export_series(repo: Path, out_dir: Path) -> List[str]:
    """Write the commits after ``refs/patches/upstream-head`` as a series.

    Returns:
        The patch file names, in order.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        git(
            ["format-patch", *FORMAT_PATCH_FLAGS, "-o", tmp, f"{UPSTREAM_REF}..HEAD"],
            repo,
        )
        names = []
        for path in sorted(Path(tmp).iterdir()):
            name = re.sub(r"^\d{4}-", "", path.name)
            if name in names:
                raise PatchError(f"two commits export to the same file name {name}")
            names.append(name)
            shutil.copyfile(path, out_dir / name)
    (out_dir / SERIES_FILE).write_text("".join(f"{n}\n" for n in names))
    return names


def clone_pristine(pristine: Path, dest: Path) -> None:
    git(["clone", "-q", "--no-hardlinks", str(pristine), str(dest)], pristine.parent)
    head = git(["rev-parse", "HEAD"], dest).stdout.strip()
    git(["update-ref", UPSTREAM_REF, head], dest)
    git(["checkout", "-q", "-B", "patches"], dest)


# --------------------------------------------------------------------------- #
# Commands
# --------------------------------------------------------------------------- #


def cmd_import(args) -> None:
    base = load_base(args.base_toml, args.patches_dir)
    pristine = ensure_pristine(base, args.build_dir, args.cache_dir)
    src = args.build_dir / "src"
    if src.exists():
        dirty = git(["status", "--porcelain"], src, check=False).stdout.strip()
        if dirty and not args.force:
            raise PatchError(
                f"{src} has uncommitted changes; commit or export them, or pass "
                "--force to throw them away"
            )
        shutil.rmtree(src)
    clone_pristine(pristine, src)
    apply_series(src, args.patches_dir)
    n = len(read_series(args.patches_dir))
    log(f"imported {n} patches into {src} (branch 'patches', base {UPSTREAM_REF})")
    log("edit with git (commit, --fixup, rebase -i), then `make patches-export`")


def cmd_export(args) -> None:
    src = args.build_dir / "src"
    if not (src / ".git").exists():
        raise PatchError(f"{src} does not exist; run `make patches-import` first")
    if git(["status", "--porcelain"], src).stdout.strip():
        raise PatchError(f"{src} has uncommitted changes; commit them first")
    for old in args.patches_dir.glob("*.patch"):
        old.unlink()
    names = export_series(src, args.patches_dir)
    log(f"exported {len(names)} patches to {args.patches_dir}")


def cmd_check(args) -> None:
    problems = lint_series(args.patches_dir)
    if problems:
        raise PatchError("series lint failed:\n  " + "\n  ".join(problems))
    base = load_base(args.base_toml, args.patches_dir)
    pristine = ensure_pristine(base, args.build_dir, args.cache_dir)
    with tempfile.TemporaryDirectory(dir=args.build_dir) as tmp:
        work = Path(tmp) / "tree"
        clone_pristine(pristine, work)
        base_files = unpacked_base(base, args.build_dir, args.cache_dir)
        apply_series(work, args.patches_dir, check_imports=base_files)
        out = Path(tmp) / "export"
        names = export_series(work, out)
        diffs = []
        for name in names + [SERIES_FILE]:
            if (out / name).read_bytes() != (args.patches_dir / name).read_bytes():
                diffs.append(name)
        if diffs:
            raise PatchError(
                "re-export is not byte-identical for: "
                + ", ".join(diffs)
                + ". Run `make patches-import && make patches-export` and commit."
            )
    log(
        f"{len(names)} patches: series lint ok, zero-fuzz apply ok, "
        "imports self-contained, re-export byte-identical"
    )


def cmd_fetch_base(args) -> None:
    base = load_base(args.base_toml, args.patches_dir)
    log(f"base ok: {fetch_base(base, args.cache_dir)}")


def cmd_pristine(args) -> None:
    base = load_base(args.base_toml, args.patches_dir)
    log(f"pristine tree: {ensure_pristine(base, args.build_dir, args.cache_dir)}")


def series_digest(patches_dir: Path, base: Dict) -> str:
    """Digest of everything the patched tree is made of."""
    digest = hashlib.sha256(base["sha256"].encode())
    for name in read_series(patches_dir):
        digest.update(name.encode() + (patches_dir / name).read_bytes())
    return digest.hexdigest()


def ensure_tree(
    base: Dict, build_dir: Path, cache_dir: Path, patches_dir: Path
) -> Path:
    """Return ``build/tree``: the pristine tree with the series applied by git am.

    Rebuilt from scratch whenever the base or the series changes, so it never
    carries anything but what the series creates.
    """
    tree = build_dir / "tree"
    digest = series_digest(patches_dir, base)
    stamp = tree / ".git" / "raypatch-series"
    if stamp.exists() and stamp.read_text().strip() == digest:
        return tree
    pristine = ensure_pristine(base, build_dir, cache_dir)
    shutil.rmtree(tree, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=build_dir, prefix=".tree-"))
    try:
        work = tmp / "tree"
        clone_pristine(pristine, work)
        apply_series(work, patches_dir)
        (work / ".git" / "raypatch-series").write_text(digest + "\n")
        os.replace(work, tree)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"patched tree: {tree} ({len(read_series(patches_dir))} patches)")
    return tree


def is_test_file(rel: str) -> bool:
    """Whether a tree path is test or build metadata (never shipped in wheels)."""
    parts = rel.split("/")
    # Not `test_*.py` in general: ray/serve/_private/test_utils.py ships.
    return "tests" in parts or parts[-1] in ("BUILD.bazel", "BUILD", "conftest.py")


def shipped_changes(tree: Path) -> List[Tuple[str, str]]:
    """(status, path under python/) of the production files the series changes."""
    out = git(
        ["diff", "--name-status", "--no-renames", f"{UPSTREAM_REF}..HEAD"], tree
    ).stdout
    changes = []
    for line in out.splitlines():
        status, path = line.split("\t", 1)
        if path.startswith("python/ray/") and not is_test_file(path):
            changes.append((status, path[len("python/") :]))
    return changes


IMPORT_RE = re.compile(r"^\+\s*(?:from|import)\s+(ray(?:\.\w+)+)")


def unresolved_imports(
    repo: Path, patch: Path, compiled: Optional[Path] = None
) -> List[str]:
    """Modules the patch's added lines import that ``repo`` does not have.

    Args:
        repo: The tree the patch was applied to.
        patch: The patch.
        compiled: The unpacked base wheel, for its compiled modules
            (``ray/_raylet.so``), which the tree of Python sources lacks.
    """
    missing = []
    for line in patch.read_text(encoding="utf-8", errors="replace").splitlines():
        m = IMPORT_RE.match(line)
        if not m:
            continue
        mod = m.group(1)
        rel = mod.replace(".", "/")
        path = repo / "python" / rel
        found = path.with_suffix(".py").exists() or (path / "__init__.py").exists()
        if not found and compiled is not None:
            found = (compiled / f"{rel}.so").exists()
        if not found and mod not in missing:
            missing.append(mod)
    return missing


def cmd_tree(args) -> None:
    base = load_base(args.base_toml, args.patches_dir)
    tree = ensure_tree(base, args.build_dir, args.cache_dir, args.patches_dir)
    log(f"patched tree: {tree}")


def cmd_wheel(args) -> None:
    base = load_base(args.base_toml, args.patches_dir)
    problems = lint_series(args.patches_dir)
    if problems:
        raise PatchError("series lint failed:\n  " + "\n  ".join(problems))
    args.build_dir.mkdir(parents=True, exist_ok=True)
    series = read_series(args.patches_dir)
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(series_digest(args.patches_dir, base).encode())
    digest = digest.hexdigest()
    dist = args.dist_dir
    stamp = dist / ".inputs-sha256"
    existing = sorted(dist.glob("ray-*.whl")) if dist.exists() else []
    if len(existing) == 1 and stamp.exists() and stamp.read_text().strip() == digest:
        log(f"up to date: {existing[0]}")
        return

    src = unpacked_base(base, args.build_dir, args.cache_dir)
    tree = ensure_tree(base, args.build_dir, args.cache_dir, args.patches_dir)
    changes = shipped_changes(tree)
    version = f"{base['version']}+{base['local_version']}"
    staging = Path(tempfile.mkdtemp(dir=args.build_dir, prefix=".wheel-"))
    try:
        log("staging the base wheel contents")
        out = staging / "tree"
        shutil.copytree(src, out, symlinks=True)
        (out / ".complete").unlink()
        for status, rel in changes:
            target = out / rel
            if status == "D":
                target.unlink()
                continue
            if status == "A" and target.exists():
                raise PatchError(
                    f"python/{rel} is added by the series but the base ships it"
                )
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tree / "python" / rel, target)
        old_info = out / f"{base['project']}-{base['version']}.dist-info"
        new_info = out / f"{base['project']}-{version}.dist-info"
        os.rename(old_info, new_info)
        meta = (new_info / "METADATA").read_text()
        meta, n = re.subn(
            r"^Version: .*$", f"Version: {version}", meta, count=1, flags=re.M
        )
        if n != 1:
            raise PatchError("METADATA of the base wheel has no Version line")
        (new_info / "METADATA").write_text(meta)
        (new_info / "PATCHSET.json").write_text(
            json.dumps(
                {
                    "base": {
                        k: base[k] for k in ("version", "wheel", "sha256", "commit")
                    },
                    "version": version,
                    "patches": series,
                    "changed_files": [f"python/{rel}" for _, rel in changes],
                    "inputs_sha256": digest,
                },
                indent=2,
            )
            + "\n"
        )
        log(f"packing {base['project']} {version} with the pypa wheel tool")
        packed = staging / "packed"
        packed.mkdir()
        wheel_cmd = [str(args.wheel_python), "-m", "wheel"]
        subprocess.run(
            [*wheel_cmd, "pack", str(out), "-d", str(packed)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        (built,) = packed.glob("*.whl")
        subprocess.run(
            [
                *wheel_cmd,
                "tags",
                "--remove",
                "--platform-tag",
                base["platform_tag"],
                str(built),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        (built,) = packed.glob("*.whl")
        dist.mkdir(parents=True, exist_ok=True)
        for old in dist.glob("ray-*.whl"):
            old.unlink()
        stamp.unlink(missing_ok=True)
        final = dist / built.name
        shutil.move(str(built), final)
        stamp.write_text(digest + "\n")
        log(f"built {final} ({final.stat().st_size // (1 << 20)} MiB)")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches-dir", type=Path, default=DEFAULT_PATCHES_DIR)
    parser.add_argument("--build-dir", type=Path, default=DEFAULT_BUILD_DIR)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument(
        "--base-toml", type=Path, default=None, help="default: <patches-dir>/base.toml"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch-base").set_defaults(func=cmd_fetch_base)
    sub.add_parser("pristine").set_defaults(func=cmd_pristine)
    p = sub.add_parser("import")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_import)
    sub.add_parser("export").set_defaults(func=cmd_export)
    sub.add_parser("check").set_defaults(func=cmd_check)
    sub.add_parser("tree").set_defaults(func=cmd_tree)
    p = sub.add_parser("wheel")
    p.add_argument("--dist-dir", type=Path, default=ROOT / "dist")
    p.add_argument(
        "--wheel-python",
        type=Path,
        default=Path(sys.executable),
        help="a Python that has the pypa `wheel` package",
    )
    p.set_defaults(func=cmd_wheel)
    args = parser.parse_args(argv)
    args.build_dir.mkdir(parents=True, exist_ok=True)
    try:
        args.func(args)
    except PatchError as e:
        print(f"raypatch: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
