"""What engines are asked and what they answer: one request per draft (or search node), its sampling, its result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from metastone.sampling import Sampling

if TYPE_CHECKING:
    from metastone.serve.scoring import TraceScore

__all__ = ["DraftRequest", "GenResult", "Sampling", "ServiceDown"]


class ServiceDown(RuntimeError):
    """A service (or an in-process engine) is gone for longer than the run waits: the run stops, its records kept."""


@dataclass
class DraftRequest:
    key: str
    question_id: str
    draft: int
    seed: int
    prompt: str
    prompt_ids: list[int]
    answer: object = None
    attempts: int = field(default=0, compare=False)


@dataclass
class GenResult:
    text: str
    token_ids: list[int]
    finish_reason: str
    stop_reason: int | str | None = None  # vLLM's: the stop token id or stop string that fired; None for EOS/length
    # the SPRM score, from an engine that scores while it generates (``LocalGenerator(score_while_generating=True)``,
    # ``serve-policy --score_while_generating``); None: the caller scores the draft with its scorer
    score: "TraceScore | None" = None
