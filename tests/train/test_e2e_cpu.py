"""verl's whole GRPO + SPRM loop on CPU, started as the README says, checked from what the runs leave.

One module-scoped run, as a user would do it (docs/train.md "CPU runs"):

1. a tiny reasoner policy (``make_tiny_reasoner``: its rollouts close ``</think>`` and box an answer
   that is right about half the time) and one-digit-sum data written by ``python -m metastone.data.prepare``;
2. ``PRESET=cpu_tiny bash scripts/run_single_node.sh`` for 2 steps (real ``python``, Ray started by
   the run, the ``hf`` rollout, verl's reward loop with our reward, labels through TransferQueue,
   the SPRM engine's update, a checkpoint after every step);

Every link is asserted from the run's own outputs: per-step metrics (JSONL), checkpoint files and the
rollout server's weight-sync lines. Resuming (head + AdamW + schedule digests at save and load, after a
lost node and after a kill during a save) and the export are checked on the two-node cluster run
(``tests/train/test_multi_node.py``), whose loop is the same.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.train, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RUN_TIMEOUT_S = 900


def _run(cmd, log: Path, env=None, cwd=None) -> str:
    proc = subprocess.run(cmd, env={**os.environ, **(env or {})}, cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=RUN_TIMEOUT_S)
    log.write_text(proc.stdout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}); log {log}:\n{proc.stdout[-6000:]}"
    return proc.stdout


def _metrics(folder: Path) -> list[list[dict]]:
    """Each run's metrics file (oldest first), as a list of {'step', 'data'} records."""
    return [[json.loads(line) for line in f.read_text().splitlines() if line.strip()]
            for f in sorted(folder.glob("*.jsonl"))]


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory, cpu_loop_data):
    root = tmp_path_factory.mktemp("e2e")
    model = cpu_loop_data["model"]
    ckpt = root / "ckpt"
    env = {"PRESET": "cpu_tiny", "PYTHON": str(BIN / "python"), "MODEL": str(model),
           "TRAIN_FILES": str(cpu_loop_data["train"]), "VAL_FILES": str(cpu_loop_data["val"]), "OUTPUT_DIR": str(ckpt)}
    first = _run(["bash", REPO / "scripts/run_single_node.sh", "trainer.total_training_steps=2"], root / "run1.log",
                 env=env, cwd=root)
    return {"root": root, "model": model, "ckpt": ckpt, "first": first, "metrics": _metrics(ckpt / "metrics")}


@pytest.mark.timeout(2400)
def test_first_run_trains_policy_and_head_from_valid_labels(cpu_run):
    from safetensors.torch import load_file

    (first,) = cpu_run["metrics"]
    assert [r["step"] for r in first] == [1, 2]
    for record in first:
        m = record["data"]
        # labels came from our reward through TransferQueue, not from the reward-threshold fallback
        assert m["sprm/label_from_reward_frac"] == 0.0 and m["actor/sprm/label_fallback"] == 0.0
        assert m["sprm/label_correct_frac"] + m["sprm/label_wrong_frac"] + m["sprm/label_invalid_frac"] == pytest.approx(1)
        assert m["actor/sprm/num_steps"] > 0 and m["actor/sprm/loss"] > 0 and m["actor/sprm/head_grad_norm"] > 0
        assert m["actor/pg_loss"] == m["actor/pg_loss"] and m["actor/grad_norm"] > 0  # the policy is updated too
    # both classes reached the SPR loss over the run (a random policy would give only invalid labels)
    assert sum(r["data"]["actor/sprm/num_correct"] for r in first) > 0
    assert sum(r["data"]["actor/sprm/num_wrong"] for r in first) > 0
    # the prompt groups reached the engine: where a step had right and wrong rollouts of one prompt,
    # the head's within-question AUROC was computed from them (the raw sums are folded into it)
    for record in first:
        m = record["data"]
        assert not any(k.startswith("actor/sprm/rank_") or k.endswith("_sum") for k in m)
        if m["actor/sprm/num_correct"] > 0 and m["actor/sprm/num_wrong"] > 0:
            assert "sprm/step_score_gap" in m  # needs the sprm_group field the trainer writes
        if m.get("sprm/rank_pairs"):
            assert 0.0 <= m["sprm/within_q_auroc"] <= 1.0 and -1.0 <= m["sprm/step_score_gap"] <= 1.0
    heads = [load_file(str(cpu_run["ckpt"] / f"global_step_{s}/actor/sprm_head.safetensors")) for s in (1, 2)]
    assert any(not (heads[0][k] == heads[1][k]).all() for k in heads[0]), "the head did not change in step 2"
    # the rollout received the trainer's weights through verl's update path at every step
    synced = {int(s) for s in re.findall(r"tensors from the trainer for global step (\d+)", cpu_run["first"])}
    assert {1, 2} <= synced
