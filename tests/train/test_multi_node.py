"""verl's GRPO + SPRM loop on a two-node Ray cluster, started as docs/train.md "Multi-node" says.

A Ray head (``verl/examples/ray/run_head.sh``) and a second Ray node (``run_worker.sh``) run as two
raylets on this machine (distinct ports, one session folder, one logical GPU slot each), and the
docs/train.md's ``NNODES=2 PRESET=cpu_tiny ... bash scripts/run_multi_node.sh`` trains with one training rank
per node (FSDP2 over gloo). One module-scoped sequence of three runs, each checked from what it leaves:

1. run A (3 steps): saves steps 1 and 2; during step 3 the second node's raylet is ``kill -9``'d. The
   driver must stop by itself, naming the lost node, with ``NODE_LOST_EXIT``, within a bound.
2. the second node is started again; run B (same command, 4 steps) resumes from step 2, trains step 3
   and is SIGKILLed (the driver and its actors on both nodes) while it writes step 4's checkpoint.
3. run C (same command, one step more) resumes from the newest complete checkpoint and finishes; the
   export of its last step scores a trace with ``metastone score``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from metastone.devices import free_port

pytestmark = [pytest.mark.train, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RUN_TIMEOUT_S = 900
LOST_NODE_BOUND_S = 60  # from the kill to the driver's exit (docs/train.md "Multi-node")


def _tree(pid: int) -> list:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _kill_tree(procs) -> None:
    import psutil

    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


class LocalCluster:
    """Two Ray nodes on this machine through run_head.sh / run_worker.sh (docs/train.md "Multi-node")."""

    def __init__(self, root: Path):
        self.root = root
        self.temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths are limited
        self.port = free_port()
        self.env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_PORT": str(self.port),
                    "GPUS_PER_NODE": "1", "CPUS_PER_NODE": "16", "RAY_BLOCK": "1",
                    "RAY_AUTH_TOKEN_PATH": str(self.temp / "auth_token")}
        self.nodes: dict[str, subprocess.Popen] = {}
        self.address = None

    def _start(self, name: str, script: str, extra: dict) -> None:
        log = self.root / f"{name}-{len(list(self.root.glob(f'{name}-*.log')))}.log"
        proc = subprocess.Popen(["bash", REPO / script], env={**self.env, **extra}, stdout=log.open("w"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text():
            assert proc.poll() is None, f"{script} exited {proc.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{script} did not start the node:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        self.nodes[name] = proc
        if name == "head":
            match = re.search(r"--address='([^':]+):\d+'", log.read_text())
            assert match, log.read_text()[-2000:]
            self.address = match.group(1)

    def start_head(self) -> None:
        self._start("head", "verl/examples/ray/run_head.sh",
                    {"RAY_TEMP_DIR": str(self.temp), "DASHBOARD_PORT": str(free_port()),
                     "RAY_START_ARGS": "--include-dashboard=false --disable-usage-stats"})

    def start_worker(self) -> None:
        self._start("worker", "verl/examples/ray/run_worker.sh",
                    {"HEAD_ADDRESS": self.address,
                     "RAY_START_ARGS": f"--dashboard-agent-listen-port={free_port()} --disable-usage-stats"})

    def kill_worker_raylet(self) -> None:
        raylets = [p for p in _tree(self.nodes["worker"].pid) if p.name() == "raylet"]
        assert len(raylets) == 1, raylets
        raylets[0].kill()

    def kill_run_processes(self) -> None:
        """SIGKILL every Ray worker process on both nodes (the run's actors), keeping the nodes' own agents."""
        agents = ("ray::DashboardA", "ray::RuntimeEnv")  # a raylet fate-shares with its agents
        _kill_tree([p for proc in self.nodes.values() for p in _tree(proc.pid)
                    if p.name().startswith("ray::") and not p.name().startswith(agents)])

    def stop(self) -> None:
        procs = [p for proc in self.nodes.values() for p in _tree(proc.pid)]
        _kill_tree(procs)
        for proc in self.nodes.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass


def _steps_of(folder: Path) -> list[list[int]]:
    return [[json.loads(line)["step"] for line in f.read_text().splitlines() if line.strip()]
            for f in sorted((folder / "metrics").glob("*.jsonl"))]


@pytest.fixture(scope="module")
def cluster_runs(tmp_path_factory, cpu_loop_data):
    root = tmp_path_factory.mktemp("multi_node")
    ckpt = root / "ckpt"
    cluster = LocalCluster(root)
    cluster.start_head()
    cluster.start_worker()
    env = {**cluster.env, "NNODES": "2", "GPUS_PER_NODE": "1", "PRESET": "cpu_tiny", "PYTHON": str(BIN / "python"),
           "MODEL": str(cpu_loop_data["model"]), "TRAIN_FILES": str(cpu_loop_data["train"]),
           "VAL_FILES": str(cpu_loop_data["val"]),
           "OUTPUT_DIR": str(ckpt), "RAY_ADDRESS": f"{cluster.address}:{cluster.port}"}
    tracker = ckpt / "latest_checkpointed_iteration.txt"

    def start(steps: int, name: str):
        log = root / f"{name}.log"
        proc = subprocess.Popen(["bash", REPO / "scripts/run_multi_node.sh", f"trainer.total_training_steps={steps}"],
                                env=env, cwd=root, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        return proc, log

    def wait_until(cond, proc, log, what):
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not cond():
            assert proc.poll() is None, f"run ended ({proc.returncode}) before {what}:\n{log.read_text()[-5000:]}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    out = {"root": root, "ckpt": ckpt, "cluster": cluster}
    try:
        # run A: a node is lost during step 3
        proc, log = start(3, "runA")
        wait_until(lambda: tracker.is_file() and tracker.read_text().strip() == "2", proc, log, "step 2's checkpoint")
        time.sleep(3)  # into step 3
        cluster.kill_worker_raylet()
        killed = time.monotonic()
        out["a_rc"] = proc.wait(timeout=RUN_TIMEOUT_S)
        out["a_exit_s"] = time.monotonic() - killed
        out["a_log"] = log.read_text()
        out["a_tracker"] = tracker.read_text().strip()
        _kill_tree(_tree(cluster.nodes["worker"].pid))

        # the node comes back; run B resumes and is killed while it writes step 4's checkpoint
        cluster.start_worker()
        proc, log = start(4, "runB")
        wait_until(lambda: (ckpt / "global_step_4").exists(), proc, log, "step 4's checkpoint folder")
        time.sleep(0.3)  # the save takes ~0.8 s here (docs/train.md "Multi-node")
        os.killpg(proc.pid, signal.SIGKILL)  # the whole run at once: the driver and its actors on both nodes
        cluster.kill_run_processes()
        proc.wait(timeout=60)
        out["b_tracker_at_kill"] = tracker.read_text().strip()
        out["b_log"] = log.read_text()

        # run C: same command, resumes from the newest complete checkpoint and trains one more step
        out["last"] = int(out["b_tracker_at_kill"]) + 1
        proc, log = start(out["last"], "runC")
        out["c_rc"] = proc.wait(timeout=RUN_TIMEOUT_S)
        out["c_log"] = log.read_text()
        assert out["c_rc"] == 0, out["c_log"][-6000:]
        out["steps"] = _steps_of(ckpt)
        (root / "summary.json").write_text(json.dumps({k: v for k, v in out.items() if not k.endswith("log")
                                                       and k not in ("root", "ckpt", "cluster")}))
        yield out
    finally:
        cluster.stop()


@pytest.mark.timeout(2400)
def test_ranks_ran_on_two_nodes_and_trained(cluster_runs):
    from safetensors.torch import load_file

    placements = dict(re.findall(r"training rank (\d) of 2 on Ray node (\w+)", cluster_runs["a_log"]))
    assert set(placements) == {"0", "1"} and placements["0"] != placements["1"], placements
    first = [json.loads(line) for line in sorted((cluster_runs["ckpt"] / "metrics").glob("*.jsonl"))[0]
             .read_text().splitlines() if line.strip()]
    assert [r["step"] for r in first] == [1, 2]
    for record in first:
        assert record["data"]["actor/sprm/loss"] > 0 and record["data"]["actor/sprm/head_grad_norm"] > 0
        assert record["data"]["actor/grad_norm"] > 0
    heads = [load_file(str(cluster_runs["ckpt"] / f"global_step_{s}/actor/sprm_head.safetensors")) for s in (1, 2)]
    assert any(not (heads[0][k] == heads[1][k]).all() for k in heads[0]), "the head did not change in step 2"
    actor = cluster_runs["ckpt"] / "global_step_2" / "actor"
    assert {p.name for p in actor.glob("model_world_size_2_rank_*.pt")} == {
        "model_world_size_2_rank_0.pt", "model_world_size_2_rank_1.pt"}


@pytest.mark.timeout(2400)
def test_a_lost_node_stops_the_run_with_its_name_and_keeps_the_checkpoint(cluster_runs):
    from metastone.train.cluster import NODE_LOST_EXIT

    log = cluster_runs["a_log"]
    assert cluster_runs["a_rc"] == NODE_LOST_EXIT, log[-5000:]
    assert cluster_runs["a_exit_s"] < LOST_NODE_BOUND_S, cluster_runs["a_exit_s"]
    worker_node = dict(re.findall(r"training rank (\d) of 2 on Ray node (\w+)", log))
    message = re.search(r"lost Ray node\(s\) during the run: node (\w+) at \S+ \((.+?)\)", log)
    assert message and message.group(1) in worker_node.values(), log[-5000:]
    assert "global_step_2" in log[message.start():]
    assert cluster_runs["a_tracker"] == "2"


@pytest.mark.timeout(2400)
def test_resumes_after_the_lost_node_and_after_a_kill_during_a_save(cluster_runs):
    import torch

    ckpt = cluster_runs["ckpt"]
    # run B resumed from step 2 with the head state saved there (head + AdamW + schedule digests)
    b_log = cluster_runs["b_log"]
    assert re.search(r"Resuming from \S*global_step_2", b_log), b_log[-4000:]
    step2 = re.escape(str(ckpt / "global_step_2" / "actor"))
    saved = re.findall(rf"SPRM head state saved to {step2} \(digest (\w+)\)", cluster_runs["a_log"])
    restored = re.findall(rf"SPRM head state restored from {step2} \(digest (\w+)\)", b_log)
    assert saved and restored and set(saved) == set(restored), (saved, restored)
    # killed during step 4's save: the tracker names a complete step, never the torn one
    at_kill = cluster_runs["b_tracker_at_kill"]
    assert at_kill in {"3", "4"}
    assert (ckpt / f"global_step_{at_kill}" / "data.pt").is_file()
    # run C resumed from it and finished; no step was logged twice across the three runs
    c_log = cluster_runs["c_log"]
    assert re.search(rf"Resuming from \S*global_step_{at_kill}\b", c_log), c_log[-4000:]
    step = re.escape(str(ckpt / f"global_step_{at_kill}" / "actor"))
    saved = re.findall(rf"SPRM head state saved to {step} \(digest (\w+)\)", b_log)
    restored = re.findall(rf"SPRM head state restored from {step} \(digest (\w+)\)", c_log)
    assert saved and restored and set(saved) == set(restored), (saved, restored)
    logged = [s for run in cluster_runs["steps"] for s in run]
    last = cluster_runs["last"]
    assert len(logged) == len(set(logged)) and logged[-1] == last and {1, 2, 3, last} <= set(logged), cluster_runs["steps"]
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == str(last)
    # the head's AdamW continued across both resumes (2 updates per step), it did not restart
    states = [torch.load(ckpt / f"global_step_{s}/actor/sprm_train_state.pt", weights_only=False) for s in (2, 3, last)]
    assert [{float(v["step"]) for v in st["optimizer"]["state"].values()} for st in states] == [
        {4.0}, {6.0}, {2.0 * last}]


@pytest.mark.timeout(2400)
def test_export_of_the_multi_node_run_scores_traces(cluster_runs, tmp_path):
    out = tmp_path / "export"
    proc = subprocess.run([BIN / "python", "-m", "metastone.export", "--local_dir",
                           cluster_runs["ckpt"] / f"global_step_{cluster_runs['last']}" / "actor", "--target_dir", out],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trace = tmp_path / "trace.txt"
    trace.write_text("Add 3 and 4.\n\nThe sum is 7.\n\n</think>\nThe answer is \\boxed{7}.")
    proc = subprocess.run([BIN / "metastone", "score", "--model", out, "--text-file", trace], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = json.loads(proc.stdout)["all_scores"]
    assert len(scores) == 2 and all(0.0 < s < 1.0 for s in scores)
