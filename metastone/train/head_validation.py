"""A fixed validation set for the SPRM head during training: cached step features of held-out drafts.

The per-step metrics of a training run (``sprm/within_q_auroc`` on the step's rollouts) are computed
on training-mode (dropout) logits over a few prompts: too noisy to show learning. With
``actor_rollout_ref.sprm.validation_file`` the engine also scores, every ``validation_freq`` steps and
after the last one, a fixed set of drafts with the head in eval mode (no dropout), as the scorers do,
and logs:

- ``sprm/val_auroc``: within-question AUROC (every right/wrong pair of drafts of one question);
- ``sprm/val_bon``: Best-of-K accuracy (K = drafts per question; ties split exactly, as the metrics do);
- ``sprm/val_mean_score``: the mean trajectory score (a head drifting to "all wrong" shows here);
- ``sprm/val_pass1``: the drafts' accuracy (fixed: the reference line for ``val_bon``).

The set is the base policy's drafts for held-out questions, sampled once; their features are the base
policy's (read once when the file is written), so the numbers are the head's alone, comparable across
steps and with the head comparison ``metastone demo-train`` prints at the end (same drafts, same
features). File: one safetensors file, ``features [S, d]`` (every draft's step features, concatenated),
``offsets [N+1]`` (draft i's rows are ``offsets[i]:offsets[i+1]``), ``groups [N]`` (question index),
``labels [N]`` (1 right, 0 wrong).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors.torch import load_file, save_file

from metastone.sprm.aggregate import aggregate_list

KEYS = ("features", "offsets", "groups", "labels")


class ValidationSet:
    def __init__(self, features: torch.Tensor, offsets: torch.Tensor, groups: torch.Tensor, labels: torch.Tensor):
        n = groups.shape[0]
        if offsets.shape != (n + 1,) or labels.shape != (n,) or int(offsets[-1]) != features.shape[0]:
            raise ValueError(
                f"validation set: inconsistent shapes (features {tuple(features.shape)}, offsets "
                f"{tuple(offsets.shape)}, groups {tuple(groups.shape)}, labels {tuple(labels.shape)}); expected "
                "offsets [N+1] ending at features' row count, groups [N], labels [N]."
            )
        self.features, self.offsets, self.groups, self.labels = features.float(), offsets.long(), groups.long(), labels.float()

    @property
    def hidden_size(self) -> int:
        return int(self.features.shape[1])

    def __len__(self) -> int:
        return int(self.groups.shape[0])

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        save_file({"features": self.features.contiguous(), "offsets": self.offsets, "groups": self.groups,
                   "labels": self.labels}, str(partial))
        partial.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ValidationSet":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"actor_rollout_ref.sprm.validation_file={path}: no such file; write it with "
                "metastone.train.head_validation.write_validation_set (metastone demo-train does), or set it to null."
            )
        state = load_file(str(path))
        missing = [k for k in KEYS if k not in state]
        if missing:
            raise ValueError(f"{path}: not a validation set (missing {missing}; expected keys {list(KEYS)}).")
        return cls(*(state[k] for k in KEYS))

    @classmethod
    def from_drafts(cls, features: Sequence[torch.Tensor], groups: Sequence[int], labels: Sequence[bool]) -> "ValidationSet":
        hidden = next((f.shape[1] for f in features if f.dim() == 2), 0)
        sizes = torch.tensor([0] + [len(f) for f in features])
        rows = [f.reshape(-1, hidden).float() for f in features]
        return cls(torch.cat(rows) if rows else torch.zeros(0, hidden), sizes.cumsum(0),
                   torch.tensor(list(groups)), torch.tensor([1.0 if c else 0.0 for c in labels]))

    def draft_features(self, i: int) -> torch.Tensor:
        return self.features[int(self.offsets[i]):int(self.offsets[i + 1])]


@torch.no_grad()
def score_drafts(valset: ValidationSet, step_logits: Callable[[torch.Tensor], torch.Tensor],
                 aggregation: str = "geomean") -> list[float]:
    """Each draft's trajectory score: ``sigmoid(step_logits(features))`` aggregated as the scorers do
    (a draft with no step gets the aggregation's empty value)."""
    probs = torch.sigmoid(step_logits(valset.features).float()) if len(valset.features) else torch.zeros(0)
    return [aggregate_list(probs[int(valset.offsets[i]):int(valset.offsets[i + 1])].tolist(), aggregation)
            for i in range(len(valset))]


def ranking_metrics(scores: Sequence[float], groups: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Within-question AUROC, Best-of-K (K = the question's drafts), mean score and accuracy."""
    from metastone.metrics.selection import best_of_n_exact
    from metastone.train.outcome import rank_sums

    score_t = torch.tensor(list(scores), dtype=torch.float64)
    sums = rank_sums(groups, score_t, labels)
    bon = []
    for q in torch.unique(groups).tolist():
        in_q = groups == q
        bon.append(best_of_n_exact(labels[in_q].bool().tolist(), score_t[in_q].tolist(), int(in_q.sum())))
    out = {"sprm/val_bon": sum(bon) / len(bon) if bon else 0.0,
           "sprm/val_mean_score": float(score_t.mean()) if len(score_t) else 0.0,
           "sprm/val_pass1": float(labels.mean()) if len(labels) else 0.0,
           "sprm/val_pairs": sums["sprm/rank_pairs"]}
    if sums["sprm/rank_pairs"]:
        out["sprm/val_auroc"] = sums["sprm/rank_wins"] / sums["sprm/rank_pairs"]
    return out


def evaluate_head(valset: ValidationSet, step_logits: Callable[[torch.Tensor], torch.Tensor],
                  aggregation: str = "geomean") -> dict[str, float]:
    return ranking_metrics(score_drafts(valset, step_logits, aggregation), valset.groups, valset.labels)


def evaluate_head_files(valset: ValidationSet, heads: dict[str, str | Path]) -> dict[str, dict]:
    """Each saved head's within-question AUROC and Best-of-K accuracy on the SAME drafts (``valset``), scored as
    the harness scores (eval mode, step scores, the head's own aggregation); Best-of-K is the metrics' own
    (``best_of_n_exact`` with n = K). ``heads``: name -> head folder or file."""
    from metastone.sprm import load_head

    result = {}
    for name, path in heads.items():
        head, config = load_head(path)
        m = evaluate_head(valset, head.eval(), config.aggregation)
        result[name] = {"within_q_auroc": m.get("sprm/val_auroc"), "pairs": int(m["sprm/val_pairs"]), "bon": m["sprm/val_bon"]}
    return result


def write_validation_set(model_dir: str | Path, drafts_file: str | Path, grade: Callable[[dict], bool],
                         out: str | Path, *, separators, think_tokens, feature_layer: int = -2) -> ValidationSet:
    """Read the step features of every draft in ``drafts_file`` (harness records) with the policy in
    ``model_dir`` (float32, the prompt's cache shared by its drafts) and write the set to ``out``.
    ``grade(record)`` says whether a draft is right. Questions keep their order of first appearance."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from metastone.fit.features import question_features
    from metastone.records import read_records
    from metastone.sprm import resolve_step_spec

    records = sorted(read_records(drafts_file), key=lambda r: (r["question_id"], r["draft"]))
    by_question: dict[str, list[dict]] = {}
    for r in records:
        by_question.setdefault(r["question_id"], []).append(r)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    spec = resolve_step_spec(tokenizer, tuple(separators), tuple(think_tokens) if think_tokens else None)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    feats, groups, labels = [], [], []
    for qi, drafts in enumerate(by_question.values()):
        prompt_ids = tokenizer(drafts[0]["prompt"])["input_ids"]
        if len(prompt_ids) != drafts[0]["prompt_len"]:
            raise ValueError(f"{drafts_file}: question {drafts[0]['question_id']}'s prompt re-tokenizes to "
                             f"{len(prompt_ids)} tokens, the record says {drafts[0]['prompt_len']}; were the drafts "
                             f"made with {model_dir}?")
        feats += question_features(model, prompt_ids, [d["token_ids"] for d in drafts], spec, feature_layer=feature_layer)
        groups += [qi] * len(drafts)
        labels += [bool(grade(d)) for d in drafts]
    valset = ValidationSet.from_drafts(feats, groups, labels)
    valset.save(out)
    return valset
