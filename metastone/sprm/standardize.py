"""Feature standardization for a head trained from scratch, folded into the head when it is saved.

A backbone's hidden states share a large common component (SmolLM2-135M's layer -2 states have a
mean norm of ~640 against a spread of ~175). A freshly initialised head on such features outputs a
seed-dependent, almost constant logit of several units, and its first optimizer steps move every
logit together far more than they separate good steps from bad ones. Standardizing each feature
coordinate, ``x' = (x - mean) / std``, removes that: the fresh head's logits start near 0 and the
SPR loss (Eq. 6) keeps steps of both classes from the first update.

The statistics are estimated from the first training steps' step features (``FeatureStandardizer``,
sums reduced over data-parallel ranks so every replica agrees) and then frozen. Standardization is an
affine map, so it folds exactly into the head's first linear layer (``fold_standardization``):

    W' = W / std (per input column),   b' = b - W' @ mean

and the saved head is a plain ``SPRMHead`` over raw features: scorers, export and released-format
files need nothing new. The offline fit folds its scaling the same way (docs/differences.md).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from metastone.sprm.head import SPRMHead

# A coordinate whose spread is below this fraction of the mean spread is divided by that floor instead
# (near-constant coordinates would otherwise be blown up into noise).
STD_FLOOR = 1e-3


class FeatureStandardizer:
    """Running per-coordinate mean / std of step features, frozen after ``collect_steps`` training steps.

    ``observe`` adds a batch of features (and all-reduces the sums over ``dp_group``, on every call, so
    ranks stay in lockstep); ``apply`` standardizes with the current estimate; ``end_step`` counts
    training steps and freezes the estimate after ``collect_steps``. Before any feature was observed
    ``apply`` is the identity.
    """

    def __init__(self, hidden_size: int, collect_steps: int = 1, dp_group=None):
        if collect_steps < 1:
            raise ValueError(f"FeatureStandardizer: collect_steps must be >= 1, got {collect_steps}.")
        self.hidden_size, self.collect_steps, self.dp_group = hidden_size, collect_steps, dp_group
        self.total = torch.zeros(hidden_size, dtype=torch.float64)
        self.total_sq = torch.zeros(hidden_size, dtype=torch.float64)
        self.count = 0.0
        self.steps_seen = 0
        self.mean = torch.zeros(hidden_size)
        self.std = torch.ones(hidden_size)

    @property
    def frozen(self) -> bool:
        return self.steps_seen >= self.collect_steps

    def observe(self, features: torch.Tensor) -> None:
        """Add ``[n, d]`` features to the estimate (a no-op once frozen); every rank must call it alike."""
        if self.frozen:
            return
        x = features.detach().to(device="cpu", dtype=torch.float64).reshape(-1, self.hidden_size)
        local = torch.cat([x.sum(0), (x * x).sum(0), torch.tensor([float(x.shape[0])], dtype=torch.float64)])
        if self.dp_group is not None:
            dist.all_reduce(local, op=dist.ReduceOp.SUM, group=self.dp_group)
        d = self.hidden_size
        self.total += local[:d]
        self.total_sq += local[d:2 * d]
        self.count += float(local[-1])
        self._refresh()

    def _refresh(self) -> None:
        if self.count < 2:
            return
        mean = self.total / self.count
        var = (self.total_sq / self.count - mean * mean).clamp(min=0.0) * self.count / (self.count - 1)
        std = var.sqrt()
        std = std.clamp(min=STD_FLOOR * float(std.mean()) + 1e-12)
        self.mean, self.std = mean.float(), std.float()

    def end_step(self) -> None:
        """One training step done (freezes the estimate after ``collect_steps``)."""
        if not self.frozen:
            self.steps_seen += 1

    def apply(self, features: torch.Tensor) -> torch.Tensor:
        mean = self.mean.to(device=features.device, dtype=features.dtype)
        std = self.std.to(device=features.device, dtype=features.dtype)
        return (features - mean) / std

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"total": self.total.clone(), "total_sq": self.total_sq.clone(),
                "count": torch.tensor(self.count, dtype=torch.float64),
                "steps_seen": torch.tensor(self.steps_seen, dtype=torch.int64),
                "mean": self.mean.clone(), "std": self.std.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state["mean"].shape != (self.hidden_size,):
            raise ValueError(f"feature statistics for d={state['mean'].shape[0]}, this head has d={self.hidden_size}.")
        self.total, self.total_sq = state["total"].double().clone(), state["total_sq"].double().clone()
        self.count, self.steps_seen = float(state["count"]), int(state["steps_seen"])
        self.mean, self.std = state["mean"].float().clone(), state["std"].float().clone()


@torch.no_grad()
def fold_standardization(head: SPRMHead, mean: torch.Tensor, std: torch.Tensor) -> SPRMHead:
    """A new head on raw features equal to ``head((x - mean) / std)``; ``head`` is unchanged.

    The fold is computed in float64 and stored in the head's dtype (float32: scores agree to ~1e-6).
    """
    folded = SPRMHead(head.hidden_size, dropout=head[2].p)
    folded.load_state_dict(head.state_dict())
    first, new_first = head[0], folded[0]
    weight = first.weight.double() / std.double().to(first.weight.device)[None, :]
    bias = first.bias.double() - weight @ mean.double().to(first.weight.device)
    new_first.weight.copy_(weight.to(first.weight.dtype))
    new_first.bias.copy_(bias.to(first.bias.dtype))
    return folded.to(first.weight.device).train(head.training)
