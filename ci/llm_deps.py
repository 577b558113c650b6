#!/usr/bin/env python3
"""Install what Serve LLM's OpenAI path needs on a CPU-only machine: no vLLM, no torch.

    python3 ci/llm_deps.py --python .venv/bin/python --cache-dir build/wheels [--stock]

1. Installs the exact pins below (only those whose installed version differs).
2. Downloads the pinned ``sglang`` wheel with ``pip download --no-deps`` into
   --cache-dir (once) and extracts only the modules that
   ``ray/llm/_internal/serve/core/configs/openai_api_models.py`` imports into the
   venv's site-packages; a marker file records the pin and the wheel's sha256.
   Nothing of sglang is committed to this repository.

It never installs torch, vllm or the rest of sglang. Re-runs take about a second.
"""
import argparse
import ast
import hashlib
import json
import os
import subprocess
import textwrap
import zipfile

# --------------------------------------------------------------------------------------
# Exact pins, and why each is needed.
# --------------------------------------------------------------------------------------
PINS = {
    # Imported at module level by sglang/srt/entrypoints/openai/protocol.py
    # (ResponseToolState is a msgspec.Struct).
    "msgspec": "0.23.0",
    # protocol.py imports openai.types.responses / openai.types.shared; also the
    # OpenAI client used by smoke tests.
    "openai": "3.57.0",
    # ray.llm._internal.common.utils.cloud_filesystem.pyarrow_filesystem imports
    # pyarrow.fs; reached through LLMConfig / model-loading code.
    "pyarrow": "26.0.1",
    # ray.llm._internal.serve.utils.server_utils imports httpx.HTTPStatusError;
    # reached by llm_server.py at import time.
    "httpx": "0.28.1",
    # FastAPI refuses to declare the ingress's Form/UploadFile routes
    # (/v1/audio/transcriptions) without python-multipart.
    "python-multipart": "0.0.34",
    # Upstream benchmark client (ray.llm._internal.serve.benchmark) loads a tokenizer
    # with transformers.AutoTokenizer; make_tokenizer.py trains one with tokenizers.
    # transformers alone pulls no torch (checked: huggingface_hub, safetensors, regex...).
    # Optional for the engine (it can count tokens with the same tokenizer).
    "transformers": "5.24.0",
    "tokenizers": "0.23.3",
    # Benchmark client: aiohttp (HTTP streaming), numpy (percentiles), tqdm (progress).
    # aiohttp/numpy already come with ray[serve]; pinned so the set is reproducible.
    "aiohttp": "3.14.5",
    "numpy": "2.4.6",
    "tqdm": "4.70.1",
}

# Only for stock Ray 2.60.0 (the benchmark's baseline): with fastapi >= 0.137 its
# OpenAiIngress answers every route with 400 "Field required ('query','self')" inside
# replicas. The patched wheel fixes that ("Class-based ingress" patch), so its venv
# keeps the fastapi that ray[serve] brings.
STOCK_PINS = {"fastapi": "0.136.3"}

# sglang wheel that provides the OpenAI protocol models (plain pydantic).
SGLANG_PIN = "0.5.23"

# Files copied verbatim out of the sglang wheel.
SGLANG_VERBATIM = [
    # The module openai_api_models.py imports from:
    #   from sglang.srt.entrypoints.openai.protocol import ChatCompletionRequest, ...
    "sglang/srt/entrypoints/openai/protocol.py",
    # Its package __init__ (empty in the wheel).
    "sglang/srt/entrypoints/openai/__init__.py",
    # NOTE: sglang/srt/ and sglang/srt/entrypoints/ have no __init__.py in the wheel
    # (implicit namespace packages), so nothing is needed for them.
]
# Files that cannot be taken verbatim and are generated from the wheel's source:
#   sglang/__init__.py - the real one imports torch, FlashInfer patches, sglang.lang;
#                        replaced by a docstring + __version__ (the import chain only
#                        needs "sglang" to be a regular package).
#   sglang/utils.py    - the real one imports IPython, pybase64, requests and
#                        sglang.srt.environ at module level; protocol.py only needs
#                        ``convert_json_schema_to_str``, whose exact source is cut out
#                        of the wheel's utils.py with ``ast`` (not re-typed).
MARKER = "sglang/_ray_sim_extract.json"


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def query_env(python):
    """Return (purelib, {dist_name_lower: version}) of the target interpreter."""
    code = textwrap.dedent(
        """
        import json, sysconfig
        from importlib import metadata
        d = {}
        for dist in metadata.distributions():
            n = (dist.metadata["Name"] or "").lower().replace("_", "-")
            if n:
                d[n] = dist.version
        print(json.dumps({"purelib": sysconfig.get_paths()["purelib"], "dists": d}))
        """
    )
    out = subprocess.run(
        [python, "-c", code], check=True, capture_output=True, text=True
    )
    info = json.loads(out.stdout)
    return info["purelib"], info["dists"]


