"""Head options for joint training, tried in seconds on cached features (frozen backbone).

The joint run's head sees, step after step, the step features of fresh rollouts and their outcome
labels. With the backbone frozen that stream can be replayed from saved drafts, and every head option
(``actor_rollout_ref.sprm.*``) compared on the same data in seconds instead of a 20-minute run. This
script drives the trainer's own ``SPRMHeadRuntime`` (the same head, AdamW, standardization, replay
passes and validation code the verl engine calls) with that stream:

- each "training step" takes ``--prompts`` questions x their drafts (GRPO groups), split into
  mini-batches of ``ppo_mini`` groups (one head update each, the SPR loss of Eq. 6 as the engine
  computes it), then ``end_step`` (statistics frozen, replay passes);
- at the end the head in eval mode scores the held-out drafts: within-question AUROC and Best-of-K.

What it cannot show: the policy moving (features are the base policy's) and rollouts changing.

    # features once (any env with transformers), then the grid
    python benchmarks/joint_head_sim.py --model DIR --train-drafts train.jsonl --train-questions tq.jsonl \\
        --val-drafts val.jsonl --val-questions vq.jsonl --cache runs/sim
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time
from pathlib import Path

import torch

from metastone.train.config import SPRMTrainConfig
from metastone.train.head_runtime import SPRMHeadRuntime
from metastone.train.head_validation import ValidationSet, write_validation_set

# (name, SPRMTrainConfig overrides, groups per inline update)
GRID = {
    "original (raw, 1 group/update, lr 2e-5)": (dict(lr=2e-5), 1),
    "raw, 4 groups/update, lr 2e-5": (dict(lr=2e-5), 4),
    "std, 4 groups/update, lr 3e-4": (dict(lr=3e-4, standardize_features=True), 4),
    "std, 4 groups, lr 3e-4, replay 4x4 steps": (dict(lr=3e-4, standardize_features=True, replay_passes=4, replay_steps=4), 4),
    "std, 4 groups, lr 1e-4, replay 8x8 steps": (dict(lr=1e-4, standardize_features=True, replay_passes=8, replay_steps=8), 4),
    "std, 4 groups, lr 3e-4, replay 8x8 steps": (dict(lr=3e-4, standardize_features=True, replay_passes=8, replay_steps=8), 4),
    "centered, std, 4 groups, lr 3e-4": (dict(lr=3e-4, standardize_features=True, agreement="centered"), 4),
    "centered, std, 4 groups, lr 3e-4, replay 4x4 steps": (
        dict(lr=3e-4, standardize_features=True, agreement="centered", replay_passes=4, replay_steps=4), 4),
    "centered, std, 4 groups, lr 1e-4, replay 8x8 steps": (
        dict(lr=1e-4, standardize_features=True, agreement="centered", replay_passes=8, replay_steps=8), 4),
    "centered, std, 4 groups, lr 3e-4, replay 8x8 steps": (
        dict(lr=3e-4, standardize_features=True, agreement="centered", replay_passes=8, replay_steps=8), 4),
    "centered, raw, 1 group/update, lr 2e-5": (dict(lr=2e-5, agreement="centered"), 1),
}


def cached_set(model: str, drafts: Path, questions: Path, cache: Path, separators, think_tokens) -> ValidationSet:
    if cache.is_file():
        return ValidationSet.load(cache)
    from metastone.eval.tasks import load_task

    with load_task("demo", questions) as task:
        examples = {e.id: e for e in task.examples}
        return write_validation_set(model, drafts, lambda r: task.grade(r["response"], examples[r["question_id"]]).correct,
                                    cache, separators=separators, think_tokens=think_tokens)


def simulate(train: ValidationSet, val: ValidationSet, overrides: dict, mini: int, steps: int, prompts: int,
             seed: int) -> dict:
    cfg = SPRMTrainConfig(separators=(".",), think_tokens=None, validation_file=None, **overrides)
    torch.manual_seed(seed)
    runtime = SPRMHeadRuntime(cfg, train.hidden_size, device="cpu", total_steps=steps)
    questions = sorted(set(train.groups.tolist()))
    random.Random(seed).shuffle(questions)
    drafts_of = {q: [i for i in range(len(train)) if int(train.groups[i]) == q] for q in questions}
    kept_pos_zero = updates = 0
    for step in range(steps):
        chosen = [questions[(step * prompts + j) % len(questions)] for j in range(prompts)]
        for start in range(0, prompts, mini):
            idx = [i for q in chosen[start:start + mini] for i in drafts_of[q] if len(train.draft_features(i))]
            if not idx:
                continue
            feats = torch.cat([train.draft_features(i) for i in idx])
            rows = torch.cat([torch.full((len(train.draft_features(i)),), r) for r, i in enumerate(idx)])
            cols = torch.cat([torch.arange(len(train.draft_features(i))) for i in idx])
            labels, groups = train.labels[idx], train.groups[idx]
            mask = torch.zeros(len(idx), int(cols.max()) + 1, dtype=torch.bool)
            mask[rows, cols] = True
            runtime.zero_grad()
            runtime.head.train()
            runtime.observe(feats)
            logits = torch.zeros(mask.shape).index_put((rows, cols), runtime.logits(feats))
            loss, m = runtime.loss(logits, labels, mask)
            loss.backward()
            runtime.step()
            runtime.record(feats, rows, labels, groups)
            updates += 1
            kept_pos_zero += int(m["sprm/num_pos"] == 0 and m["sprm/num_correct"] > 0)
        extra = runtime.end_step()
        kept_pos_zero += int(extra.get("sprm/replay_zero_pos_updates", 0))
        updates += int(extra.get("sprm/replay_updates", 0))
    runtime._valset = val
    result = runtime.validate()
    return {"auroc": result.get("sprm/val_auroc"), "bon": result["sprm/val_bon"], "pass1": result["sprm/val_pass1"],
            "mean_score": result["sprm/val_mean_score"], "updates": updates, "zero_pos_updates": kept_pos_zero}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the policy folder that wrote the drafts")
    p.add_argument("--train-drafts", required=True)
    p.add_argument("--train-questions", required=True)
    p.add_argument("--val-drafts", required=True)
    p.add_argument("--val-questions", required=True)
    p.add_argument("--cache", required=True, help="folder for the two feature files")
    p.add_argument("--steps", type=int, nargs="+", default=[8, 24], help="training steps to simulate")
    p.add_argument("--prompts", type=int, default=4, help="prompts (GRPO groups) per step")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--only", nargs="*", default=None, help="grid rows whose name contains one of these")
    p.add_argument("--out", default=None, help="write every result as JSON lines here")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    cache = Path(args.cache)
    t0 = time.monotonic()
    train = cached_set(args.model, Path(args.train_drafts), Path(args.train_questions), cache / "train.safetensors", ["."], None)
    val = cached_set(args.model, Path(args.val_drafts), Path(args.val_questions), cache / "val.safetensors", ["."], None)
    print(f"features: train {len(train)} drafts / {len(set(train.groups.tolist()))} questions, val {len(val)} drafts "
          f"(pass@1 {100 * float(val.labels.mean()):.1f}); {time.monotonic() - t0:.0f} s", flush=True)
    sink = open(args.out, "a") if args.out else None
    for (name, (overrides, mini)), steps in itertools.product(GRID.items(), args.steps):
        if args.only and not any(o in name for o in args.only):
            continue
        t1 = time.monotonic()
        res = [simulate(train, val, overrides, mini, steps, args.prompts, s) for s in args.seeds]
        def cells(key, scale=1.0, fmt="{:.3f}"):
            return " / ".join(fmt.format(scale * r[key]) if r[key] is not None else "n/a" for r in res)

        print(f"{name}, {steps} steps: AUROC {cells('auroc')}; BoN {cells('bon', 100, '{:.1f}')}; mean score "
              f"{cells('mean_score', fmt='{:.2f}')}; updates {res[0]['updates']}, zero-positive "
              f"updates {sum(r['zero_pos_updates'] for r in res)}; seeds {args.seeds}; {time.monotonic() - t1:.1f} s",
              flush=True)
        if sink:
            for s, r in zip(args.seeds, res):
                sink.write(json.dumps({"name": name, "steps": steps, "seed": s, **r}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
