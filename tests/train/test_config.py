"""``SPRMTrainConfig``: the actor_rollout_ref.sprm section; every error names its key."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.train


@pytest.mark.parametrize(
    "field, value",
    [
        ("backbone_grad_scale", 2.0), ("feature_layer", -1), ("separators", []), ("think_tokens", ["<think>"]),
        ("aggregation", "median"), ("dropout", 1.0), ("lr", 0.0), ("betas", [0.9]), ("lr_scheduler_type", "step"),
        ("hidden_size", 0), ("lr_warmup_steps", -1), ("invalid_outcome", "drop"),
    ],
)
def test_invalid_values_name_the_key(field, value):
    from metastone.train.config import SPRMTrainConfig

    with pytest.raises(ValueError, match=f"actor_rollout_ref.sprm.{field}="):
        SPRMTrainConfig.from_mapping({field: value})


def test_unknown_keys_are_listed():
    from metastone.train.config import SPRMTrainConfig

    with pytest.raises(ValueError, match="actor_rollout_ref.sprm.backbone_scale"):
        SPRMTrainConfig.from_mapping({"backbone_scale": 1e-4})


def test_yaml_section_round_trips_to_the_head_config():
    from omegaconf import OmegaConf

    from metastone.train.config import SPRMTrainConfig

    node = OmegaConf.create({"separators": [".\n\n"], "think_tokens": ["<think>", "</think>"], "betas": [0.9, 0.95]})
    cfg = SPRMTrainConfig.from_mapping(node)
    assert cfg.separators == (".\n\n",) and cfg.betas == (0.9, 0.95)
    head = cfg.head_config(1536)
    assert (head.hidden_size, head.feature_layer, head.aggregation, head.dropout) == (1536, -2, "geomean", 0.5)
    with pytest.raises(ValueError, match="hidden_size=1536 but the model"):
        SPRMTrainConfig(hidden_size=1536).head_config(64)
