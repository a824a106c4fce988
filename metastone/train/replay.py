"""A bounded replay buffer of the SPRM head's training data: step features and outcome labels.

In the original joint training the head takes one optimizer step per policy mini-batch and sees each
trajectory once. At small scale that is too little data for the head (docs/train.md, "Joint-training
demo"); ``actor_rollout_ref.sprm.replay_passes`` adds head-only passes, after each training step,
over the step features of the last ``replay_steps`` steps. The backbone is untouched by them (the
features are stored detached), and staleness is bounded by ``replay_steps``: a feature is at most
that many policy updates old.

Entries are whole trajectories (raw, unstandardized ``[n_steps, d]`` features on the CPU, the outcome
label, the prompt group); an update takes every trajectory of ``groups_per_update`` prompt groups, so
both classes are present whenever those groups hold a right and a wrong answer.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

import torch


@dataclass
class Trajectory:
    features: torch.Tensor  # [n_steps, d] float32, CPU, raw (as the backbone produced them)
    label: float  # 1 correct / 0 wrong (invalid trajectories are never stored)
    group: tuple[int, int]  # (training step, prompt index in that step)


class ReplayBuffer:
    """The trajectories of the last ``max_steps`` training steps (the current one included once it ends)."""

    def __init__(self, max_steps: int):
        if max_steps < 1:
            raise ValueError(f"ReplayBuffer: max_steps must be >= 1, got {max_steps}.")
        self.max_steps = max_steps
        self.steps: deque[list[Trajectory]] = deque(maxlen=max_steps)
        self.current: list[Trajectory] = []
        self.step_index = 0

    def add(self, features: torch.Tensor, label: float, group: int) -> None:
        self.current.append(Trajectory(features.detach().to("cpu", torch.float32).clone(), float(label),
                                       (self.step_index, int(group))))

    def end_step(self) -> None:
        self.steps.append(self.current)
        self.current = []
        self.step_index += 1

    def __len__(self) -> int:
        return sum(len(s) for s in self.steps)

    def batches(self, groups_per_update: int, seed: int) -> list[list[Trajectory]]:
        """One pass: the buffer's prompt groups shuffled (``seed``) and cut into updates of
        ``groups_per_update`` groups (a last, smaller update keeps the remainder)."""
        groups: dict[tuple[int, int], list[Trajectory]] = {}
        for step in self.steps:
            for traj in step:
                groups.setdefault(traj.group, []).append(traj)
        keys = sorted(groups)
        random.Random(seed).shuffle(keys)
        return [[t for key in keys[i:i + groups_per_update] for t in groups[key]]
                for i in range(0, len(keys), groups_per_update)]

    # ---------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict:
        return {"max_steps": self.max_steps, "step_index": self.step_index,
                "steps": [[(t.features, t.label, t.group) for t in step] for step in self.steps]}

    def load_state_dict(self, state: dict) -> None:
        self.step_index = int(state["step_index"])
        self.steps = deque(([Trajectory(f, float(y), tuple(g)) for f, y, g in step] for step in state["steps"]),
                           maxlen=self.max_steps)
        self.current = []


def padded(trajectories: list[Trajectory]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(features [S, d], rows, cols)`` of a list of trajectories: step ``j`` of trajectory ``i`` is
    row ``i``, column ``j`` of a ``[len(trajectories), max_steps]`` step grid."""
    feats = [t.features for t in trajectories]
    rows = torch.cat([torch.full((len(f),), i, dtype=torch.long) for i, f in enumerate(feats)])
    cols = torch.cat([torch.arange(len(f)) for f in feats])
    return torch.cat(feats), rows, cols
