"""Train ``SPRMHead`` on stored step features with ``spr_loss``; evaluate on held-out questions.

Per epoch it logs the train loss and kept-step fraction, the mean trajectory score of correct and
wrong drafts (train and held-out: the "aha moment" gap), the held-out AUROC of trajectory score vs
correctness (pooled, and within question), and held-out SPRM Best-of-n accuracy (exact expectation
over subsets) next to pass@1 and oracle@K. Early stopping keeps the head with the best held-out within-question AUROC
(the mean over questions with both right and wrong drafts: the ranking Best-of-N uses; the pooled
AUROC also rewards telling easy questions from hard ones). The full state (head,
optimizer, history, best head) is saved after every epoch, so a killed run resumes at the next
epoch with the same numbers it would have produced uninterrupted.

Feature standardization (default on, ``--no-standardize`` for raw features): frozen backbones can
carry a few huge residual-stream dimensions, which make a head trained on raw features slow to fit.
The head is trained on ``(h - mean) / std`` (train-split statistics) and the affine map is folded
into its first Linear afterwards, so the saved head reads raw hidden states and has exactly the
released architecture and file format.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from metastone.metrics.ranking import auroc
from metastone.metrics.selection import best_of_n_exact
from metastone.sprm.aggregate import aggregate
from metastone.sprm.head import SPRMHead
from metastone.sprm.loss import OUTCOME_CORRECT, OUTCOME_INVALID, map_invalid_outcome, spr_loss

logger = logging.getLogger(__name__)


@dataclass
class Item:
    """One draft: its step features, its outcome label (1 / 0 / invalid) and whether it is correct."""

    key: str
    question_id: str
    features: torch.Tensor  # [n_steps, d]
    outcome: float
    correct: bool


def pack(items: Sequence[Item], hidden: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Padded ``[B, T, d]`` features, ``[B, T]`` step mask and ``[B]`` outcomes."""
    longest = max([it.features.shape[0] for it in items] + [1])
    feats = torch.zeros(len(items), longest, hidden)
    mask = torch.zeros(len(items), longest, dtype=torch.bool)
    for i, it in enumerate(items):
        n = it.features.shape[0]
        feats[i, :n] = it.features
        mask[i, :n] = True
    outcome = torch.tensor([it.outcome for it in items], dtype=torch.float32)
    return feats, mask, outcome


