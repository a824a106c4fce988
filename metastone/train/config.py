"""``SPRMTrainConfig``: the ``actor_rollout_ref.sprm`` section of a training run, validated once.

verl rebuilds ``actor_rollout_ref.model`` and ``.actor`` into its own dataclasses and rejects keys it
does not know, so the SPRM settings live in a sibling subtree, ``actor_rollout_ref.sprm`` (see
``configs/sprm_trainer.yaml``, which comments every key). This module turns that subtree into a
frozen dataclass whose errors name the offending key and say how to fix it. Whole-run checks
(batch sizes, data files, head size vs model) live in ``metastone.train.validate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from metastone.sprm import SPRMConfig
from metastone.sprm.config import HEAD_OPTIONS, head_field
from metastone.sprm.loss import AGREEMENTS, INVALID_OUTCOMES

SECTION = "actor_rollout_ref.sprm"
# actor_rollout_ref.model.model_type that selects metastone.train.engine.SPRMEngine
MODEL_TYPE = "sprm_language_model"
# actor_rollout_ref.model.external_lib: imported by every verl worker, registers the engine
EXTERNAL_LIB = "metastone.train.verl_ext"
SCHEDULERS = ("constant", "cosine")


@dataclass(frozen=True)
class SPRMTrainConfig:
    """How the SPRM head is built, trained and coupled to the policy backbone.

    Head (``SPRMConfig``'s fields under the same names, validated by it; saved with the weights as
    ``sprm_config.json``): ``hidden_size``, ``feature_layer``, ``separators``, ``think_tokens``,
    ``aggregation``, ``dropout``.
    Loss (MetaStone-S1 Eq. 6 and the original training code): ``loss_coef``, ``backbone_grad_scale``,
    ``pos_weight``, ``count_smoothing``, ``outcome_threshold``, ``invalid_outcome``.
    Head optimiser (its own AdamW, independent of the policy's): ``lr``, ``weight_decay``, ``betas``,
    ``eps``, ``clip_grad``, ``lr_warmup_steps``, ``lr_scheduler_type``, ``min_lr_ratio``.
    Small-scale learning options (docs/differences.md; all off by default, as in the original):
    ``standardize_features``/``standardize_steps`` (``metastone.sprm.standardize``, folded into the
    saved head), ``replay_passes``/``replay_steps``/``replay_groups_per_update`` (head-only passes
    over the recent steps' features, ``metastone.train.replay``).
    Honest metrics: ``validation_file``/``validation_freq`` (the head in eval mode on a fixed set of
    cached drafts, ``metastone.train.head_validation``).
    """

    enable: bool = field(default=True, metadata={"help": "train the SPRM head; false = plain GRPO"})
    hidden_size: int | None = field(default=None, metadata={"help": "expected backbone d; null = the model's"})
    feature_layer: int = head_field("feature_layer")
    separators: tuple[str, ...] = head_field("separators")
    think_tokens: tuple[str, str] | None = head_field("think_tokens")
    aggregation: str = head_field("aggregation", "trajectory score for metrics and export")
    dropout: float = head_field("dropout", "head dropout (train mode only)")
    init_head_path: str | None = field(default=None, metadata={"help": "start from this head file/folder"})
    loss_coef: float = field(default=1.0, metadata={"help": "weight of the SPR loss next to the PPO loss"})
    backbone_grad_scale: float = field(default=1e-4, metadata={"help": "share of SPR gradient reaching the backbone"})
    pos_weight: float = field(default=1.5, metadata={"help": "extra weight of positive steps"})
    count_smoothing: float = field(default=1.0, metadata={"help": "added to global step counts before balancing"})
    outcome_threshold: float = field(default=0.5, metadata={"help": "reward > this = correct, if no explicit label"})
    invalid_outcome: str = field(
        default="negative", metadata={"help": "invalid trajectories in the SPR loss: negative (original) | exclude"}
    )
    lr: float = field(default=1e-5, metadata={"help": "head learning rate"})
    weight_decay: float = field(default=0.01, metadata={"help": "head AdamW weight decay"})
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata={"help": "head AdamW betas"})
    eps: float = field(default=1e-8, metadata={"help": "head AdamW eps"})
    clip_grad: float = field(default=1.0, metadata={"help": "head gradient-norm clip (its own, not the policy's)"})
    lr_warmup_steps: int = field(default=0, metadata={"help": "linear warmup steps of the head lr"})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "constant|cosine"})
    min_lr_ratio: float = field(default=0.0, metadata={"help": "cosine floor as a fraction of lr"})
    standardize_features: bool = field(
        default=False, metadata={"help": "standardize step features (stats of the first steps, then frozen; folded at save)"}
    )
    standardize_steps: int = field(default=1, metadata={"help": "training steps whose features estimate the statistics"})
    agreement: str = field(
        default="sign", metadata={"help": "Eq. 6 filter: sign (original, logit > 0) | centered (logit > the update's mean)"}
    )
    replay_passes: int = field(default=0, metadata={"help": "head-only passes over the replay buffer after each step"})
    replay_steps: int = field(default=4, metadata={"help": "replay buffer bound: features of the last N steps"})
    replay_groups_per_update: int = field(default=4, metadata={"help": "prompt groups per replay head update"})
    validation_file: str | None = field(
        default=None, metadata={"help": "cached validation features (metastone.train.head_validation); null = none"}
    )
    validation_freq: int = field(default=1, metadata={"help": "score the validation set every N steps and at the end"})

    def __post_init__(self):
        def bad(key: str, expected: str):
            raise ValueError(f"{SECTION}.{key}={getattr(self, key)!r} is invalid: expected {expected}.")

        # the head options, validated (and normalised: lists -> tuples) by SPRMConfig itself; a null
        # hidden_size (the model's, known at build time) is checked with a placeholder
        head = self.head_config(1 if self.hidden_size is None else self.hidden_size)
        for key in HEAD_OPTIONS:
            object.__setattr__(self, key, getattr(head, key))
        if not 0.0 <= self.backbone_grad_scale <= 1.0:
            bad("backbone_grad_scale", "a value in [0, 1] (1e-4 as in the original code; 0 = head on detached features)")
        for key in ("loss_coef", "pos_weight", "count_smoothing", "weight_decay", "min_lr_ratio"):
            if getattr(self, key) < 0:
                bad(key, "a value >= 0")
        for key in ("lr", "eps", "clip_grad"):
            if not getattr(self, key) > 0:
                bad(key, "a value > 0")
        betas = tuple(float(b) for b in self.betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            bad("betas", "two values in [0, 1), e.g. [0.9, 0.999]")
        object.__setattr__(self, "betas", betas)
        if not isinstance(self.lr_warmup_steps, int) or self.lr_warmup_steps < 0:
            bad("lr_warmup_steps", "an int >= 0")
        for key, least in (("standardize_steps", 1), ("replay_passes", 0), ("replay_steps", 1),
                           ("replay_groups_per_update", 1), ("validation_freq", 1)):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                bad(key, f"an int >= {least}")
        if not isinstance(self.standardize_features, bool):
            bad("standardize_features", "true or false")
        if self.standardize_features and self.init_head_path:
            raise ValueError(
                f"{SECTION}.standardize_features=true with {SECTION}.init_head_path={self.init_head_path!r}: a saved "
                "head reads raw features (its standardization is folded in); set standardize_features=false to "
                "continue training it, or init_head_path=null to start a fresh head."
            )
        if self.agreement not in AGREEMENTS:
            bad("agreement", f"one of {', '.join(AGREEMENTS)} (sign: the original's filter)")
        if self.invalid_outcome not in INVALID_OUTCOMES:
            bad("invalid_outcome", f"one of {', '.join(INVALID_OUTCOMES)}")
        if self.lr_scheduler_type not in SCHEDULERS:
            bad("lr_scheduler_type", f"one of {', '.join(SCHEDULERS)}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> "SPRMTrainConfig":
        """Build from a dict or OmegaConf node; unknown keys are an error naming them."""
        if data is None:
            return cls()
        from omegaconf import DictConfig, OmegaConf

        if isinstance(data, DictConfig):
            data = OmegaConf.to_container(data, resolve=True)
        if not isinstance(data, Mapping):
            raise ValueError(f"{SECTION} must be a mapping of keys to values, got {type(data).__name__}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown key(s) {[f'{SECTION}.{k}' for k in unknown]}; known keys are {sorted(known)} "
                "(see configs/sprm_trainer.yaml)."
            )
        values = dict(data)
        for f in fields(cls):
            if f.name in values and values[f.name] is not None and f.type in ("float", "int"):
                try:
                    number = float(values[f.name])
                except (TypeError, ValueError):
                    raise ValueError(
                        f"{SECTION}.{f.name}={values[f.name]!r} is not a number; give a {f.type}."
                    ) from None
                values[f.name] = int(number) if f.type == "int" and number.is_integer() else number
        for key in ("separators", "betas"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        if isinstance(values.get("think_tokens"), list):
            values["think_tokens"] = tuple(values["think_tokens"])
        return cls(**values)

    def head_config(self, hidden_size: int) -> SPRMConfig:
        """The ``SPRMConfig`` saved beside the head (what the scorers read)."""
        if self.hidden_size is not None and self.hidden_size != hidden_size:
            raise ValueError(
                f"{SECTION}.hidden_size={self.hidden_size} but the model (actor_rollout_ref.model.path) has "
                f"hidden_size={hidden_size}; set {SECTION}.hidden_size={hidden_size} or null, "
                "or use the matching model."
            )
        return SPRMConfig.checked(lambda key: f"{SECTION}.{key}", hidden_size=hidden_size,
                                  **{key: getattr(self, key) for key in HEAD_OPTIONS})


def show_metastone_info_logs() -> None:
    """INFO for metastone's loggers in a verl worker process (verl sets the root logger to WARNING).

    metastone's progress lines (head init, checkpoint digests, rollout weight syncs) are INFO;
    ``METASTONE_LOGGING_LEVEL=WARNING`` silences them.
    """
    import logging
    import os

    logging.getLogger("metastone").setLevel(os.environ.get("METASTONE_LOGGING_LEVEL", "INFO"))
