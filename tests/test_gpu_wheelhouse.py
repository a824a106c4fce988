"""``make gpu-wheelhouse`` and the offline GPU check, on a Python shaped like the air-gapped GPU machines.

That Python has only torch, transformers, safetensors, tiktoken, numpy, pytest, pip and what they need
(linked here from this environment into an otherwise empty virtual environment). The wheelhouse is
fetched for it (the only step that needs the registry; the test skips, saying so, when PyPI cannot be
reached), then ``scripts/gpu_check.sh`` with ``WHEELS=`` installs it with no index into a fresh target
and runs: every module the check needs imports, and on this CPU-only torch every CUDA check reports
SKIP with a reason and the script exits 0; with ``CHECK_DEVICE=cpu`` the checks written as tests pass on CPU.
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
# In the serving environment: its transformers (5.16+) is the nearer stand-in for the GPU machines' (5.17).
pytestmark = [pytest.mark.slow, pytest.mark.serve]


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


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory):
    try:
        urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=10)
    except OSError as e:
        pytest.skip(f"PyPI cannot be reached ({e}): the wheelhouse is fetched from it")
    wheels = tmp_path_factory.mktemp("wheelhouse")
    subprocess.run([sys.executable, "scripts/gpu_wheelhouse.py", "--out", str(wheels)], cwd=ROOT, check=True)
    return wheels


@pytest.fixture(scope="module")
def machine(tmp_path_factory):
    py = machine_python(tmp_path_factory.mktemp("machine"))
    probe = subprocess.run([str(py), "-c", "import torch, transformers, pytest\nimport fastapi"], capture_output=True,
                           text=True)
    assert "No module named 'fastapi'" in probe.stderr, probe.stderr  # the stand-in has the stack, not our extras
    return py


def gpu_check(py: Path, wheels: Path, out: Path, **extra) -> tuple[subprocess.CompletedProcess, dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PYTHON=str(py), WHEELS=str(wheels), OUT_DIR=str(out), PIP_NO_INDEX="1", **extra)
    done = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
    return done, report


def test_wheelhouse_installs_offline_and_the_check_skips_every_cuda_check_here(wheelhouse, machine, tmp_path):
    manifest = json.loads((wheelhouse / "manifest.json").read_text())
    assert manifest["pythons"] == ["3.12", "3.11"] and manifest["total_bytes"] <= 64 * 2**20
    assert {f["name"] for f in manifest["files"]} == {p.name for p in wheelhouse.glob("*.whl")}
    assert any("cp312" in f["name"] for f in manifest["files"]) and any("cp311" in f["name"] for f in manifest["files"])

    done, report = gpu_check(machine, wheelhouse, tmp_path / "check")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    status = {c["check"]: c for c in report["checks"]}
    assert status["install"]["status"] == "PASS" and status["imports"]["status"] == "PASS", status
    assert not list((tmp_path / "check").glob("site/torch*")), "the machine's own torch is used, not one from the wheels"
    cuda_checks = [c for name, c in status.items() if name not in ("install", "imports")]
    assert len(cuda_checks) >= 9 and report["counts"]["FAIL"] == 0 and report["device"] is None
    for c in cuda_checks:
        assert c["status"] == "SKIP" and c["reason"], c
        assert f"SKIP  {c['check']}: {c['reason']}" in done.stdout


def test_the_checks_pass_on_cpu_with_only_the_wheelhouse(wheelhouse, machine, tmp_path):
    """``CHECK_DEVICE=cpu``: the checks written as tests run on the CPU in the same stand-in (services started
    with ``python -m metastone``: no console script there), so they are known to work before a GPU runs them."""
    done, report = gpu_check(machine, wheelhouse, tmp_path / "check", CHECK_DEVICE="cpu")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    paths = [c for c in report["checks"] if c["check"].startswith("tests/gpu/test_gpu_paths.py")]
    assert len(paths) == 5 and all(c["status"] == "PASS" for c in paths), paths
    step = next(c for c in paths if "training_step" in c["check"])
    assert step["tiny_export_max_abs_diff"] <= 3e-2 and step["tiny_tokens_per_s"] > 0
