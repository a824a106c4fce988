"""``Sampling``: the sampling options of one draft or search step, declared once.

Every engine (``metastone.engines``: services, in-process vLLM, ``HFPolicy``) takes a ``Sampling``;
the configs that sample (``harness.runner.RunConfig``, ``search.SearchConfig``, ``fit.FitConfig``)
keep their options as flat fields (their saved, resume-compared form and their flags) with the
defaults below, and ``Sampling.of(config)`` is the one conversion. A config whose default differs
says so where it declares it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields, replace
from typing import Sequence


@dataclass(frozen=True)
class Sampling:
    # Defaults: MetaStone-S1's evaluation setting (the paper, arXiv 2507.01951, as docs/harness.md
    # records it): temperature 0.6, top_p 0.95, repetition penalty 1.05, up to 32768 new tokens (what
    # the original release's client sends).
    max_tokens: int = 32768
    temperature: float = 0.6
    top_p: float = 0.95
    repetition_penalty: float = 1.05
    stop: tuple[str, ...] = ()
    # Token ids that end a request (kept in token_ids, cut from the text): search sends the SPRM step
    # separators here to sample exactly one step per request. Empty = not sent (Best-of-N).
    stop_token_ids: tuple[int, ...] = ()
    # The run seed: each request's own seed derives from it (``request_seed`` below) and travels with the
    # request (``DraftRequest.seed``); engines sample with that one.
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))

    def check(self) -> "Sampling":
        """Raise ``ValueError`` naming the first option out of range (engines call it before sampling)."""
        if self.max_tokens <= 0:
            raise ValueError(f"max_tokens must be positive, got {self.max_tokens}.")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be positive (1 = off), got {self.repetition_penalty}.")
        return self

    @classmethod
    def of(cls, config, **overrides) -> "Sampling":
        """The sampling options of a config (its fields of the same names), with ``overrides`` on top."""
        given = {f.name: getattr(config, f.name) for f in fields(cls) if hasattr(config, f.name)}
        return replace(cls(**given), **overrides)


DEFAULT_SAMPLING = Sampling()


def request_seed(run_seed: int, question_id: str, path: Sequence[int]) -> int:
    """The 31-bit seed of one request, stable across runs, machines and shards: a Best-of-N draft ``d`` is
    the path ``(d,)``, a search node the path of child indices from the root (so a one-step node has the
    seed of the draft with its index: common random numbers between Best-of-N and search)."""
    tag = ".".join(str(i) for i in path)
    return int(hashlib.sha256(f"{run_seed}:{question_id}:{tag}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF
