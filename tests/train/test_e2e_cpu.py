"""verl's whole GRPO + SPRM loop on CPU, started as the README says, checked from what the runs leave.

One module-scoped run, as a user would do it (docs/train.md "CPU runs"):

1. a tiny reasoner policy (``make_tiny_reasoner``: its rollouts close ``</think>`` and box an answer
   that is right about half the time) and one-digit-sum data written by ``python -m metastone.data.prepare``;
2. ``PRESET=cpu_tiny bash scripts/run_single_node.sh`` for 2 steps (real ``python``, Ray started by
   the run, the ``hf`` rollout, verl's reward loop with our reward, labels through TransferQueue,
   the SPRM engine's update, a checkpoint after every step);
3. ``python -m metastone.train preset=cpu_tiny ... total_training_steps=3`` on the same folder: it
   resumes from step 2 and trains step 3;
4. ``python -m metastone.export`` of step 3 and ``metastone score`` on the export.

Every link is asserted from the runs' own outputs: per-step metrics (JSONL), checkpoint files,
the head-state digests logged at save and at restore, and the rollout server's weight-sync lines.
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
def cpu_run(tmp_path_factory, qwq_tokenizer):
    from metastone.assets.tiny import make_tiny_reasoner, reasoner_problems

    root = tmp_path_factory.mktemp("e2e")
    model = make_tiny_reasoner(root / "model", qwq_tokenizer)
    problems = root / "problems.jsonl"
    problems.write_text("".join(json.dumps(r) + "\n" for r in reasoner_problems(64, seed=1)))
    _run([BIN / "python", "-m", "metastone.data.prepare", "--input", problems, "--output", root / "train.parquet",
          "--val-output", root / "val.parquet", "--val-size", "8"], root / "prepare.log")
    ckpt = root / "ckpt"
    env = {"PRESET": "cpu_tiny", "PYTHON": str(BIN / "python"), "MODEL": str(model),
           "TRAIN_FILES": str(root / "train.parquet"), "VAL_FILES": str(root / "val.parquet"), "OUTPUT_DIR": str(ckpt)}
    first = _run(["bash", REPO / "scripts/run_single_node.sh", "trainer.total_training_steps=2"], root / "run1.log",
                 env=env, cwd=root)
    second = _run([BIN / "python", "-m", "metastone.train", "preset=cpu_tiny", f"actor_rollout_ref.model.path={model}",
                   f"data.train_files={root / 'train.parquet'}", f"data.val_files={root / 'val.parquet'}",
                   f"trainer.default_local_dir={ckpt}", "trainer.total_training_steps=3"], root / "run2.log", cwd=root)
    return {"root": root, "model": model, "ckpt": ckpt, "first": first, "second": second,
            "metrics": _metrics(ckpt / "metrics")}


@pytest.mark.timeout(2400)
def test_first_run_trains_policy_and_head_from_valid_labels(cpu_run):
    from safetensors.torch import load_file

    first, _ = cpu_run["metrics"]
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


@pytest.mark.timeout(2400)
def test_resumed_run_continues_with_the_exact_head_state(cpu_run):
    import torch

    _, second = cpu_run["metrics"]
    assert [r["step"] for r in second] == [3]
    assert re.search(r"Resuming from \S*global_step_2", cpu_run["second"])
    step2 = str(cpu_run["ckpt"] / "global_step_2" / "actor")
    saved = re.findall(rf"SPRM head state saved to {re.escape(step2)} \(digest (\w+)\)", cpu_run["first"])
    restored = re.findall(rf"SPRM head state restored from {re.escape(step2)} \(digest (\w+)\)", cpu_run["second"])
    assert saved and restored and saved == restored, (saved, restored)  # head + AdamW + schedule bit-identical
    steps = [torch.load(cpu_run["ckpt"] / f"global_step_{s}/actor/sprm_train_state.pt", weights_only=False)
             for s in (2, 3)]
    counts = [{float(v["step"]) for v in st["optimizer"]["state"].values()} for st in steps]
    assert counts == [{4.0}, {6.0}]  # 2 updates per step: the head's AdamW continued, it did not restart
    assert (cpu_run["ckpt"] / "latest_checkpointed_iteration.txt").read_text().strip() == "3"


@pytest.mark.timeout(2400)
def test_export_of_the_last_step_scores_traces(cpu_run, tmp_path):
    out = tmp_path / "export"
    _run([BIN / "python", "-m", "metastone.export", "--local_dir", cpu_run["ckpt"] / "global_step_3" / "actor",
          "--target_dir", out], tmp_path / "export.log")
    for name in ("config.json", "score_module.pt", "sprm_head.safetensors", "sprm_config.json", "tokenizer.json"):
        assert (out / name).is_file(), name
    trace = tmp_path / "trace.txt"
    trace.write_text("Add 3 and 4.\n\nThe sum is 7.\n\n</think>\nThe answer is \\boxed{7}.")
    proc = subprocess.run([BIN / "metastone", "score", "--model", out, "--text-file", trace], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert len(result["all_scores"]) == 2 and all(0.0 < s < 1.0 for s in result["all_scores"])  # one per step
