"""Shared-prompt feature extraction equals full-sequence extraction; AUROC; folding standardization."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from metastone.fit.features import question_features, read_shard, shard_path, write_shard
from metastone.fit.trainer import fold_standardization
from metastone.metrics.ranking import auroc
from metastone.sprm import SPRMHead
from metastone.sprm.features import extract_features
from metastone.sprm.steps import resolve_step_spec, step_positions


def test_shared_prompt_features_equal_full_forward(tiny_model_dir, qwq_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    spec = resolve_step_spec(qwq_tokenizer, (".",), None)
    prompt = qwq_tokenizer.encode("Q: What is 2 + 3?\nA:")
    texts = [" 2 + 3 = 5. The answer is 5.", " 2 + 3 = 6. Hmm. The answer is 6. more", " five", " 5."]
    responses = [qwq_tokenizer.encode(t) for t in texts]
    feats = question_features(model, prompt, responses, spec, batch=3)
    for resp, f in zip(responses, feats):
        pos = step_positions(prompt + resp, len(prompt), spec)
        with torch.no_grad():
            full = extract_features(model, torch.tensor([prompt + resp]))[0, pos]
        assert f.shape == (len(pos), model.config.hidden_size)
        torch.testing.assert_close(f, full, rtol=1e-4, atol=1e-4)
    assert feats[2].shape[0] == 0  # no separator: no step


def test_shard_roundtrip(tmp_path):
    feats = [torch.randn(3, 8), torch.zeros(0, 8), torch.randn(1, 8)]
    write_shard(shard_path(tmp_path, 0), ["a", "b", "c"], feats)
    back = read_shard(shard_path(tmp_path, 0))
    assert list(back) == ["a", "b", "c"]
    for k, f in zip("abc", feats):
        assert torch.equal(back[k], f)
    shard_path(tmp_path, 1).write_bytes(b"garbage")
    with pytest.raises(ValueError, match="delete it and rerun"):
        read_shard(shard_path(tmp_path, 1))


def test_auroc_matches_pair_counting():
    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(2, 12)
        scores = [rng.choice([0.1, 0.2, 0.5, 0.7, 0.9]) for _ in range(n)]
        labels = [rng.random() < 0.5 for _ in range(n)]
        pos = [s for s, y in zip(scores, labels) if y]
        neg = [s for s, y in zip(scores, labels) if not y]
        if not pos or not neg:
            assert auroc(scores, labels) is None
            continue
        pairs = [(1.0 if p > q else 0.5 if p == q else 0.0) for p, q in itertools.product(pos, neg)]
        assert auroc(scores, labels) == pytest.approx(sum(pairs) / len(pairs))


def test_fold_standardization_is_exact():
    torch.manual_seed(0)
    head = SPRMHead(16).eval()
    mean, std = torch.randn(16) * 5, torch.rand(16) * 10 + 0.1
    h = torch.randn(4, 7, 16) * std + mean
    folded = fold_standardization(head, mean, std).eval()
    torch.testing.assert_close(folded(h), head((h - mean) / std), rtol=1e-4, atol=1e-4)
