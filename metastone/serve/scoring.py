"""From per-token SPRM probabilities to step scores and a trajectory score: shared by every backend.

A backend that returns one probability per token (the vLLM pooling scorer, its HTTP ``/pooling``
endpoint) hands them here together with the token ids; step rows come from
``metastone.sprm.step_mask`` and the trajectory score from ``metastone.sprm.aggregate``, so every
backend scores exactly the positions the trainer trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

from metastone.sprm import StepSpec, aggregate_list, step_positions


@dataclass
class TraceScore:
    """SPRM result for one trace: step scores at their positions and the trajectory score."""

    value: float
    step_scores: list[float]
    positions: list[int]
    # tokens the backend ran through the model for this trace (fewer than its length where a cached or
    # shared prefix was reused; a prefix shared within the call is split evenly among its users); None
    # where the backend does not say. Not part of the ``/score`` contract.
    computed_tokens: float | None = field(default=None, compare=False)

    def as_dict(self) -> dict:
        return {"value": self.value, "all_scores": self.step_scores, "score_positions": self.positions}


class Scorer(Protocol):
    """What search and the harness need from any scoring backend."""

    def score_ids(self, sequences: Sequence[Sequence[int]], prompt_lens: Sequence[int] | None = None) -> list[TraceScore]: ...


def trace_score_from_token_probs(
    token_ids: Sequence[int], prompt_len: int, token_probs: Sequence[float], spec: StepSpec, aggregation: str
) -> TraceScore:
    """Pick the step rows of one trace from its per-token probabilities and aggregate them."""
    if len(token_probs) != len(token_ids):
        raise ValueError(f"got {len(token_probs)} per-token scores for {len(token_ids)} tokens; they must match.")
    positions = step_positions(token_ids, prompt_len, spec)
    scores = [float(token_probs[p]) for p in positions]
    return TraceScore(aggregate_list(scores, aggregation), scores, positions)


def check_batch(sequences: Sequence[Sequence[int]], prompt_lens: Sequence[int] | None, max_len: int | None) -> list[int]:
    """Validate a scoring batch; returns the prompt lengths (default 0)."""
    lens = list(prompt_lens) if prompt_lens is not None else [0] * len(sequences)
    if len(lens) != len(sequences):
        raise ValueError(f"got {len(sequences)} sequences but {len(lens)} prompt lengths.")
    for i, (seq, p) in enumerate(zip(sequences, lens)):
        if len(seq) == 0:
            raise ValueError(f"sequence {i} is empty; nothing to score.")
        if not 0 <= p <= len(seq):
            raise ValueError(f"sequence {i}: prompt length {p} outside [0, {len(seq)}].")
        if max_len and len(seq) > max_len:
            raise ValueError(f"sequence {i} has {len(seq)} tokens, more than the model's context of {max_len}.")
    return lens
