"""What engines are asked and what they answer: one request per draft (or search node), its sampling, its result."""

from __future__ import annotations

from dataclasses import dataclass, field


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


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 32768
    temperature: float = 0.6
    top_p: float = 0.95
    repetition_penalty: float = 1.05
    stop: tuple[str, ...] = ()
    # Token ids that end a request (kept in token_ids, cut from the text): search sends the SPRM step
    # separators here to sample exactly one step per request. Empty = not sent (Best-of-N).
    stop_token_ids: tuple[int, ...] = ()


@dataclass
class GenResult:
    text: str
    token_ids: list[int]
    finish_reason: str
    stop_reason: int | str | None = None  # vLLM's: the stop token id or stop string that fired; None for EOS/length
