"""Outcome labels for the SPR loss: from the reward function's ``sprm_label`` to a per-sample batch field.

Path of a label (verl 0.9.1, V1 trainer):

1. ``metastone.train.reward.compute_score`` returns ``{"score", "sprm_label", ...}``; verl stores the
   dict per trajectory in TransferQueue as ``extra_fields["reward_extra_info"]`` and the score as
   ``rm_scores`` (at the last response token).
2. ``SPRMPPOTrainer._compute_advantage`` turns them into ``sprm_outcome`` (``[B]`` float: 1 / 0 /
   ``OUTCOME_INVALID``) with ``spr_labels`` and writes it to TransferQueue, from where
   ``update_actor`` receives it with every other field.
3. The engine reads it per micro-batch with ``outcome_from_batch``.

``spr_labels`` applies ``actor_rollout_ref.sprm.invalid_outcome`` here, before the loss: with
``negative`` (the default, as the original: every non-correct trajectory is a negative) a trajectory
the reward marks invalid is written as wrong (0); with ``exclude`` it is written as
``OUTCOME_INVALID`` and the SPR loss skips it. Its metrics report the graded correct / wrong /
invalid fractions and the negative / excluded fractions in either mode.

If a trajectory has no ``sprm_label`` (a reward function other than ours), the label falls back to
``score > outcome_threshold`` with no invalid class; synthetic padding samples are always excluded.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch

from metastone.sprm.loss import OUTCOME_CORRECT, OUTCOME_INVALID, OUTCOME_WRONG, map_invalid_outcome

logger = logging.getLogger(__name__)

OUTCOME_KEY = "sprm_outcome"
LABEL_KEY = "sprm_label"
_ALLOWED = (OUTCOME_CORRECT, OUTCOME_WRONG, OUTCOME_INVALID)


def per_sample_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over each sample of a nested (jagged) ``[B, j]`` or dense ``[B, T]`` tensor -> ``[B]``."""
    if values.is_nested:
        return torch.stack([t.sum() for t in values.unbind()]).float()
    return values.reshape(values.shape[0], -1).sum(1).float()


