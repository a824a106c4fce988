"""Self-supervised process reward (SPR) loss: step scores learned from final-answer correctness only.

MetaStone-S1, Eq. 6: every step of a trajectory is trained towards the trajectory's outcome label
``y`` (1 correct, 0 wrong) with a binary cross-entropy, but only where the step's own prediction
already agrees with the label (logit > 0 for y = 1, logit < 0 for y = 0). The disagreeing steps are
treated as noisy pseudo-labels and dropped:

    L = sum_i w_i * BCE(Score_i, y) / sum_i w_i

Weights as in the original training code: classes are balanced with counts of kept positive and
negative steps summed over data-parallel ranks (positive weight = N_neg / N, negative weight =
N_pos / N, +``count_smoothing`` on each count) and positives carry an extra ``pos_weight`` (1.5).
Trajectories whose outcome is ``OUTCOME_INVALID`` are excluded entirely. Which trajectories arrive
here as invalid is the caller's choice, made with ``map_invalid_outcome`` before the loss: the
original trains every non-correct trajectory (truncated, no answer, unparseable) as a negative, which
is the default (``invalid_outcome="negative"``); ``"exclude"`` keeps them out of the loss.

Distributed behaviour (``dp_group`` given): exactly two collectives run on every call, never inside
a data-dependent branch, so a rank with no step tokens cannot hang the others. The returned loss is
the GLOBAL Eq. 6 value, identical on every rank; its gradient is correct under mean-reduced data
parallelism (DDP/FSDP). Differences from the original, all deliberate: the smoothing is added once
to the global counts (the original adds 1 per rank before the all-reduce), the denominator is the
global weight sum (the original divides by a per-rank sum), and metrics use the step mask, not
``logit != 0``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from metastone.sprm.aggregate import aggregate

OUTCOME_CORRECT = 1.0
OUTCOME_WRONG = 0.0
OUTCOME_INVALID = -1.0
# Which steps agree with their trajectory's outcome (Eq. 6's filter): "sign" = the step's logit is > 0
# for a correct trajectory, < 0 for a wrong one (the original); "centered" = the same test on the logit
# minus the mean logit of the update's steps (all ranks), so a head whose logits have all drifted to
# one side still keeps the steps it ranks highest in correct trajectories (docs/differences.md).
AGREEMENTS = ("sign", "centered")
# What the SPR loss does with trajectories the grader marks invalid (truncated, no answer, unparseable):
# "negative" trains them as wrong (the original's behaviour), "exclude" leaves them out of the loss.
INVALID_OUTCOMES = ("negative", "exclude")


def scale_gradient(features: torch.Tensor, scale: float) -> torch.Tensor:
    """Same values as ``features``; the gradient reaching ``features`` is multiplied by ``scale``."""
    if scale == 0.0:
        return features.detach()
    if scale == 1.0:
        return features
    return features * scale + features.detach() * (1.0 - scale)


def check_invalid_outcome(invalid_outcome: str, key: str = "invalid_outcome") -> str:
    if invalid_outcome not in INVALID_OUTCOMES:
        raise ValueError(
            f"{key}={invalid_outcome!r} is invalid: expected one of {', '.join(INVALID_OUTCOMES)} "
            "('negative': invalid trajectories are trained as wrong, as in the original; 'exclude': left out)."
        )
    return invalid_outcome


def map_invalid_outcome(outcome: torch.Tensor, invalid_outcome: str = "negative") -> torch.Tensor:
    """Outcome labels for ``spr_loss``: ``OUTCOME_INVALID`` becomes ``OUTCOME_WRONG`` under ``"negative"``
    and stays (excluded from the loss) under ``"exclude"``; correct and wrong labels are unchanged."""
    check_invalid_outcome(invalid_outcome)
    if invalid_outcome == "exclude":
        return outcome
    return torch.where(outcome == OUTCOME_INVALID, torch.full_like(outcome, OUTCOME_WRONG), outcome)


def _all_reduce_stats(stats: torch.Tensor, dp_group) -> torch.Tensor:
    if dp_group is not None:
        stats = stats.clone()
        dist.all_reduce(stats, op=dist.ReduceOp.SUM, group=dp_group)
    return stats


def _all_reduce_with_grad(value: torch.Tensor, dp_group) -> torch.Tensor:
    if dp_group is None:
        return value
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(value, op=dist.ReduceOp.SUM, group=dp_group)


def spr_loss(
    step_logits: torch.Tensor,
    outcome: torch.Tensor,
    step_mask: torch.Tensor,
    *,
    pos_weight: float = 1.5,
    count_smoothing: float = 1.0,
    dp_group=None,
    aggregation: str = "geomean",
    agreement: str = "sign",
) -> tuple[torch.Tensor, dict[str, float]]:
    """SPR loss and metrics.

    Args:
        step_logits: ``[B, T]`` SPRM logits (only positions in ``step_mask`` are used).
        outcome: ``[B]`` outcome labels: 1 correct, 0 wrong, ``OUTCOME_INVALID`` (-1) excluded (map the
            grader's labels with ``map_invalid_outcome`` first).
        step_mask: ``[B, T]`` scored positions (see ``metastone.sprm.steps.step_mask``).
        pos_weight: extra factor on positive (correct-trajectory) steps.
        count_smoothing: added to the global positive and negative counts before balancing.
        dp_group: a ``torch.distributed`` process group to reduce over, or None for no collectives.
        aggregation: how the metrics aggregate step scores into trajectory scores.
        agreement: Eq. 6's filter: ``"sign"`` (the original: logit > 0 agrees with a correct outcome) or
            ``"centered"`` (logit minus the mean logit of all valid steps in the update, over ``dp_group``;
            one more collective on every call).

    Returns:
        ``(loss, metrics)``: a scalar loss tensor and ``sprm/*`` floats: ``loss``, ``correct_score``
        and ``wrong_score`` (mean trajectory score of correct / wrong trajectories), ``score_gap``
        (their difference, the "aha moment" curve), ``kept_step_frac`` (kept / all steps of valid
        trajectories), ``num_steps``, ``num_pos``, ``num_neg``, ``num_correct``, ``num_wrong``.
    """
    if step_logits.dim() != 2 or step_mask.shape != step_logits.shape:
        raise ValueError(
            f"spr_loss: step_logits and step_mask must both be [B, T]; got {tuple(step_logits.shape)} "
            f"and {tuple(step_mask.shape)}."
        )
    if outcome.shape != step_logits.shape[:1]:
        raise ValueError(f"spr_loss: outcome must be [B]={step_logits.shape[0]}, got {tuple(outcome.shape)}.")
    outcome = outcome.to(torch.float32)
    allowed = torch.tensor([OUTCOME_CORRECT, OUTCOME_WRONG, OUTCOME_INVALID], device=outcome.device)
    if not torch.isin(outcome, allowed).all():
        raise ValueError(
            f"spr_loss: outcome values must be 1 (correct), 0 (wrong) or {OUTCOME_INVALID} (invalid); "
            f"got {sorted(set(outcome.tolist()))}."
        )
    logits = step_logits.float()
    valid = outcome != OUTCOME_INVALID
    correct = outcome == OUTCOME_CORRECT
    steps = step_mask.bool() & valid[:, None]
    label = correct[:, None].expand_as(steps)
    if agreement not in AGREEMENTS:
        raise ValueError(f"spr_loss: agreement={agreement!r} is invalid: expected one of {', '.join(AGREEMENTS)}.")
    threshold = 0.0
    if agreement == "centered":
        with torch.no_grad():
            local_sum = torch.stack([(logits.detach() * steps).sum(), steps.sum()]).double()
            total_sum, total_n = _all_reduce_stats(local_sum, dp_group).tolist()
        threshold = total_sum / total_n if total_n else 0.0
    agree = torch.where(label, logits > threshold, logits < threshold)
    kept_pos = steps & agree & label
    kept_neg = steps & agree & ~label

    with torch.no_grad():
        traj = aggregate(torch.sigmoid(logits), steps, aggregation).double()
        wrong = valid & ~correct
        local = torch.stack(
            [
                kept_pos.sum(), kept_neg.sum(), steps.sum(),
                (traj * correct).sum(), correct.sum(), (traj * wrong).sum(), wrong.sum(),
            ]
        ).double()
        stats = _all_reduce_stats(local, dp_group)
    n_pos, n_neg, n_steps, c_sum, c_num, w_sum, w_num = stats.tolist()

    pos_count, neg_count = n_pos + count_smoothing, n_neg + count_smoothing
    total = pos_count + neg_count
    w_pos = pos_weight * neg_count / total if total > 0 else 0.0
    w_neg = pos_count / total if total > 0 else 0.0
    weights = kept_pos.float() * w_pos + kept_neg.float() * w_neg
    bce = F.binary_cross_entropy_with_logits(logits, label.float(), reduction="none")
    numerator = _all_reduce_with_grad((weights * bce).sum(), dp_group)
    denominator = w_pos * n_pos + w_neg * n_neg
    loss = numerator / max(denominator, 1e-12)

    correct_score = c_sum / c_num if c_num else 0.0
    wrong_score = w_sum / w_num if w_num else 0.0
    metrics = {
        "sprm/loss": float(loss.detach()),
        "sprm/correct_score": correct_score,
        "sprm/wrong_score": wrong_score,
        "sprm/score_gap": correct_score - wrong_score,
        "sprm/kept_step_frac": (n_pos + n_neg) / n_steps if n_steps else 0.0,
        "sprm/num_steps": n_steps,
        "sprm/num_pos": n_pos,
        "sprm/num_neg": n_neg,
        "sprm/num_correct": c_num,
        "sprm/num_wrong": w_num,
    }
    return loss, metrics
