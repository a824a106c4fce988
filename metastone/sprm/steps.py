"""Step positions: which token positions carry a step score. One definition for training and inference.

A *step* ends at a separator token (default: the single Qwen token for ``".\\n\\n"``). The step's
score is read from the hidden state of the token just BEFORE the separator, so a step's score is
known at the moment the separator is sampled (MetaStone-S1, Sec. 3; the original trains with a
``roll(-1)`` of the separator mask and serves with a left shift: both are this rule).

Position ``p`` is scored iff, with ``s = p + 1``:

1. ``s`` is a separator token and a real (non-padding) token;
2. only the first token of a run counts: the token at ``p`` is not itself a separator;
3. a separator right after the think-start token is skipped: the token at ``p`` is not ``<think>``;
4. ``s`` lies inside the think span: strictly after the FIRST ``<think>`` of the sequence
   (prompt included, since chat templates often end the prompt with ``<think>``) and strictly
   before the LAST ``</think>``;
5. both ``p`` and ``s`` are response tokens: prompt tokens are never scored.

Edge cases (documented and tested):

- no ``</think>`` (a truncated or still-running trace): the span runs to the end of the sequence,
  so partial traces inside a search get step scores (same as the original training mask);
- no ``<think>`` but a ``</think>``: the span starts at the beginning of the sequence;
- no think tokens at all, or a model without them (``think_start_id=None``): the whole response;
- padding, left or right: ``attention_mask`` marks real tokens; padding is never a separator,
  never a think token and never scored.

Deliberate difference from the original training mask, in one degenerate case only: a separator
that is the very first response token (an empty first step) would have been read at the last
prompt token; rule 5 drops it.

Separator rules. A separator entry may name a rule instead of a token: ``ZH_SEPARATOR_RULE``
(``"@zh"``, what ``--lang zh`` and ``SPRMConfig.for_lang(d, "zh")`` use) expands to the original
score server's zh set (MetaStone-S1 ``test/score_model_queue.py``, ``get_all_key_ids``): every
vocabulary token whose decoded text has at most 3 characters and, for ``"\n"`` or ``"。"``, contains
it and has at most one character left once every copy of it is removed (``"\n"``, ``"\n\n"``,
``".\n\n"``, ``"。\n\n"``, ``"。"``, ``"。”"``, ...; 116 tokens of the Qwen vocabulary). The set is derived
from the tokenizer once and cached per tokenizer (``zh_separator_ids``). The released heads were
trained on ``".\n\n"`` only, so zh scores read the head at positions it never saw in training (see
docs/differences.md).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Sequence

import torch

# Separator strings of the released models and of the two language modes.
DEFAULT_SEPARATORS: tuple[str, ...] = (".\n\n",)
ZH_SEPARATOR_RULE = "@zh"
CHINESE_SEPARATORS: tuple[str, ...] = (ZH_SEPARATOR_RULE,)
DEFAULT_THINK_TOKENS: tuple[str, str] = ("<think>", "</think>")
# The zh rule of the original score server: these characters, tokens of at most 3 characters.
ZH_TARGET_CHARS: tuple[str, ...] = ("\n", "。")
ZH_MAX_TOKEN_CHARS = 3

_zh_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class StepSpec:
    """Token ids that define steps: separator ids and the optional think-span delimiters."""

    separator_ids: tuple[int, ...]
    think_start_id: int | None = None
    think_end_id: int | None = None

    def __post_init__(self):
        if not self.separator_ids:
            raise ValueError("StepSpec: separator_ids is empty; give at least one separator token id.")
        if any((not isinstance(i, int)) or i < 0 for i in self.separator_ids):
            raise ValueError(f"StepSpec: separator_ids must be non-negative ints, got {self.separator_ids!r}.")
        for name in ("think_start_id", "think_end_id"):
            value = getattr(self, name)
            if value is not None and value in self.separator_ids:
                raise ValueError(f"StepSpec: {name}={value} is also a separator id; they must differ.")


def single_token_id(tokenizer, text: str, what: str) -> int:
    """The id of ``text`` if the tokenizer encodes it as exactly one token, else a ValueError."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(
            f"{what} {text!r} must be a single token of this tokenizer, but it encodes to {ids}. "
            "Choose separators/think tokens that are single tokens in the vocabulary "
            "(e.g. '.\\n\\n' for Qwen2-family tokenizers), the separator rule '@zh', or add them as tokens."
        )
    return ids[0]


def is_zh_separator_text(text: str) -> bool:
    """The original zh rule on one decoded token: at most 3 characters, and for ``"\\n"`` or ``"。"``:
    contains it, with at most one character left once every copy of it is removed."""
    if len(text) > ZH_MAX_TOKEN_CHARS:
        return False
    return any(c in text and len(text.replace(c, "")) <= 1 for c in ZH_TARGET_CHARS)