def threshold_labels(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    return torch.where(scores > threshold, OUTCOME_CORRECT, OUTCOME_WRONG).float()


def reward_label(entry: Any) -> float | None:
    """The reward function's ``sprm_label`` in one trajectory's ``extra_fields``, or None."""
    entry = getattr(entry, "data", entry)  # NonTensorData from TransferQueue
    info = entry.get("reward_extra_info", {}) if isinstance(entry, dict) else {}
    return info.get(LABEL_KEY) if isinstance(info, dict) else None


def labels_from_rollouts(
    extra_fields: Sequence[Any],
    reward_sums: torch.Tensor,
    *,
    threshold: float = 0.5,
    is_padding: Sequence[bool] | None = None,
) -> torch.Tensor:
    """``[B]`` SPR labels from each trajectory's ``extra_fields`` (verl's per-trajectory dict)."""
    if len(extra_fields) != reward_sums.shape[0]:
        raise ValueError(f"got {len(extra_fields)} extra_fields for {reward_sums.shape[0]} reward sums.")
    labels = threshold_labels(reward_sums, threshold)
    missing = 0
    for i, entry in enumerate(extra_fields):
        label = reward_label(entry)
        if label is None:
            missing += 1
            continue
        label = float(label)
        if label not in _ALLOWED:
            raise ValueError(
                f"reward_extra_info['{LABEL_KEY}']={label!r} for trajectory {i}; the reward function must return "
                f"{OUTCOME_CORRECT} (correct), {OUTCOME_WRONG} (wrong) or {OUTCOME_INVALID} (invalid)."
            )
        labels[i] = label
    if missing:
        logger.warning(
            "%d/%d trajectories carry no '%s' from the reward function; their SPR label is reward > %s "
            "(no invalid class). Use reward.custom_reward_function.path=pkg://metastone.train.reward.",
            missing, len(extra_fields), LABEL_KEY, threshold,
        )
    if is_padding is not None:
        pad = torch.as_tensor(list(is_padding), dtype=torch.bool)
        labels[pad] = OUTCOME_INVALID
    return labels


def spr_labels(
    extra_fields: Sequence[Any],
    reward_sums: torch.Tensor,
    *,
    threshold: float = 0.5,
    is_padding: Sequence[bool] | None = None,
    invalid_outcome: str = "negative",
) -> tuple[torch.Tensor, dict[str, float]]:
    """``[B]`` labels for the SPR loss (``invalid_outcome`` applied, padding excluded) and label metrics.

    Metrics, as fractions of the real (non-padding) trajectories, whichever the mode:
    ``sprm/label_correct_frac``, ``sprm/label_wrong_frac``, ``sprm/label_invalid_frac`` (as graded), and
    ``sprm/label_negative_frac`` / ``sprm/label_excluded_frac`` (what the SPR loss does with them), and
    ``sprm/label_from_reward_frac`` (trajectories without ``sprm_label``, labelled by the reward threshold).
    """
    graded = labels_from_rollouts(extra_fields, reward_sums, threshold=threshold)
    labels = map_invalid_outcome(graded, invalid_outcome).clone()
    pad = torch.zeros_like(labels, dtype=torch.bool)
    if is_padding is not None:
        pad = torch.as_tensor(list(is_padding), dtype=torch.bool)
        labels[pad] = OUTCOME_INVALID
    real = ~pad
    count = max(int(real.sum()), 1)

    def frac(where: torch.Tensor) -> float:
        return float((where & real).sum()) / count

    metrics = {
        "sprm/label_correct_frac": frac(graded == OUTCOME_CORRECT),
        "sprm/label_wrong_frac": frac(graded == OUTCOME_WRONG),
        "sprm/label_invalid_frac": frac(graded == OUTCOME_INVALID),
        "sprm/label_negative_frac": frac(labels == OUTCOME_WRONG),
        "sprm/label_excluded_frac": frac(labels == OUTCOME_INVALID),
        # > 0 only when the reward function returned no sprm_label (labels fell back to the reward)
        "sprm/label_from_reward_frac": frac(torch.tensor([reward_label(e) is None for e in extra_fields])),
    }
    return labels, metrics


_warned_fallback = False


def outcome_from_batch(data, threshold: float = 0.5) -> torch.Tensor:
    """``[B]`` labels of a (micro-)batch TensorDict: ``sprm_outcome`` if present, else ``rm_scores`` thresholded."""
    global _warned_fallback
    keys = set(data.keys())
    if OUTCOME_KEY in keys:
        return data[OUTCOME_KEY].reshape(-1).float()
    if "rm_scores" not in keys:
        raise ValueError(
            f"the training batch has neither '{OUTCOME_KEY}' nor 'rm_scores', so the SPR loss has no outcome "
            "label; run through metastone.train (SPRMPPOTrainer writes the labels) with a reward function."
        )
    if not _warned_fallback:
        logger.warning("batch has no '%s'; SPR labels fall back to rm_scores > %s.", OUTCOME_KEY, threshold)
        _warned_fallback = True
    return threshold_labels(per_sample_sum(data["rm_scores"]), threshold)


GROUP_KEY = "sprm_group"
# Per mini-batch sums the engine logs (lists, one entry per mini-batch and rank) and the trainer turns
# into the step's ranking metrics; equal-length lists, so a ratio of their means is a ratio of sums.
RANK_SUMS = ("sprm/rank_pairs", "sprm/rank_wins", "sprm/correct_sum", "sprm/correct_n", "sprm/wrong_sum", "sprm/wrong_n")


def group_ids(uids: Sequence[Any]) -> torch.Tensor:
    """``[B]`` int64: the index of each trajectory's prompt (its ``uid``) in order of first appearance."""
    if hasattr(uids, "tolist"):
        uids = uids.tolist()
    index: dict[Any, int] = {}
    keys = [str(getattr(u, "data", u)) for u in uids]  # NonTensorData from TransferQueue
    return torch.tensor([index.setdefault(k, len(index)) for k in keys], dtype=torch.int64)


def rank_sums(groups: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Within-question ranking sums of trajectory scores.

    Over every (correct, wrong) pair of trajectories of the same prompt: ``rank_pairs`` (how many) and
    ``rank_wins`` (how many the correct one outscores; ties count 1/2), so ``wins / pairs`` is the head's
    within-question AUROC, the quantity Best-of-N selection depends on. Also the score sums and counts
    of correct and wrong trajectories (for the score gap). Labels other than 1 / 0 are skipped.
    """
    groups, scores, labels = groups.reshape(-1), scores.reshape(-1).double(), labels.reshape(-1)
    correct, wrong = labels == OUTCOME_CORRECT, labels == OUTCOME_WRONG
    same = groups[:, None] == groups[None, :]
    pair = same & correct[:, None] & wrong[None, :]
    diff = scores[:, None] - scores[None, :]
    wins = ((diff > 0).double() + 0.5 * (diff == 0).double())[pair].sum()
    return {
        "sprm/rank_pairs": float(pair.sum()),
        "sprm/rank_wins": float(wins),
        "sprm/correct_sum": float(scores[correct].sum()),
        "sprm/correct_n": float(correct.sum()),
        "sprm/wrong_sum": float(scores[wrong].sum()),
        "sprm/wrong_n": float(wrong.sum()),
    }


def step_rank_metrics(metrics: dict, prefix: str = "actor/") -> dict[str, float]:
    """The step's ``sprm/within_q_auroc`` and ``sprm/step_score_gap`` from the mean-reduced ``RANK_SUMS``.

    Pops the sums from ``metrics``; a metric whose pairs (or classes) are absent this step is left out.
    """
    sums = {key: metrics.pop(prefix + key, None) for key in RANK_SUMS}
    out = {}
    if sums["sprm/rank_pairs"]:
        out["sprm/within_q_auroc"] = sums["sprm/rank_wins"] / sums["sprm/rank_pairs"]
        out["sprm/rank_pairs"] = sums["sprm/rank_pairs"]  # mean per mini-batch
    if sums["sprm/correct_n"] and sums["sprm/wrong_n"]:
        out["sprm/step_score_gap"] = sums["sprm/correct_sum"] / sums["sprm/correct_n"] - sums["sprm/wrong_sum"] / sums["sprm/wrong_n"]
    return out
