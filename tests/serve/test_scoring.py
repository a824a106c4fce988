"""Step rows from per-token probabilities when a prefix was served from a cache (no engine needed)."""

import pytest

from metastone.serve.scoring import StepScoreMemo, trace_score_from_token_probs
from metastone.sprm import StepSpec

SEP = 7
SPEC = StepSpec(separator_ids=(SEP,))


def _probs(seq):
    # a stand-in causal "model": the probability at row p depends only on tokens 0..p
    return [((sum(seq[: p + 1]) * 2654435761) % 1000) / 1000 for p in range(len(seq))]


def test_memo_key_is_the_prefix_ending_at_the_row():
    a, b = [1, 2, SEP, 3, SEP, 4], [1, 2, SEP, 3, SEP, 9, SEP]
    ka, kb = StepScoreMemo.keys(a, [2, 4]), StepScoreMemo.keys(b, [2, 4, 6])
    assert ka == kb[:2] and kb[2] not in ka
    assert StepScoreMemo.keys([1, 2, SEP], [2]) != StepScoreMemo.keys([2, 1, SEP], [2])


def test_cached_rows_come_from_the_memo_and_match_a_full_run():
    memo = StepScoreMemo()
    parent = [5, 6, SEP, 8, 8, SEP, 1]
    child = parent + [2, 3, SEP, 4]
    full_parent = trace_score_from_token_probs(parent, 0, _probs(parent), SPEC, "min")
    assert trace_score_from_token_probs(parent, 0, _probs(parent), SPEC, "min", memo=memo) == full_parent
    assert len(memo) == 2
    # the child's first 6 tokens served from the cache: only rows 6.. are given
    got = trace_score_from_token_probs(child, 0, _probs(child)[6:], SPEC, "min", cached=6, memo=memo)
    ref = trace_score_from_token_probs(child, 0, _probs(child), SPEC, "min")
    assert got == ref and got.positions == [1, 4, 8] and got.computed_tokens == len(child) - 6
    assert len(memo) == 3


def test_a_cached_step_row_missing_from_the_memo_asks_for_a_full_run():
    seq = [5, 6, SEP, 8, SEP, 1]
    assert trace_score_from_token_probs(seq, 0, _probs(seq)[4:], SPEC, "min", cached=4, memo=StepScoreMemo()) is None
    assert trace_score_from_token_probs(seq, 0, _probs(seq)[4:], SPEC, "min", cached=4) is None
    # rows after the cache cover every step: no memo needed
    got = trace_score_from_token_probs(seq, 0, _probs(seq)[1:], SPEC, "min", cached=1)
    assert got.positions == [1, 3] and got.step_scores == pytest.approx([_probs(seq)[1], _probs(seq)[3]])


def test_row_count_must_match_the_uncached_tokens():
    with pytest.raises(ValueError, match="3 served from a cache"):
        trace_score_from_token_probs([1, 2, SEP, 4], 0, [0.5, 0.5], SPEC, "min", cached=3)


def test_memo_is_bounded_least_recently_used_first():
    memo = StepScoreMemo(max_entries=2)
    memo.put(b"a", 0.1)
    memo.put(b"b", 0.2)
    assert memo.get(b"a") == 0.1  # a is now the most recent
    memo.put(b"c", 0.3)
    assert memo.get(b"b") is None and memo.get(b"a") == 0.1 and len(memo) == 2
    off = StepScoreMemo(max_entries=0)
    off.put(b"a", 0.1)
    assert len(off) == 0
    with pytest.raises(ValueError, match="max_entries"):
        StepScoreMemo(max_entries=-1)
