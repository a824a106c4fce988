"""``Sampling``: the sampling options of one draft or search step, declared once.

Every engine (``metastone.engines``: services, in-process vLLM, ``HFPolicy``) takes a ``Sampling``;
the configs that sample (``harness.runner.RunConfig``, ``search.SearchConfig``, ``fit.FitConfig``)
keep their options as flat fields (their saved, resume-compared form and their flags) with the
defaults below, and ``Sampling.of(config)`` is the one conversion. A config whose default differs
says so where it declares it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields, replace
from typing import Sequence


@dataclass(frozen=True)
class Sampling:
    # Defaults: MetaStone-S1's evaluation setting (the paper, arXiv 2507.01951, as docs/harness.md
    # records it): temperature 0.6, top_p 0.95, repetition penalty 1.05, up to 32768 new tokens (what
    # the original release's client sends).
    max_tokens: int = field(default=32768, metadata={"help": "most new tokens of one draft"})
    temperature: float = field(default=0.6, metadata={"help": "sampling temperature (0 = greedy)"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling: keep the smallest token set of this mass"})
    repetition_penalty: float = field(default=1.05, metadata={"help": "HF/vLLM repetition penalty (1 = off)"})
    stop: tuple[str, ...] = ()
    # Token ids that end a request (kept in token_ids, cut from the text): search sends the SPRM step
    # separators here to sample exactly one step per request. Empty = not sent (Best-of-N).
    stop_token_ids: tuple[int, ...] = ()
    # The run seed: each request's own seed derives from it (``request_seed`` below) and travels with the
    # request (``DraftRequest.seed``); engines sample with that one.
    seed: int = field(default=0, metadata={
        "help": "run seed; each draft's seed derives from it, the question and the draft index"})

    def __post_init__(self):
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))

    def check(self) -> "Sampling":
        """Raise ``ValueError`` naming the first option out of range and the fix (engines call it before
        sampling; every config that samples calls it from its own validation: the one range check)."""
        problems = (
            ("max_tokens", self.max_tokens <= 0, "must be positive", "Give the most new tokens per draft, e.g. 4096."),
            ("temperature", self.temperature < 0, "must be >= 0", "Use 0 for greedy or the paper's 0.6."),
            ("top_p", not 0 < self.top_p <= 1, "must be in (0, 1]", "Use 1.0 to turn nucleus sampling off."),
            ("repetition_penalty", self.repetition_penalty <= 0, "must be positive", "Use 1.0 to turn it off."),
        )
        for name, bad, rule, fix in problems:
            if bad:
                raise ValueError(f"{name} {rule}, got {getattr(self, name)!r}. {fix}")
        return self

    @classmethod
    def of(cls, config, **overrides) -> "Sampling":
        """The sampling options of a config (its fields of the same names), with ``overrides`` on top."""
        given = {f.name: getattr(config, f.name) for f in fields(cls) if hasattr(config, f.name)}
        return replace(cls(**given), **overrides)


DEFAULT_SAMPLING = Sampling()
# The small-model settings: short drafts at temperature 0.7, no repetition penalty. ``metastone train-sprm``
# samples its training drafts this way (FitConfig's defaults) and ``metastone demo`` / ``demo-train``'s
# evaluation sample the demo's 64-token answers so (the shipped demo head was fitted on such drafts).
FIT_SAMPLING = Sampling(max_tokens=256, temperature=0.7, repetition_penalty=1.0)
DEMO_SAMPLING = replace(FIT_SAMPLING, max_tokens=64)


def sampling_kwargs(sampling: Sampling) -> dict:
    """The four flat sampling options of a config (``max_tokens``, ``temperature``, ``top_p``,
    ``repetition_penalty``) as keyword arguments."""
    return {k: getattr(sampling, k) for k in ("max_tokens", "temperature", "top_p", "repetition_penalty")}


def stable_hash(text: str) -> int:
    """A 32-bit hash of ``text`` that is the same on every run, machine and Python (no hash salt): the one source
    of derived seeds (requests here, held-out splits in ``metastone.fit``, vote subsets in ``metastone.metrics``)."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def request_seed(run_seed: int, question_id: str, path: Sequence[int]) -> int:
    """The 31-bit seed of one request, stable across runs, machines and shards: a Best-of-N draft ``d`` is
    the path ``(d,)``, a search node the path of child indices from the root (so a one-step node has the
    seed of the draft with its index: common random numbers between Best-of-N and search)."""
    tag = ".".join(str(i) for i in path)
    return stable_hash(f"{run_seed}:{question_id}:{tag}") & 0x7FFFFFFF