def zh_separator_ids(tokenizer) -> tuple[int, ...]:
    """Sorted ids of every vocabulary token that ``is_zh_separator_text`` accepts (cached per tokenizer).

    Each token is decoded alone with the tokenizer's default ``decode``, as the original did.
    """
    size = len(tokenizer)  # a tokenizer grown by add_tokens is scanned again
    try:
        cached_size, cached = _zh_cache[tokenizer]
        if cached_size == size:
            return cached
    except (KeyError, TypeError):
        pass
    ids = sorted(set(int(i) for i in tokenizer.get_vocab().values()))
    found = tuple(i for i in ids if is_zh_separator_text(tokenizer.decode([i])))
    if not found:
        raise ValueError(
            "the zh separator rule found no token of this tokenizer containing '\\n' or '。'; "
            "use explicit separators instead."
        )
    try:
        _zh_cache[tokenizer] = (size, found)
    except TypeError:  # a tokenizer that cannot be weakly referenced is just not cached
        pass
    return found


def separator_ids(tokenizer, separator: str) -> tuple[int, ...]:
    """Token ids of one separator entry: a rule name (``"@zh"``) or a single-token string."""
    if separator == ZH_SEPARATOR_RULE:
        return zh_separator_ids(tokenizer)
    return (single_token_id(tokenizer, separator, "separator"),)


def resolve_step_spec(
    tokenizer,
    separators: Sequence[str] = DEFAULT_SEPARATORS,
    think_tokens: Sequence[str] | None = DEFAULT_THINK_TOKENS,
) -> StepSpec:
    """Resolve separator strings and think tokens to ids with ``tokenizer``.

    Every separator must be a single token or a rule name (``"@zh"``, see module doc). Think tokens
    that the vocabulary does not hold as single tokens (models without a think span, e.g. SmolLM2)
    are dropped, which makes the whole response the span; pass ``think_tokens=None`` to drop them
    explicitly.
    """
    sep_ids = tuple(dict.fromkeys(i for s in separators for i in separator_ids(tokenizer, s)))
    start_id = end_id = None
    if think_tokens:
        if len(think_tokens) != 2:
            raise ValueError(f"think_tokens must be (start, end), got {think_tokens!r}.")
        start, end = think_tokens
        try:
            start_id = single_token_id(tokenizer, start, "think-start token")
            end_id = single_token_id(tokenizer, end, "think-end token")
        except ValueError:
            start_id = end_id = None
    return StepSpec(separator_ids=sep_ids, think_start_id=start_id, think_end_id=end_id)


def step_mask(
    input_ids: torch.Tensor,
    response_mask: torch.Tensor,
    spec: StepSpec,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boolean ``[B, T]`` mask of the positions whose hidden state is scored (see module doc).

    Args:
        input_ids: ``[B, T]`` token ids (prompt + response, any padding).
        response_mask: ``[B, T]`` true at response tokens.
        spec: the separator and think token ids.
        attention_mask: ``[B, T]`` true at real tokens; defaults to all true.
    """
    if input_ids.dim() != 2 or response_mask.shape != input_ids.shape:
        raise ValueError(
            f"step_mask: input_ids must be [B, T] and response_mask the same shape; got "
            f"{tuple(input_ids.shape)} and {tuple(response_mask.shape)}."
        )
    device = input_ids.device
    batch, length = input_ids.shape
    if length == 0:
        return torch.zeros_like(input_ids, dtype=torch.bool)
    valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    response = response_mask.bool() & valid
    seps = torch.tensor(spec.separator_ids, device=device, dtype=input_ids.dtype)
    is_sep = torch.isin(input_ids, seps) & valid

    positions = torch.arange(length, device=device).expand(batch, length)
    if spec.think_start_id is not None:
        is_start = (input_ids == spec.think_start_id) & valid
        first_start = torch.where(is_start.any(1), is_start.int().argmax(1), torch.full((batch,), -1, device=device))
    else:
        is_start = torch.zeros_like(is_sep)
        first_start = torch.full((batch,), -1, device=device)
    if spec.think_end_id is not None:
        is_end = (input_ids == spec.think_end_id) & valid
        last_end = length - 1 - is_end.flip(1).int().argmax(1)
        last_end = torch.where(is_end.any(1), last_end, torch.full((batch,), length, device=device))
    else:
        last_end = torch.full((batch,), length, device=device)
    in_span = (positions > first_start[:, None]) & (positions < last_end[:, None])

    # Separator at s counts if it is in the span, in the response, and the token before it is neither a
    # separator (first of a run) nor <think>.
    prev_is_sep = torch.zeros_like(is_sep)
    prev_is_sep[:, 1:] = is_sep[:, :-1]
    prev_is_start = torch.zeros_like(is_sep)
    prev_is_start[:, 1:] = is_start[:, :-1]
    counted = is_sep & in_span & response & ~prev_is_sep & ~prev_is_start

    # Read at p = s - 1, which must be a response token too.
    mask = torch.zeros_like(counted)
    mask[:, :-1] = counted[:, 1:]
    return mask & response


def step_positions(token_ids: Sequence[int], prompt_len: int, spec: StepSpec) -> list[int]:
    """Scored positions of one sequence ``token_ids`` whose first ``prompt_len`` tokens are the prompt."""
    if not 0 <= prompt_len <= len(token_ids):
        raise ValueError(f"step_positions: prompt_len={prompt_len} outside [0, {len(token_ids)}].")
    ids = torch.tensor([list(token_ids)], dtype=torch.long)
    response = torch.zeros_like(ids, dtype=torch.bool)
    response[:, prompt_len:] = True
    return step_mask(ids, response, spec)[0].nonzero().flatten().tolist()
