"""Launch scripts: run with stub ``ray`` / ``python`` / ``ssh`` executables, check what they would run."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.train

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = ["scripts/run_single_node.sh", "scripts/run_multi_node.sh", "verl/examples/ray/run_head.sh",
           "verl/examples/ray/run_worker.sh", "verl/examples/ray/run_worker_n.sh", "verl/scripts/model_merger.sh"]


@pytest.fixture()
def stubs(tmp_path):
    """A PATH whose ray / python / ssh / nvidia-smi print their arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("ray", "python", "ssh"):
        (bin_dir / name).write_text(f'#!/usr/bin/env bash\necho "{name} $*"\n')
    (bin_dir / "nvidia-smi").write_text("#!/usr/bin/env bash\nprintf 'GPU 0\\nGPU 1\\n'\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def run(script, env, *args, **extra_env):
    proc = subprocess.run(["bash", str(REPO / script), *args], env={**env, **extra_env}, capture_output=True,
                          text=True, timeout=60)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse_and_hold_no_secrets(script):
    text = (REPO / script).read_text()
    assert subprocess.run(["bash", "-n", str(REPO / script)]).returncode == 0
    assert not re.search(r"(api[_-]?key|token|password|secret)\s*=", text, re.I)
    assert "CUDA_LAUNCH_BLOCKING" not in text  # the original's slow default


def test_single_node_passes_env_as_hydra_overrides(stubs):
    code, out = run("scripts/run_single_node.sh", stubs, "--dry-run", "trainer.total_training_steps=5",
                    PRESET="tiny", MODEL="/m", TRAIN_FILES="/d/t.parquet", VAL_FILES="/d/v.parquet", OUTPUT_DIR="/ck")
    assert code == 0
    assert out.split() == ["python", "-m", "metastone.train", "preset=tiny", "trainer.nnodes=1",
                           "trainer.n_gpus_per_node=2", "actor_rollout_ref.model.path=/m", "data.train_files=/d/t.parquet",
                           "data.val_files=/d/v.parquet", "trainer.default_local_dir=/ck", "--dry-run",
                           "trainer.total_training_steps=5"]


def test_multi_node_needs_the_node_count(stubs):
    code, out = run("scripts/run_multi_node.sh", stubs)
    assert code != 0 and "NNODES" in out
    code, out = run("scripts/run_multi_node.sh", stubs, NNODES="4", GPUS_PER_NODE="8")
    assert code == 0 and "preset=s1_32b trainer.nnodes=4 trainer.n_gpus_per_node=8" in out


def test_ray_head_and_worker_take_address_ports_and_interface_from_env(stubs, tmp_path):
    token = tmp_path / "ray" / "auth_token"
    code, out = run("verl/examples/ray/run_head.sh", stubs, NODE_IP="10.1.2.3", RAY_PORT="7000", GPUS_PER_NODE="8",
                    CPUS_PER_NODE="32", RAY_AUTH_TOKEN_PATH=str(token))
    assert code == 0 and "ray start --head --node-ip-address=10.1.2.3 --port=7000" in out and "--num-gpus=8" in out
    assert "--num-cpus=32" in out and "--dashboard-host=127.0.0.1" in out  # the dashboard runs jobs: not public
    # a cluster token was generated where Ray reads it, readable by its owner only
    assert f"generated a cluster token in {token}" in out and token.stat().st_mode & 0o077 == 0
    assert len(token.read_text()) == 64
    code, out = run("verl/examples/ray/run_worker.sh", stubs, NODE_IP="10.1.2.4")
    assert code != 0 and "HEAD_ADDRESS" in out
    code, out = run("verl/examples/ray/run_worker.sh", stubs, NODE_IP="10.1.2.4", HEAD_ADDRESS="10.1.2.3",
                    RAY_AUTH_TOKEN_PATH=str(tmp_path / "missing"))
    assert code != 0 and f"no cluster token in {tmp_path / 'missing'}" in out
    code, out = run("verl/examples/ray/run_worker.sh", stubs, NODE_IP="10.1.2.4", HEAD_ADDRESS="10.1.2.3",
                    RAY_AUTH_TOKEN_PATH=str(token), RAY_START_ARGS="--dashboard-agent-listen-port=52401")
    assert code == 0 and "ray start --address=10.1.2.3:6379 --node-ip-address=10.1.2.4" in out
    assert "--dashboard-agent-listen-port=52401" in out


def test_worker_n_starts_one_worker_per_host(stubs, tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("# cluster\nnode1\nnode2 slots=8\n")
    code, out = run("verl/examples/ray/run_worker_n.sh", stubs, HOSTFILE=str(hosts), HEAD_ADDRESS="10.0.0.1")
    assert code == 0
    lines = sorted(line for line in out.splitlines() if line.startswith("ssh"))
    assert [line.split()[3] for line in lines] == ["node1", "node2"]
    assert all("HEAD_ADDRESS=10.0.0.1" in line and "run_worker.sh" in line for line in lines)


def test_model_merger_script_calls_metastone_export(stubs):
    code, out = run("verl/scripts/model_merger.sh", stubs, "merge", "--backend", "fsdp", "--local_dir", "x",
                    "--target_dir", "y")
    assert code == 0 and out.strip() == "python -m metastone.export merge --backend fsdp --local_dir x --target_dir y"
