"""A run on a Ray cluster started beforehand (``verl/examples/ray/run_head.sh`` + ``run_worker.sh``).

verl has no recovery from a lost node: the training ranks on it are gone, and the ranks that are left
wait in their next collective (gloo/NCCL) until its timeout, 10 minutes or more. ``NodeWatch`` is a
thread of the driver (``python -m metastone.train``) that asks Ray every ``period_s`` seconds which of
the nodes it saw at the start of the run are still alive. When one is not, it logs what was lost
(node ID, address, Ray's reason) and where the run will resume from, and ends the driver with
``NODE_LOST_EXIT``; Ray then stops the run's actors on the other nodes. Ray declares a node dead
after its health checks fail (a few seconds when its raylet dies, ~30 s when its machine vanishes),
so the driver exits at most ~``period_s`` + that after the loss (docs/train.md "Multi-node"). When
the run fails first (a surviving rank's collective sees its peer vanish), ``launch`` asks the watch
whether a node was lost (``wait_for_loss``) and reports that instead of the collective's error.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)

NODE_LOST_EXIT = 75  # EX_TEMPFAIL: rerun the same command once the node is back

# When the run fails on its own first (the surviving ranks' collective notices a dead peer before Ray
# has declared its node dead), how long to wait for Ray's verdict before reporting the error as it is:
# Ray's health checks (every 3 s, 5 misses) declare a node dead within ~15-30 s.
LOSS_GRACE_S = 45.0


def describe_resume_point(checkpoint_dir: str | Path) -> str:
    """Where the same command, rerun, resumes from (``latest_checkpointed_iteration.txt``)."""
    from metastone.train.checkpoints import TRACKER

    tracker = Path(checkpoint_dir) / TRACKER
    try:
        step = tracker.read_text().strip()
    except OSError:
        return f"no complete checkpoint in {checkpoint_dir} yet: a rerun starts from step 0"
    return f"the last complete checkpoint is {Path(checkpoint_dir) / f'global_step_{step}'}"


def cluster_nodes() -> dict[str, dict] | None:
    """``ray.nodes()`` by node ID; None while the driver shuts down or the GCS is briefly unreachable."""
    import ray

    try:
        return {node["NodeID"]: node for node in ray.nodes()}
    except Exception:
        return None


class NodeWatch(threading.Thread):
    """Stop the driver when a node of the cluster dies (see module doc)."""

    def __init__(self, checkpoint_dir: str | Path, period_s: float = 2.0, exit_fn=os._exit):
        super().__init__(name="metastone-node-watch", daemon=True)
        self.checkpoint_dir = checkpoint_dir
        self.period_s = period_s
        self.exit_fn = exit_fn
        self.watched: dict[str, dict] = {}

    def run(self) -> None:
        import ray

        while not ray.is_initialized():  # verl's run_ppo connects to the cluster
            time.sleep(0.2)
        while ray.is_initialized():
            nodes = cluster_nodes()
            if nodes is None:
                time.sleep(self.period_s)
                continue
            if not self.watched:
                self.watched = {nid: node for nid, node in nodes.items() if node.get("Alive")}
                logger.info("watching the %d nodes of the Ray cluster: %s", len(self.watched),
                            ", ".join(f"{nid} ({n.get('NodeManagerAddress')})" for nid, n in self.watched.items()))
            lost = self.lost(nodes)
            if lost:
                self.stop(lost)
                return
            time.sleep(self.period_s)

    def wait_for_loss(self, timeout_s: float = LOSS_GRACE_S) -> list[dict]:
        """After the run failed: the watched nodes Ray declares dead within ``timeout_s`` (none: [])."""
        import ray

        deadline = time.monotonic() + timeout_s
        while self.watched and ray.is_initialized():
            nodes = cluster_nodes()
            lost = self.lost(nodes) if nodes is not None else []
            if lost or time.monotonic() > deadline:
                return lost
            time.sleep(0.5)
        return []

    def lost(self, nodes: dict[str, dict]) -> list[dict]:
        """The watched nodes that ``nodes`` (``ray.nodes()`` by ID) no longer lists as alive."""
        out = []
        for nid, seen in self.watched.items():
            now = nodes.get(nid)
            if now is None or not now.get("Alive"):
                out.append({**seen, **(now or {}), "NodeID": nid})
        return out

    def stop(self, lost: list[dict]) -> None:
        names = "; ".join(
            f"node {n['NodeID']} at {n.get('NodeManagerAddress', '?')} "
            f"({n.get('DeathReasonMessage') or 'no longer listed by the cluster'})" for n in lost)
        message = (f"lost Ray node(s) during the run: {names}. The run stops (exit {NODE_LOST_EXIT}); "
                   f"{describe_resume_point(self.checkpoint_dir)}. Bring the node back (run_worker.sh) and "
                   "rerun the same command to resume from it.")
        logger.error(message)
        print(f"ERROR: {message}", file=sys.stderr, flush=True)
        for handler in logging.getLogger().handlers:
            handler.flush()
        self.exit_fn(NODE_LOST_EXIT)
