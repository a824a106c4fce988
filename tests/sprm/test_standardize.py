"""Feature standardization for fresh heads and its exact fold into the saved head."""

from __future__ import annotations

import pytest
import torch

from metastone.sprm import SPRMHead
from metastone.sprm.standardize import FeatureStandardizer, fold_standardization


def common_mode_features(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """Features like a backbone's: a large shared component plus a small spread."""
    g = torch.Generator().manual_seed(seed)
    return 600.0 * torch.ones(d) / d**0.5 + 40.0 * torch.randn(d, generator=g) + 5.0 * torch.randn(n, d, generator=g)


def test_folded_head_scores_as_the_head_on_standardized_features():
    torch.manual_seed(0)
    d = 32
    head = SPRMHead(d, dropout=0.5).eval()
    x = common_mode_features(200, d)
    mean, std = x.mean(0), x.std(0)
    folded = fold_standardization(head, mean, std)
    assert isinstance(folded, SPRMHead) and set(folded.state_dict()) == {"0.weight", "0.bias", "3.weight", "3.bias"}
    torch.testing.assert_close(folded(x), head((x - mean) / std), rtol=0, atol=1e-5)
    # the original is unchanged and the fold keeps the training flag
    assert not head.training and not folded.training
    assert not torch.equal(folded[0].weight, head[0].weight)


def test_estimate_is_frozen_after_the_collect_steps_and_identity_before_any_feature():
    d = 8
    std = FeatureStandardizer(d, collect_steps=1)
    x = common_mode_features(50, d)
    assert torch.equal(std.apply(x), x)  # nothing observed yet
    std.observe(x[:25])
    std.observe(x[25:])
    torch.testing.assert_close(std.mean, x.mean(0))
    torch.testing.assert_close(std.std, x.std(0), rtol=1e-5, atol=1e-5)
    z = std.apply(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(d), atol=1e-4, rtol=0)
    std.end_step()
    assert std.frozen
    frozen_mean = std.mean.clone()
    std.observe(x + 100.0)
    assert torch.equal(std.mean, frozen_mean)


def test_fresh_head_logits_start_near_zero_on_standardized_features():
    """The reason for the option: raw common-mode features give a fresh head a large constant logit."""
    torch.manual_seed(0)
    d = 64
    head = SPRMHead(d).eval()
    x = common_mode_features(300, d)
    std = FeatureStandardizer(d)
    std.observe(x)
    raw, standardized = head(x), head(std.apply(x))
    assert raw.abs().mean() > 5 * standardized.abs().mean()
    assert standardized.abs().mean() < 1.0


def test_near_constant_coordinates_are_floored_and_state_round_trips():
    d = 4
    x = torch.randn(100, d)
    x[:, 0] = 3.0  # constant coordinate
    std = FeatureStandardizer(d)
    std.observe(x)
    assert float(std.std[0]) > 0 and torch.isfinite(std.apply(x)).all()
    other = FeatureStandardizer(d)
    other.load_state_dict(std.state_dict())
    assert torch.equal(other.mean, std.mean) and torch.equal(other.std, std.std) and other.count == std.count
    with pytest.raises(ValueError, match="d=4"):
        FeatureStandardizer(5).load_state_dict(std.state_dict())
    with pytest.raises(ValueError, match="collect_steps"):
        FeatureStandardizer(d, collect_steps=0)
