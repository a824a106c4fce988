"""From per-token SPRM probabilities to step scores and a trajectory score: shared by every backend.

A backend that returns one probability per token (the vLLM pooling scorer, its HTTP ``/pooling``
endpoint) hands them here together with the token ids; step rows come from
``metastone.sprm.step_mask`` and the trajectory score from ``metastone.sprm.aggregate``, so every
backend scores exactly the positions the trainer trained.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
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
    token_ids: Sequence[int],
    prompt_len: int,
    token_probs: Sequence[float],
    spec: StepSpec,
    aggregation: str,
    *,
    cached: int = 0,
    memo: "StepScoreMemo | None" = None,
) -> TraceScore | None:
    """Pick the step rows of one trace from its per-token probabilities and aggregate them.

    ``token_probs`` covers rows ``cached..len(token_ids)-1`` (a backend that served the first ``cached``
    tokens from a prefix cache has no output for them). Step rows before ``cached`` are looked up in
    ``memo``; if one is missing the result is None (the caller runs the trace again in full). Every
    step row read from ``token_probs`` is stored in ``memo``.
    """
    if len(token_probs) != len(token_ids) - cached:
        raise ValueError(f"got {len(token_probs)} per-token scores for {len(token_ids)} tokens with {cached} served "
                         "from a cache; expected one score per token not served from it.")
    positions = step_positions(token_ids, prompt_len, spec)
    keys = memo.keys(token_ids, positions) if memo is not None else [None] * len(positions)
    scores = []
    for p, key in zip(positions, keys):
        if p >= cached:
            scores.append(float(token_probs[p - cached]))
            if memo is not None:
                memo.put(key, scores[-1])
        elif memo is not None and (value := memo.get(key)) is not None:
            scores.append(value)
        else:
            return None
    return TraceScore(aggregate_list(scores, aggregation), scores, positions, computed_tokens=len(token_probs))


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


# about 150 bytes an entry: ~30 MB at the default bound
MEMO_ENTRIES = 200_000


class StepScoreMemo:
    """Step probabilities already computed, keyed by the token prefix that ends at the step row.

    A causal model's output at row ``p`` depends only on tokens ``0..p``, so a probability computed once
    holds for every later sequence with the same ``p + 1`` first tokens. A backend that serves a
    sequence's prefix from a KV cache gets no output for the cached rows; it takes their step
    probabilities from here (a search node: every step of its parent path) and recomputes only what is
    missing. Keys are 16-byte BLAKE2b digests of the int64 token prefix, one hashing pass per sequence;
    the memo keeps at most ``max_entries`` (least recently used dropped first).
    """

    def __init__(self, max_entries: int = MEMO_ENTRIES):
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0 (0 turns the memo off), got {max_entries}.")
        self.max_entries = max_entries
        self._items: OrderedDict[bytes, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    @staticmethod
    def keys(token_ids: Sequence[int], positions: Sequence[int]) -> list[bytes]:
        """The key of each row in ``positions`` (ascending): the digest of ``token_ids[: p + 1]``."""
        buf = memoryview(array("q", token_ids).tobytes())
        h, done, out = hashlib.blake2b(digest_size=16), 0, []
        for p in positions:
            h.update(buf[done * 8:(p + 1) * 8])
            done = p + 1
            out.append(h.copy().digest())
        return out

    def get(self, key: bytes) -> float | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: bytes, value: float) -> None:
        if self.max_entries == 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()