def feature_stats(items: Sequence[Item], hidden: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [it.features for it in items if it.features.shape[0]]
    if not rows:
        return torch.zeros(hidden), torch.ones(hidden)
    allrows = torch.cat(rows).double()
    return allrows.mean(0).float(), allrows.std(0).clamp_min(1e-4).float()


def fold_standardization(head: SPRMHead, mean: torch.Tensor, std: torch.Tensor) -> SPRMHead:
    """A head on raw features equal to ``head`` on ``(h - mean) / std``."""
    folded = SPRMHead(head.hidden_size, dropout=head[2].p)
    folded.load_state_dict(head.state_dict())
    with torch.no_grad():
        w = head[0].weight / std[None, :]
        folded[0].weight.copy_(w)
        folded[0].bias.copy_(head[0].bias - w @ mean)
    return folded


@torch.no_grad()
def trajectory_scores(head: SPRMHead, items: Sequence[Item], hidden: int, aggregation: str, mean=None, std=None,
                      batch: int = 512) -> list[float]:
    head.eval()
    out: list[float] = []
    for start in range(0, len(items), batch):
        feats, mask, _ = pack(items[start:start + batch], hidden)
        if mean is not None:
            feats = (feats - mean) / std
        probs = torch.sigmoid(head(feats))
        out += aggregate(probs, mask, aggregation).tolist()
    return out


def evaluate(items: Sequence[Item], scores: Sequence[float], ns: Sequence[int]) -> dict:
    """Held-out metrics of trajectory scores: AUROC, correct/wrong mean score, Best-of-n, pass@1, oracle."""
    correct = [it.correct for it in items]
    c = [s for s, y in zip(scores, correct) if y]
    w = [s for s, y in zip(scores, correct) if not y]
    groups: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(it.question_id, []).append(i)
    res = {"auroc": auroc(list(scores), correct), "correct_score": sum(c) / len(c) if c else None,
           "wrong_score": sum(w) / len(w) if w else None, "pass@1": sum(correct) / max(len(correct), 1),
           "questions": len(groups), "drafts": len(items)}
    # ranking inside a question is what Best-of-N uses: mean AUROC over questions with right and wrong drafts
    within = [auroc([scores[i] for i in g], [correct[i] for i in g]) for g in groups.values()]
    within = [a for a in within if a is not None]
    res["auroc_within"] = sum(within) / len(within) if within else None
    k = min((len(g) for g in groups.values()), default=0)
    for n in ns:
        if 1 <= n <= k:
            res[f"bon@{n}"] = sum(best_of_n_exact([correct[i] for i in g[:k]], [scores[i] for i in g[:k]], n)
                                  for g in groups.values()) / len(groups)
    if k:
        res[f"oracle@{k}"] = sum(any(correct[i] for i in g[:k]) for g in groups.values()) / len(groups)
    return res


def _or(value: float | None, default: float = -1.0) -> float:
    return default if value is None else value


def _save_state(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train_head(train: Sequence[Item], held: Sequence[Item], hidden: int, cfg, state_path: Path,
               on_epoch=None) -> tuple[SPRMHead, list[dict], int]:
    """Fit the head; returns the best head (on raw features), the per-epoch history and the best epoch."""
    mean, std = feature_stats(train, hidden) if cfg.standardize else (None, None)
    torch.manual_seed(cfg.seed)
    head = SPRMHead(hidden, dropout=cfg.dropout)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history: list[dict] = []
    best = {"auroc": (-2.0, -2.0, float("-inf")), "epoch": -1, "state": None}
    start_epoch = 0
    if state_path.is_file():
        state = torch.load(state_path, weights_only=False)
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["optimizer"])
        history, best, start_epoch = state["history"], state["best"], state["epoch"] + 1
        logger.info("resuming head training at epoch %d (best so far: epoch %d)", start_epoch, best["epoch"])
    # invalid drafts: negatives (the original) or left out (--invalid-outcome exclude)
    invalid_outcome = getattr(cfg, "invalid_outcome", "negative")
    trainable = list(train) if invalid_outcome == "negative" else [it for it in train if it.outcome != OUTCOME_INVALID]
    ns = sorted({2, 4, cfg.n_drafts})
    for epoch in range(start_epoch, cfg.epochs):
        if epoch - best["epoch"] > cfg.patience and best["epoch"] >= 0:
            break
        torch.manual_seed(cfg.seed * 100003 + epoch)  # dropout and order: same numbers after a resume
        order = torch.randperm(len(trainable)).tolist()
        head.train()
        sums = {"loss": 0.0, "kept_step_frac": 0.0, "batches": 0}
        for start in range(0, len(order), cfg.batch_size):
            batch = [trainable[i] for i in order[start:start + cfg.batch_size]]
            feats, mask, outcome = pack(batch, hidden)
            if mean is not None:
                feats = (feats - mean) / std
            outcome = map_invalid_outcome(outcome, invalid_outcome)
            loss, metrics = spr_loss(head(feats), outcome, mask, pos_weight=cfg.pos_weight, aggregation=cfg.aggregation)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sums["loss"] += metrics["sprm/loss"]
            sums["kept_step_frac"] += metrics["sprm/kept_step_frac"]
            sums["batches"] += 1
        nb = max(sums["batches"], 1)
        train_scores = trajectory_scores(head, train, hidden, cfg.aggregation, mean, std)
        held_scores = trajectory_scores(head, held, hidden, cfg.aggregation, mean, std)
        tr = evaluate(train, train_scores, ())
        ho = evaluate(held, held_scores, ns)
        row = {"epoch": epoch, "train_loss": sums["loss"] / nb, "kept_step_frac": sums["kept_step_frac"] / nb,
               "train_correct_score": tr["correct_score"], "train_wrong_score": tr["wrong_score"], "train_auroc": tr["auroc"],
               **{f"heldout_{k}": v for k, v in ho.items()}}
        history.append(row)
        # selection criterion: held-out within-question AUROC (what Best-of-N depends on), ties broken by
        # the pooled AUROC, then by the train loss (undefined AUROCs count as -1)
        score = (_or(ho["auroc_within"]), _or(ho["auroc"]), -row["train_loss"])
        if score > best["auroc"]:
            best = {"auroc": score, "epoch": epoch, "state": {k: v.clone() for k, v in head.state_dict().items()}}
        _save_state(state_path, {"head": head.state_dict(), "optimizer": opt.state_dict(), "history": history,
                                 "best": best, "epoch": epoch})
        if on_epoch is not None:
            on_epoch(row)
    final = SPRMHead(hidden, dropout=cfg.dropout)
    final.load_state_dict(best["state"] if best["state"] is not None else head.state_dict())
    if mean is not None:
        final = fold_standardization(final, mean, std)
    return final.eval(), history, best["epoch"]


def label_of(outcome: float) -> bool:
    return outcome == OUTCOME_CORRECT