def pip(python, *args):
    run([python, "-m", "pip", "--disable-pip-version-check", *args])


def ensure_pins(python, dists, pins):
    missing = [f"{n}=={v}" for n, v in pins.items() if dists.get(n) != v]
    if not missing:
        return
    pip(python, "install", "-qq", *missing)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_cached_wheel(cache_dir):
    prefix = f"sglang-{SGLANG_PIN}-"
    for name in sorted(os.listdir(cache_dir)):
        if name.startswith(prefix) and name.endswith(".whl"):
            return os.path.join(cache_dir, name)
    return None


def extract_function_source(module_src, func_name):
    tree = ast.parse(module_src)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == func_name:
            return ast.get_source_segment(module_src, node)
    raise RuntimeError(f"{func_name} not found in sglang/utils.py")


def ensure_sglang_protocol(python, purelib, cache_dir):
    os.makedirs(cache_dir, exist_ok=True)
    marker_path = os.path.join(purelib, MARKER)
    wheel = find_cached_wheel(cache_dir)
    if wheel and os.path.exists(marker_path):
        with open(marker_path) as f:
            marker = json.load(f)
        if marker.get("version") == SGLANG_PIN and all(
            os.path.exists(os.path.join(purelib, p)) for p in marker.get("files", [])
        ):
            return
    if wheel is None:
        pip(
            python,
            "download",
            "-qq",
            "--no-deps",
            "--only-binary=:all:",
            f"sglang=={SGLANG_PIN}",
            "-d",
            cache_dir,
        )
        wheel = find_cached_wheel(cache_dir)
        if wheel is None:
            raise RuntimeError(f"sglang {SGLANG_PIN} wheel not found in {cache_dir}")

    written = []
    with zipfile.ZipFile(wheel) as zf:
        for rel in SGLANG_VERBATIM:
            dst = os.path.join(purelib, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with open(dst, "wb") as f:
                f.write(zf.read(rel))
            written.append(rel)
        utils_src = zf.read("sglang/utils.py").decode()

    func_src = extract_function_source(utils_src, "convert_json_schema_to_str")
    generated = {
        "sglang/__init__.py": (
            f'"""Partial sglang {SGLANG_PIN}: only the OpenAI protocol models.\n\n'
            "Extracted by ci/llm_deps.py for Ray Serve LLM's\n"
            "core/configs/openai_api_models.py. The wheel's own __init__ imports\n"
            'torch and the sglang runtime, so it is not used."""\n\n'
            f'__version__ = "{SGLANG_PIN}"\n'
        ),
        "sglang/utils.py": (
            f'"""The one helper of sglang {SGLANG_PIN} sglang/utils.py that\n'
            "sglang/srt/entrypoints/openai/protocol.py imports, copied verbatim (via ast)\n"
            'from the wheel. The full module imports IPython, pybase64, requests, ..."""\n\n'
            "import json\nfrom typing import Type, Union\n\n"
            "from pydantic import BaseModel\n\n\n" + func_src + "\n"
        ),
    }
    for rel, text in generated.items():
        dst = os.path.join(purelib, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(dst, "w") as f:
            f.write(text)
        written.append(rel)

    with open(marker_path, "w") as f:
        json.dump(
            {
                "version": SGLANG_PIN,
                "wheel": os.path.basename(wheel),
                "sha256": sha256(wheel),
                "files": written,
            },
            f,
            indent=1,
        )
    print(f"sglang {SGLANG_PIN}: extracted {written} into {purelib}")


def verify(python):
    code = (
        "import ray.llm._internal.serve.core.configs.openai_api_models as m; "
        "import sglang.srt.entrypoints.openai.protocol as p; "
        "import importlib.util as u; "
        "assert u.find_spec('torch') is None, 'torch must not be installed'; "
        "assert u.find_spec('vllm') is None; "
        "pass"
    )
    run([python, "-c", code])


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--python", required=True, help="the venv's python executable")
    ap.add_argument(
        "--cache-dir", required=True, help="where the sglang wheel is cached"
    )
    ap.add_argument(
        "--stock",
        action="store_true",
        help="the venv runs stock Ray 2.60.0 (adds STOCK_PINS)",
    )
    ap.add_argument("--no-verify", action="store_true")
    args = ap.parse_args()

    purelib, dists = query_env(args.python)
    ensure_pins(args.python, dists, {**PINS, **(STOCK_PINS if args.stock else {})})
    ensure_sglang_protocol(args.python, purelib, args.cache_dir)
    if not args.no_verify:
        verify(args.python)


if __name__ == "__main__":
    main()
