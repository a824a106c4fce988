"""The two GPU environments of ``make setup-gpu``: what each asks for, and the pins it resolved to.

    python scripts/gpu_env.py requirements train      # the requirement lines pip resolves
    python scripts/gpu_env.py lock train serve        # re-resolve against PyPI, rewrite constraints/gpu-*.txt
    python scripts/gpu_env.py check train serve       # resolve again under the pins (dry run, installs nothing)

- ``train``: ``verl[vllm]==0.9.1`` with verl's own torch / vLLM / transformers pins, plus metastone's
  core dependencies and its ``train`` extra (what ``pip install -e .[train]`` asks for). flash-attn is
  not in the resolve: PyPI has only its source, which builds against the installed torch and CUDA;
  ``make setup-gpu`` tries it after the rest and goes on without it (presets then use sdpa).
- ``serve``: upstream vLLM at the release the SPRM plugin is tested against
  (``metastone.serve.vllm.plugin.TESTED_VLLM``), plus metastone's core dependencies.

Resolution is for Linux x86_64 and the running Python (3.11 in the project's environments), through
``pip install --dry-run --ignore-installed --report`` with this machine's pip configuration set aside
(no local wheel folders or caps), so the pins are what PyPI gives a fresh GPU machine. Standard
library only: ``make setup-gpu`` runs it before any environment exists.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints"
VERL_SPEC = "verl[vllm]==0.9.1"
# packages resolved but not pinned: metastone itself (installed editable from the checkout)
UNPINNED = {"metastone"}


def tested_vllm() -> str:
    """``TESTED_VLLM`` of the plugin, read from its source (no import: vLLM need not be installed)."""
    text = (ROOT / "metastone/serve/vllm/plugin.py").read_text()
    match = re.search(r'^TESTED_VLLM = "([^"]+)"', text, re.M)
    if not match:
        raise ValueError("metastone/serve/vllm/plugin.py defines no TESTED_VLLM = \"x.y.z\"")
    return match.group(1)


def requirements(env: str) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = list(project["dependencies"])
    if env == "train":
        return [VERL_SPEC, *core, *project["optional-dependencies"]["train"]]
    if env == "serve":
        return [f"vllm=={tested_vllm()}", *core]
    raise ValueError(f"unknown environment {env!r}; choose train or serve")


def clean_env() -> dict[str, str]:
    """This process's environment without pip settings that point away from PyPI or cap versions."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in ("PIP_CERT", "PIP_DEFAULT_TIMEOUT")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def resolve(env: str, constraints: Path | None = None, timeout: float = 600) -> dict[str, str]:
    """Resolve ``env`` with pip (dry run); returns {name: version}. Raises RuntimeError with pip's error."""
    with tempfile.TemporaryDirectory() as tmp:
        reqs, report = Path(tmp) / "requirements.txt", Path(tmp) / "report.json"
        reqs.write_text("\n".join(requirements(env)) + "\n")
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--report", str(report), "-r", str(reqs)]
        if constraints is not None:
            cmd += ["-c", str(constraints)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=clean_env(), timeout=timeout)
        if proc.returncode != 0:
            err = "\n".join(line for line in proc.stderr.splitlines() if "is ignored: it is neither" not in line)
            raise RuntimeError(f"pip could not resolve the {env} environment:\n{err[-4000:]}")
        installs = json.loads(report.read_text())["install"]
    return {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in installs}


def constraints_path(env: str) -> Path:
    return CONSTRAINTS / f"gpu-{env}.txt"


def read_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def write_pins(env: str, pins: dict[str, str]) -> Path:
    path = constraints_path(env)
    path.parent.mkdir(exist_ok=True)
    head = [f"# {env} GPU environment (make setup-gpu), resolved against PyPI by `python scripts/gpu_env.py lock {env}`",
            f"# for Linux x86_64, Python {sys.version_info.major}.{sys.version_info.minor}, from:",
            *[f"#   {r}" for r in requirements(env)]]
    body = [f"{name}=={version}" for name, version in sorted(pins.items()) if name not in UNPINNED]
    path.write_text("\n".join(head + body) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["requirements", "lock", "check"])
    parser.add_argument("envs", nargs="+", choices=["train", "serve"])
    args = parser.parse_args(argv)
    for env in args.envs:
        if args.action == "requirements":
            print("\n".join(requirements(env)))
        elif args.action == "lock":
            print(f"wrote {write_pins(env, resolve(env))}")
        else:
            pins = resolve(env, constraints_path(env))
            print(f"{env}: resolves under {constraints_path(env).name} ({len(pins)} packages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
