"""The SPRM core: one definition of the head, step positions, loss, aggregation and head I/O.

Every other part of metastone (the verl trainer, the vLLM scorer, the HF scorer, search) imports
these; nothing here imports verl or vLLM.
"""

from metastone.sprm.aggregate import AGGREGATIONS, aggregate, aggregate_list
from metastone.sprm.config import SPRMConfig
from metastone.sprm.features import extract_features
from metastone.sprm.head import SPRMHead, sprm_head_num_params
from metastone.sprm.io import (
    CONFIG_FILE, HEAD_FILE, RELEASED_HEAD_FILE, backbone_hidden_size, find_head_file, load_head, locate_head,
    locate_head_config, save_head,
)
from metastone.sprm.loss import (
    INVALID_OUTCOMES, OUTCOME_CORRECT, OUTCOME_INVALID, OUTCOME_WRONG, map_invalid_outcome, scale_gradient, spr_loss,
)
from metastone.sprm.steps import StepSpec, resolve_step_spec, step_mask, step_positions

__all__ = [
    "AGGREGATIONS", "aggregate", "aggregate_list", "SPRMConfig", "extract_features", "SPRMHead",
    "sprm_head_num_params", "CONFIG_FILE", "HEAD_FILE", "RELEASED_HEAD_FILE", "find_head_file", "load_head",
    "locate_head", "locate_head_config", "backbone_hidden_size",
    "save_head", "INVALID_OUTCOMES", "map_invalid_outcome", "OUTCOME_CORRECT", "OUTCOME_INVALID", "OUTCOME_WRONG", "scale_gradient", "spr_loss",
    "StepSpec",
    "resolve_step_spec", "step_mask", "step_positions",
]
