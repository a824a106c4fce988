"""Top-p and repetition penalty for CPU engines, computed without full passes over the vocabulary.

vLLM 0.32 on CPU treats both as whole-vocabulary tensor work at every decoding step: top-p sorts
every row of the logits (``apply_top_k_top_p_pytorch``; ~0.8 s per step for 128 drafts of a
152k-token vocabulary on two cores, more than the model's forward pass), and the repetition penalty
builds [rows, vocab] int64 token counts for the prompt and the output and several [rows, vocab] masks
(``apply_penalties``; ~0.14 s per step for 32 drafts). Our processors (``vllm.models.NucleusOnCPU``,
``vllm.models.RepetitionOnCPU``) give the same results for a fraction of that (docs/serving.md).

**Top-p.** The nucleus only needs the threshold probability, which a radix select finds in a few
linear passes:

1. ``probs = softmax(logits)``; a non-negative float32 orders like its bit pattern read as an integer;
2. histogram the probability mass by the top 16 bits of each probability (one ``scatter_add_``), and
   find the bucket where the mass counted from the top first reaches ``p``;
3. sort only the tokens in that bucket (per row, by probability, descending) and keep those whose
   mass strictly above them is still below ``p``; every token in a higher bucket is kept.

The rule is vLLM's: a token is kept iff the probability mass of the tokens ranked above it is < p
(vLLM masks a token when the ascending cumulative sum up to and including it is <= 1 - p), so the
most likely token is always kept. Two things can differ, both also unspecified in vLLM: which of
several *exactly equal* probabilities at the threshold are kept (vLLM's sort breaks such ties
arbitrarily), and a token whose mass above lies within float32 rounding (~1e-6) of ``p``
(the sums are taken in a different order). ``tests/serve/test_cpu_sampling.py`` checks both against
vLLM's function.

**Repetition penalty.** Only the tokens that occur in the prompt or the output change; we gather
those logits, apply vLLM's rule to them (a positive logit times ``1 / penalty``, any other times
``penalty``, the same float32 operations, so the same bits) and scatter them back.
"""

from __future__ import annotations

import torch

_HI_SHIFT = 15  # probabilities are <= 1.0 (bits <= 0x3F800000), so the top bits index < 2**16 buckets
_BUCKETS = 1 << 16
_ROWS_PER_PASS = 8  # 8 rows x 152k tokens x 4 bytes ~ 5 MB per pass: 70 ms vs 200 ms for 128 rows at once (2 cores)


