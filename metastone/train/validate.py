"""Whole-run checks before any worker starts: every error names the config key(s) and the fix.

``validate_run_config`` is what ``python -m metastone.train --dry-run`` runs (and what a real run
runs first): the SPRM section, the verl settings the SPRM engine depends on, batch sizes, data
files, the head size against the model's hidden size, separators against the tokenizer, then
verl's own ``validate_config``. The model is only inspected where it is available offline (a local
folder or the Hugging Face cache); otherwise the size check is deferred to worker start (the engine
checks it again there) and the summary says so.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from metastone.sprm import resolve_step_spec, sprm_head_num_params
from metastone.sprm.features import layer_input_index
from metastone.train.config import EXTERNAL_LIB, MODEL_TYPE, SECTION, SPRMTrainConfig
from metastone.train.packages import resolve_package_settings

logger = logging.getLogger(__name__)

OUR_REWARD = "pkg://metastone.train.reward"
# Qwen2 configs of the paper's base models, so a dry run can size them without network access.
KNOWN_MODELS = {
    "agentica-org/DeepScaleR-1.5B-Preview": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                                                 num_attention_heads=12, num_key_value_heads=2, vocab_size=151936),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                                                      num_attention_heads=12, num_key_value_heads=2, vocab_size=151936),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                                    num_attention_heads=28, num_key_value_heads=4, vocab_size=152064),
    "Qwen/QwQ-32B": dict(hidden_size=5120, intermediate_size=27648, num_hidden_layers=64,
                         num_attention_heads=40, num_key_value_heads=8, vocab_size=152064),
}
REMOTE_PREFIXES = ("hdfs://", "s3://", "gs://", "http://", "https://")


@dataclass
class RunSummary:
    """What a dry run reports: the resolved SPRM section, sizes and deferred checks."""

    sprm: SPRMTrainConfig
    model_path: str
    hidden_size: int | None = None
    backbone_params: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def head_params(self) -> int | None:
        d = self.hidden_size or self.sprm.hidden_size
        return sprm_head_num_params(d) if d else None

    def report(self) -> str:
        import json

        lines = [f"resolved {SECTION}:", json.dumps(_plain(self.sprm), indent=2), f"model: {self.model_path}"]
        d = self.hidden_size or self.sprm.hidden_size
        lines.append(f"hidden size d: {d if d else 'unknown'}")
        lines.append(f"backbone parameters: {self.backbone_params:,}" if self.backbone_params else
                     "backbone parameters: unknown (model config not available offline)")
        if self.head_params:
            share = ""
            if self.backbone_params:
                share = f" ({100 * self.head_params / self.backbone_params:.2f}% of the backbone)"
            lines.append(f"SPRM head parameters (2d^2+4d+1): {self.head_params:,}{share}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _plain(cfg: SPRMTrainConfig) -> dict:
    from dataclasses import asdict

    out = asdict(cfg)
    for key in ("separators", "think_tokens", "betas"):
        if out[key] is not None:
            out[key] = list(out[key])
    return out


def _get(cfg: DictConfig, key: str, default=None):
    return OmegaConf.select(cfg, key, default=default)


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)) or OmegaConf.is_list(value):
        return list(value)
    return [value]


def _looks_local(path: str) -> bool:
    """A filesystem path rather than a Hub id ("org/name")."""
    return path.startswith(("/", "~", "."))


def check_data_files(cfg: DictConfig) -> None:
    for key in ("data.train_files", "data.val_files"):
        files = _as_list(_get(cfg, key))
        if not files:
            raise ValueError(f"{key} is empty; give the parquet file(s) written by `python -m metastone.data.prepare`.")
        for f in files:
            f = str(f)
            if f.startswith(REMOTE_PREFIXES):
                continue
            if not Path(os.path.expanduser(f)).is_file():
                raise ValueError(
                    f"{key}: file {f!r} does not exist. Write it with `python -m metastone.data.prepare "
                    f"--input <problems.jsonl> --output {f}` or point {key} at an existing parquet file."
                )


def check_structure(cfg: DictConfig, sprm: SPRMTrainConfig) -> None:
    """The verl settings the SPRM engine and our trainer depend on."""
    if _get(cfg, "actor_rollout_ref.model.path") is None:
        raise ValueError(
            "actor_rollout_ref.model.path is not set; choose a preset (preset=tiny|s1_1p5b|s1_7b|s1_32b) or set "
            "actor_rollout_ref.model.path=<HF folder or Hub id>."
        )
    model_type = _get(cfg, "actor_rollout_ref.model.model_type", "language_model")
    if sprm.enable and model_type != MODEL_TYPE:
        raise ValueError(
            f"actor_rollout_ref.model.model_type={model_type!r}: the SPRM head needs the SPRM engine; set "
            f"actor_rollout_ref.model.model_type={MODEL_TYPE} (or {SECTION}.enable=false for plain GRPO)."
        )
    libs = [str(x) for x in _as_list(_get(cfg, "actor_rollout_ref.model.external_lib"))]
    if model_type == MODEL_TYPE and EXTERNAL_LIB not in libs:
        raise ValueError(
            f"actor_rollout_ref.model.external_lib={libs or None}: verl workers must import {EXTERNAL_LIB} to "
            f"find the {MODEL_TYPE} engine; set actor_rollout_ref.model.external_lib={EXTERNAL_LIB}."
        )
    fixed = {
        "actor_rollout_ref.model.use_fused_kernels": (False, "fused kernels do not expose hidden states"),
        "actor_rollout_ref.model.lora_rank": (0, "LoRA is not supported with the SPRM head"),
        "actor_rollout_ref.actor.ulysses_sequence_parallel_size": (1, "the head needs whole sequences per rank"),
        "actor_rollout_ref.actor.fsdp_config.ulysses_sequence_parallel_size": (1, "as above"),
        "trainer.use_v1": (True, "the SPRM trainer extends verl's V1 trainer"),
        "trainer.v1.trainer_mode": ("sync", "the SPRM trainer is the synchronous one"),
        "distillation.enabled": (False, "distillation is not combined with the SPRM loss"),
    }
    if sprm.enable:
        for key, (want, why) in fixed.items():
            have = _get(cfg, key, want)
            if have != want:
                raise ValueError(f"{key}={have!r} is not supported ({why}); set {key}={want!r}.")
    device, rollout = _get(cfg, "trainer.device", "cuda"), _get(cfg, "actor_rollout_ref.rollout.name")
    if device == "cpu" and rollout != "hf":
        raise ValueError(
            f"trainer.device=cpu with actor_rollout_ref.rollout.name={rollout!r}: verl's {rollout} rollout needs a "
            "GPU; on CPU set actor_rollout_ref.rollout.name=hf (metastone's CPU rollout, see preset cpu_tiny)."
        )
    if rollout == "hf" and _get(cfg, "actor_rollout_ref.rollout.checkpoint_engine.backend", "naive") != "naive":
        raise ValueError(
            "actor_rollout_ref.rollout.name=hf takes the trainer's weights in-process; set "
            "actor_rollout_ref.rollout.checkpoint_engine.backend=naive."
        )
    strategy = _get(cfg, "actor_rollout_ref.actor.strategy")
    if strategy not in ("fsdp", "fsdp2"):
        raise ValueError(
            f"actor_rollout_ref.actor.strategy={strategy!r}: the SPRM engine is FSDP-based; use fsdp2 or fsdp."
        )
    batch = int(_get(cfg, "data.train_batch_size"))
    mini = int(_get(cfg, "actor_rollout_ref.actor.ppo_mini_batch_size"))
    if mini > batch:
        raise ValueError(
            f"actor_rollout_ref.actor.ppo_mini_batch_size={mini} > data.train_batch_size={batch}: a mini-batch "
            "cannot be larger than the batch; lower the mini-batch size or raise the batch size."
        )
    if batch % mini:
        raise ValueError(
            f"data.train_batch_size={batch} is not a multiple of actor_rollout_ref.actor.ppo_mini_batch_size={mini}; "
            "choose sizes that divide."
        )
    epochs = int(_get(cfg, "actor_rollout_ref.actor.ppo_epochs", 1) or 1)
    if sprm.enable and sprm.replay_passes > 0 and epochs > 1:
        raise ValueError(
            f"{SECTION}.replay_passes={sprm.replay_passes} with actor_rollout_ref.actor.ppo_epochs={epochs}: the replay "
            "buffer records each trajectory as the policy update sees it, so extra epochs would store it twice; set "
            f"ppo_epochs=1 (replay passes are the head's extra epochs) or {SECTION}.replay_passes=0."
        )
    n = int(_get(cfg, "actor_rollout_ref.rollout.n", 1))
    if _get(cfg, "algorithm.adv_estimator") == "grpo" and n < 2:
        raise ValueError(
            f"actor_rollout_ref.rollout.n={n}: GRPO normalises rewards within a group of samples of one prompt; "
            "with n=1 every advantage is 0. Set actor_rollout_ref.rollout.n>=2 (the original scripts use 8)."
        )


def inspect_model(cfg: DictConfig, sprm: SPRMTrainConfig, summary: RunSummary, check_paths: bool) -> None:
    """Hidden size, parameter count and separator tokens, where the model is available offline."""
    path = os.path.expanduser(str(_get(cfg, "actor_rollout_ref.model.path")))
    local = Path(path).is_dir()
    if not local and check_paths and _looks_local(path):
        raise ValueError(f"actor_rollout_ref.model.path={path!r} does not exist; give a model folder or a Hub id.")
    from transformers import AutoConfig, Qwen2Config

    try:
        remote_code = bool(_get(cfg, "actor_rollout_ref.model.trust_remote_code", False))
        hf_config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=remote_code)
    except Exception as exc:  # noqa: BLE001 - any failure means "not available offline"
        if path not in KNOWN_MODELS:
            summary.notes.append(
                f"model config of {path!r} is not available offline ({type(exc).__name__}); the head size check "
                "runs again when the workers load the model."
            )
            return
        hf_config = Qwen2Config(**KNOWN_MODELS[path], tie_word_embeddings=False)
        summary.notes.append(f"{path} sized from metastone's built-in copy of its config (not downloaded).")
    text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    summary.hidden_size = int(text.hidden_size)
    sprm.head_config(summary.hidden_size)  # raises naming the keys if sprm.hidden_size differs
    layers = getattr(text, "num_hidden_layers", None)
    if layers is not None:
        try:
            layer_input_index(int(layers), sprm.feature_layer)
        except ValueError as exc:
            raise ValueError(f"{SECTION}.feature_layer: {exc}") from exc
    summary.backbone_params = _count_params(hf_config)
    if local:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        try:
            resolve_step_spec(tokenizer, sprm.separators, sprm.think_tokens)
        except ValueError as exc:
            raise ValueError(f"{SECTION}.separators / think_tokens vs the tokenizer of {path}: {exc}") from exc


def _count_params(hf_config) -> int | None:
    try:
        import torch
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_config)
        return sum(p.numel() for p in model.parameters())
    except Exception:  # noqa: BLE001 - a count is informative only
        return None


def check_reward(cfg: DictConfig, summary: RunSummary) -> None:
    path = _get(cfg, "reward.custom_reward_function.path")
    if path != OUR_REWARD:
        summary.notes.append(
            f"reward.custom_reward_function.path={path!r} is not {OUR_REWARD}: unless your function returns "
            "'sprm_label', SPR labels fall back to reward > outcome_threshold with no invalid class."
        )


def run_verl_checks(cfg: DictConfig) -> None:
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    try:
        validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    except (AssertionError, ValueError, TypeError) as exc:
        raise ValueError(f"verl's validate_config rejected the configuration: {exc}") from exc
    except Exception as exc:  # hydra InstantiationException wraps the dataclass errors
        raise ValueError(f"verl could not build its config dataclasses: {exc}") from exc


def validate_run_config(cfg: DictConfig, *, check_paths: bool = True) -> RunSummary:
    """Validate a composed run config; returns a summary or raises ValueError naming the keys."""
    sprm = SPRMTrainConfig.from_mapping(_get(cfg, SECTION))
    summary = RunSummary(sprm=sprm, model_path=str(_get(cfg, "actor_rollout_ref.model.path")))
    check_structure(cfg, sprm)
    summary.notes += resolve_package_settings(cfg)  # attention by what is importable; kernels need packages
    if check_paths:
        check_data_files(cfg)
    inspect_model(cfg, sprm, summary, check_paths)
    check_reward(cfg, summary)
    run_verl_checks(cfg)
    return summary
