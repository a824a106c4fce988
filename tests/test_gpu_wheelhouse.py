"""``make gpu-wheelhouse`` and the offline GPU check, on a Python shaped like the air-gapped GPU machines.

That Python has only torch, transformers, safetensors, tiktoken, numpy, pytest, pip and what they need
(linked here from this environment into an otherwise empty virtual environment). The wheelhouse is
fetched for it (the only step that needs the registry; the test skips, saying so, when PyPI cannot be
reached), then ``scripts/gpu_check.sh`` with ``WHEELS=`` installs it with no index into a fresh target
and runs: every module the check needs imports, and on this CPU-only torch every CUDA check reports
SKIP with a reason and the script exits 0. Unmarked slow: ``make test`` runs it once.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
GPU_MACHINE_HAS = ("torch", "transformers", "safetensors", "tiktoken", "numpy", "pytest", "pip")
pytestmark = pytest.mark.slow


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots) -> dict[str, md.Distribution]:
    """The installed distributions ``roots`` need, transitively (extras and non-matching markers left out)."""
    found, todo = {}, list(roots)
    while todo:
        name = _canonical(todo.pop())
        if name in found:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue  # an optional dependency this environment does not have
        found[name] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return found


def machine_python(tmp: Path) -> Path:
    """An empty virtual environment whose site-packages sees only ``closure(GPU_MACHINE_HAS)``, linked."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")], check=True)
    farm = tmp / "machine-site"
    farm.mkdir()
    for dist in closure(GPU_MACHINE_HAS).values():
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            src = Path(dist.locate_file(top))
            if src.exists() and not (farm / top).exists() and top != "__pycache__":
                (farm / top).symlink_to(src)
    (site,) = (tmp / "venv/lib").glob("python3.*/site-packages")
    (site / "gpu_machine.pth").write_text(str(farm) + "\n")
    return tmp / "venv/bin/python"


def test_wheelhouse_installs_offline_and_the_check_skips_every_cuda_check_here(tmp_path):
    try:
        urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=10)
    except OSError as e:
        pytest.skip(f"PyPI cannot be reached ({e}): the wheelhouse is fetched from it")
    py = machine_python(tmp_path)
    probe = subprocess.run([str(py), "-c", "import torch, transformers, pytest\nimport fastapi"], capture_output=True,
                           text=True)
    assert "No module named 'fastapi'" in probe.stderr, probe.stderr  # the stand-in has the stack, not our extras

    wheels = tmp_path / "wheelhouse"
    subprocess.run([sys.executable, "scripts/gpu_wheelhouse.py", "--out", str(wheels)], cwd=ROOT, check=True)
    manifest = json.loads((wheels / "manifest.json").read_text())
    assert manifest["pythons"] == ["3.12", "3.11"] and manifest["total_bytes"] <= 64 * 2**20
    assert {f["name"] for f in manifest["files"]} == {p.name for p in wheels.glob("*.whl")}
    assert any("cp312" in f["name"] for f in manifest["files"]) and any("cp311" in f["name"] for f in manifest["files"])

    out = tmp_path / "check"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PYTHON=str(py), WHEELS=str(wheels), OUT_DIR=str(out), PIP_NO_INDEX="1")
    done = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    status = {c["check"]: c for c in report["checks"]}
    assert status["install"]["status"] == "PASS" and status["imports"]["status"] == "PASS", status
    assert not list(out.glob("site/torch*")), "the machine's own torch is used, not one from the wheelhouse"
    cuda_checks = [c for name, c in status.items() if name not in ("install", "imports")]
    assert len(cuda_checks) >= 5 and report["counts"]["FAIL"] == 0 and report["device"] is None
    for c in cuda_checks:
        assert c["status"] == "SKIP" and c["reason"], c
        assert f"SKIP  {c['check']}: {c['reason']}" in done.stdout