def top_p_filter_(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Set to -inf, in place, every logit outside the row's nucleus; returns ``logits``.

    ``logits``: [rows, vocab] (any float dtype; the selection is computed in float32), already divided
    by the temperature; ``top_p``: [rows] in (0, 1]. Rows with ``top_p >= 1`` are left as they are.
    """
    if logits.dim() != 2 or top_p.shape != logits.shape[:1]:
        raise ValueError(f"top_p_filter_ expects logits [rows, vocab] and top_p [rows]; got {tuple(logits.shape)} "
                         f"and {tuple(top_p.shape)}.")
    rows = torch.nonzero(top_p < 1.0).flatten()
    for chunk in rows.split(_ROWS_PER_PASS):  # a few rows at a time: their passes stay in the CPU's caches (~3x faster)
        sub = logits.index_select(0, chunk)
        drop = _outside_nucleus(sub.float(), top_p.index_select(0, chunk).to(torch.float32))
        logits.index_copy_(0, chunk, sub.masked_fill_(drop, float("-inf")))
    return logits


def _outside_nucleus(logits: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Boolean [rows, vocab]: True for the tokens outside each row's nucleus."""
    n_rows = logits.shape[0]
    probs = logits.softmax(dim=-1)
    bits = probs.view(torch.int32)
    hi = bits.long().bitwise_right_shift_(_HI_SHIFT)
    hist = torch.zeros(n_rows, _BUCKETS, dtype=torch.float32).scatter_add_(1, hi, probs)
    # mass of the buckets strictly above b, for every b: total - inclusive prefix sum
    above = hist.sum(dim=1, keepdim=True) - hist.cumsum(dim=1)
    # the boundary bucket: the highest b whose own mass plus the mass above it reaches p
    # (above + hist is non-increasing in b, so counting the buckets that reach p finds it)
    boundary = ((above + hist) >= p[:, None]).sum(dim=1) - 1
    boundary = boundary.clamp(min=0)  # p above the row's float total: the whole row stays (vLLM's too)
    mass_above_boundary = above.gather(1, boundary[:, None]).squeeze(1).double()
    drop = hi <= boundary[:, None]  # every token of a higher bucket is kept; the boundary bucket's are decided below

    # Tokens inside the boundary bucket, in descending probability within each row.
    r, c = torch.nonzero(hi == boundary[:, None], as_tuple=True)
    low = (bits[r, c] & ((1 << _HI_SHIFT) - 1)).long()
    order = torch.argsort(r * (1 << _HI_SHIFT) + ((1 << _HI_SHIFT) - 1 - low), stable=True)
    r, c = r[order], c[order]
    vals = probs[r, c].double()
    csum = vals.cumsum(0)
    # exclusive cumulative mass within the row's segment: subtract the sum before the segment starts
    starts = torch.ones_like(r, dtype=torch.bool)
    starts[1:] = r[1:] != r[:-1]
    seg_base = torch.where(starts, csum - vals, torch.zeros_like(csum))
    seg_base = torch.cummax(seg_base, dim=0).values  # carry each segment's base forward (csum is increasing)
    mass_before = mass_above_boundary[r] + (csum - vals - seg_base)
    inside = mass_before < p.double()[r]
    drop[r[inside], c[inside]] = False
    return drop


def repetition_penalty_(logits: torch.Tensor, seen: list[torch.Tensor | None], penalty: torch.Tensor) -> torch.Tensor:
    """vLLM's repetition penalty, in place, on the tokens each row has seen; returns ``logits``.

    ``seen[i]``: the token ids row i has seen (prompt and output, repeats allowed; None = nothing to do);
    ``penalty``: [rows] float32, 1.0 for none.
    """
    vocab = logits.shape[1]
    keys = [row * vocab + ids[(ids >= 0) & (ids < vocab)] for row, ids in enumerate(seen)
            if ids is not None and float(penalty[row]) != 1.0]
    if not keys:
        return logits
    flat = torch.unique(torch.cat(keys))  # a token seen twice is penalised once
    rows, cols = flat // vocab, flat % vocab
    vals = logits[rows, cols]
    pen = penalty.to(torch.float32)[rows]
    vals *= torch.where(vals > 0, 1.0 / pen, pen).to(vals.dtype)
    logits[rows, cols] = vals
    return logits


# How the settings reach the CPU engines' processors: vLLM's own ``top_p`` and ``repetition_penalty`` are
# left neutral (so vLLM skips its whole-vocabulary work) and the values travel in the request's extra
# arguments (``SamplingParams.extra_args``, or ``vllm_xargs`` in an OpenAI request body).
TOP_P_ARG = "metastone_top_p"
REPETITION_ARG = "metastone_repetition_penalty"
PROCESSORS = ("metastone.serve.vllm.models:NucleusOnCPU", "metastone.serve.vllm.models:RepetitionOnCPU")
# vLLM's field -> (our extra argument, the valid values in words, their test); 1.0 is neutral for both
SETTINGS = {"top_p": (TOP_P_ARG, "in (0, 1]", lambda v: 0 < v <= 1),
            "repetition_penalty": (REPETITION_ARG, "> 0", lambda v: v > 0)}


def valid_setting(field: str, value) -> bool:
    """Whether ``value`` is a number (not a bool) that vLLM's ``field`` accepts."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and SETTINGS[field][2](value)


def split_sampling(top_p: float, repetition_penalty: float) -> tuple[dict, dict | None]:
    """``(vLLM sampling fields, extra arguments)`` for an engine that runs our ``PROCESSORS``."""
    extra = {}
    for field, value in (("top_p", top_p), ("repetition_penalty", repetition_penalty)):
        arg, words, _ = SETTINGS[field]
        if not valid_setting(field, value):
            raise ValueError(f"{field} must be {words}, got {value}.")
        if value != 1:
            extra[arg] = float(value)
    return {field: 1.0 for field in SETTINGS}, extra or None
