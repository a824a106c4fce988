"""Scoring while generating, the caller's side (serve/step_scores.py, engines/local.py): the record format,
what counts as complete, and a draft's score from the records (the vLLM engine side: tests/serve/test_vllm.py)."""

import math
import os

import pytest

import numpy as np

from metastone.serve.step_scores import RECORD, encode_records, read_token_probs, valid_key


def test_records_read_back_by_index_last_write_wins(tmp_path):
    path = tmp_path / ("a" * 32)
    path.write_bytes(encode_records([1, 0, 2], [0.5, 0.25, 0.75]) + encode_records([1], [0.125]))
    probs = read_token_probs(path, 4)
    assert probs[:3] == [0.25, 0.125, 0.75] and math.isnan(probs[3])  # the last token's state is never needed


def test_incomplete_or_missing_records_are_none(tmp_path):
    path = tmp_path / "k"
    path.write_bytes(encode_records([0, 2], [0.5, 0.5]))
    assert read_token_probs(path, 4) is None  # index 1 missing
    assert read_token_probs(tmp_path / "absent", 3) is None
    assert read_token_probs(path, 1) is not None  # a one-token draft has nothing to score
    path.write_bytes(b"\0" * 5)  # a torn record
    assert read_token_probs(path, 1) is None


def test_keys_are_file_names_that_stay_in_the_directory():
    assert valid_key("0123456789abcdef" * 2)
    for bad in ("../" + "a" * 29, "A" * 32, "a" * 31, 12, None):
        assert not valid_key(bad)


def test_a_drafts_score_from_its_records(tiny_model_dir, qwq_tokenizer):
    """``collect`` picks the step rows of prompt + draft with metastone.sprm and aggregates them, as the
    scorers do; the records file is removed once read; an incomplete record gives None (the scorer runs)."""
    import torch

    from metastone.serve.step_scores import StepScoreCollector
    from metastone.sprm import aggregate_list

    if torch.cuda.is_available():
        pytest.skip("scoring while generating is CPU-only")
    steps = StepScoreCollector(str(tiny_model_dir), None, vllm=True)
    try:
        sep = qwq_tokenizer.encode(".\n\n", add_special_tokens=False)
        assert len(sep) == 1
        think = qwq_tokenizer.convert_tokens_to_ids("<think>")
        prompt = [100, 200, think]
        draft = [11, 12, sep[0], 13, 14, 15, sep[0], 16]
        key = steps.new_key()
        probs = [0.1 * (i + 1) for i in range(len(draft) - 1)]
        with open(f"{steps.dir}/{key}", "wb") as f:
            f.write(encode_records(list(range(len(probs))), probs))
        score = steps.collect(key, prompt, draft)
        # steps end before each separator: response indices 1 and 5, i.e. positions 4 and 8 of prompt + draft
        assert score.positions == [4, 8]
        assert score.step_scores == pytest.approx([probs[1], probs[5]])
        assert score.value == pytest.approx(aggregate_list([probs[1], probs[5]], steps.config.aggregation))
        assert not os.listdir(steps.dir)
        with open(f"{steps.dir}/{key}", "wb") as f:
            f.write(encode_records([0, 1], probs[:2]))
        assert steps.collect(key, prompt, draft) is None
    finally:
        steps.cleanup()


def test_processor_writes_the_newest_tokens_probability_per_row(tmp_path, monkeypatch):
    """``StepScoresOut`` (vLLM side): each keyed row's probability goes to its file under its response index
    (``len(output) - 1``; none at the prompt's last token); unkeyed rows and the logits are left alone."""
    pytest.importorskip("vllm")
    import torch
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate

    from metastone.serve.vllm import models as vllm_models
    from metastone.serve.step_scores import STEP_SCORES_ARG, STEP_SCORES_DIR_ENV
    from metastone.serve.vllm.models import StepScoresOut

    monkeypatch.setenv(STEP_SCORES_DIR_ENV, str(tmp_path))
    ka, kb = "a" * 32, "b" * 32
    proc = StepScoresOut(None, torch.device("cpu"), False)
    assert not proc.is_argmax_invariant()
    out_a, out_b = [], [5, 6]
    proc.update_state(BatchUpdate(batch_size=3, removed=[], moved=[], added=[
        (0, SamplingParams(extra_args={STEP_SCORES_ARG: ka}), [1, 2], out_a),
        (1, SamplingParams(), [3], []),
        (2, SamplingParams(extra_args={STEP_SCORES_ARG: kb}), [4], out_b)]))
    logits = torch.randn(3, 8)
    monkeypatch.setattr(vllm_models, "_latest_step_probs", torch.tensor([0.5, 0.9, 0.25]))
    assert torch.equal(proc.apply(logits.clone()), logits)
    out_a.append(7)
    out_b.append(8)
    monkeypatch.setattr(vllm_models, "_latest_step_probs", torch.tensor([0.125, 0.9, 0.75]))
    proc.apply(logits.clone())
    assert read_token_probs(tmp_path / ka, 2)[:1] == [0.125]  # index -1 (prompt) was skipped
    records = np.frombuffer((tmp_path / kb).read_bytes(), dtype=RECORD)
    assert records["index"].tolist() == [1, 2] and records["prob"].tolist() == [0.25, 0.75]
    assert sorted(os.listdir(tmp_path)) == [ka, kb]

    with pytest.raises(ValueError, match="32 lowercase hex digits"):
        StepScoresOut.validate_params(SamplingParams(extra_args={STEP_SCORES_ARG: "../x"}))
    StepScoresOut.validate_params(SamplingParams(extra_args={STEP_SCORES_ARG: ka}))
    with pytest.raises(ValueError, match="send n=1 requests"):
        StepScoresOut.validate_params(SamplingParams(n=4, extra_args={STEP_SCORES_ARG: ka}))
    monkeypatch.delenv(STEP_SCORES_DIR_ENV)
    with pytest.raises(ValueError, match="not started to score while generating"):
        StepScoresOut.validate_params(SamplingParams(extra_args={STEP_SCORES_ARG: ka}))
