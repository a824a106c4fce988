"""verl FSDP engine with the SPRM head on the policy's own backbone (MetaStone-S1, Sec. 3 and Eq. 6).

``SPRMEngine`` is verl 0.9.1's ``FSDPEngineWithLMHead`` plus one thing in its training forward: the
hidden state entering the feature layer's decoder block (HF ``hidden_states[-2]`` by default) is
captured by a forward pre-hook during the SAME forward that produces the policy log-probs, the head
scores the tokens just before each step separator (``metastone.sprm.step_mask``), and
``loss_coef * spr_loss`` is added to verl's PPO/GRPO loss. Registered for
``actor_rollout_ref.model.model_type=sprm_language_model``; everything verl does otherwise (FSDP1/2,
offload, remove-padding, dynamic batch, checkpoints, weight sync to vLLM) is the parent's.

Backbone coupling (the original's ``f*1e-4 + f.detach()*(1-1e-4)``): the head reads
``s*f + (1-s)*f.detach()`` with ``s = backbone_grad_scale``, so the backbone receives exactly ``s``
times the SPR gradient (``s=0``: the head trains on detached features).

Not used in forward-only passes (old/ref log-probs): those run the parent's code unchanged. The
head, its AdamW and its schedule live in ``SPRMHeadRuntime`` beside ``self.module``, never inside it.
Unsupported (refused at setup with the key to change): Ulysses sequence parallelism, fused kernels,
LoRA.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable

import torch
import torch.distributed as dist
from verl.utils import tensordict_utils as tu
from verl.utils.device import get_device_id, get_device_name
from verl.workers.engine.base import EngineRegistry
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

from metastone.sprm import OUTCOME_INVALID, resolve_step_spec, step_mask
from metastone.sprm.aggregate import aggregate
from metastone.sprm.features import backbone, layer_input_index
from metastone.sprm.loss import scale_gradient
from metastone.train.config import MODEL_TYPE, SECTION, SPRMTrainConfig
from metastone.train.head_runtime import SPRMHeadRuntime
from metastone.train.outcome import GROUP_KEY, OUTCOME_KEY, outcome_from_batch, rank_sums

logger = logging.getLogger(__name__)


def feature_layer_module(module: torch.nn.Module, feature_layer: int) -> torch.nn.Module:
    """The decoder layer whose input is HF ``hidden_states[feature_layer]``, through FSDP1/PEFT wrappers."""
    inner = getattr(module, "_fsdp_wrapped_module", module)
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    layers = backbone(inner).layers
    return layers[layer_input_index(len(layers), feature_layer)]


def engine_device() -> torch.device:
    """The accelerator this process trains on (verl's device lookups), e.g. cuda:3 or npu:0."""
    name, index = get_device_name(), get_device_id()
    return torch.device(name) if name == "cpu" or not isinstance(index, int) else torch.device(name, index)


def full_sequence_response_mask(data) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense ``input_ids``, ``response`` and ``attention`` masks ``[B, T]`` from a no-padding micro-batch.

    verl keeps ``input_ids`` (prompt + response) and ``response_mask`` (response only) as jagged
    tensors; the response of sample ``i`` starts at ``len(input_ids[i]) - len(response_mask[i])``.
    """
    input_ids = data["input_ids"]
    lengths = input_ids.offsets().diff()
    batch, width = lengths.shape[0], int(lengths.max())
    ids = torch.nested.to_padded_tensor(input_ids, padding=0, output_size=(batch, width))
    resp_nested = data["response_mask"]
    resp_lens = resp_nested.offsets().diff()
    resp = torch.nested.to_padded_tensor(resp_nested, padding=0, output_size=(batch, int(resp_lens.max())))
    cols = torch.arange(width, device=ids.device)[None, :] - (lengths - resp_lens)[:, None]
    inside = (cols >= 0) & (cols < resp_lens[:, None])
    response = torch.zeros_like(ids, dtype=torch.bool)
    response[inside] = resp.gather(1, cols.clamp(0, resp.shape[1] - 1))[inside].bool()
    attention = torch.arange(width, device=ids.device)[None, :] < lengths[:, None]
    return ids, response, attention


# "cpu": the CPU platform of metastone.train.cpu_platform (CPU runs and tests); FSDP2 over gloo.
@EngineRegistry.register(model_type=MODEL_TYPE, backend=["fsdp", "fsdp2"], device=["cuda", "npu", "cpu"])
class SPRMEngine(FSDPEngineWithLMHead):
    """``FSDPEngineWithLMHead`` + SPRM head (see module doc). Call ``setup_sprm`` after ``initialize``."""

    sprm: SPRMHeadRuntime | None = None
    sprm_config: SPRMTrainConfig | None = None
    # (prompt group, trajectory score, label) of the current mini-batch's trajectories, for the
    # within-question ranking metrics (logged per mini-batch by train_batch)
    _sprm_ranked: list | None = None

    def _build_module(self):
        # The parent builds the HF causal LM only for model_type "language_model".
        model_type = self.model_config.model_type
        self.model_config.model_type = "language_model"
        try:
            return super()._build_module()
        finally:
            self.model_config.model_type = model_type

    def _build_fsdp_module(self, module):
        # verl gives every forward-only (reference) FSDP2 engine CPUOffloadPolicy(pin_memory=True);
        # pinned memory needs an accelerator. On the CPU platform the parameters live on the CPU
        # anyway, so the same policy is built without pinning, for this call only.
        if get_device_name() != "cpu":
            return super()._build_fsdp_module(module)
        from unittest import mock

        from torch.distributed.fsdp import CPUOffloadPolicy
        from verl.workers.engine.fsdp import transformer_impl

        def unpinned(pin_memory: bool = True) -> CPUOffloadPolicy:
            return CPUOffloadPolicy(pin_memory=False)

        with mock.patch.object(transformer_impl, "CPUOffloadPolicy", unpinned):
            return super()._build_fsdp_module(module)

    # ------------------------------------------------------------------ setup
    def setup_sprm(self, config: SPRMTrainConfig, tokenizer=None) -> None:
        """Build the head, its optimizer and step spec. ``config.enable=False`` leaves plain GRPO."""
        if not config.enable:
            self.sprm, self.sprm_config = None, config
            logger.info("%s.enable=false: training without the SPRM head.", SECTION)
            return
        if self.engine_config.forward_only:
            raise ValueError(
                "setup_sprm called on a forward-only engine (the reference policy); only the actor trains."
            )
        if getattr(self, "ulysses_sequence_parallel_size", 1) > 1:
            raise ValueError(
                "the SPRM head needs whole sequences on each rank; set "
                "actor_rollout_ref.actor.ulysses_sequence_parallel_size=1."
            )
        if getattr(self.model_config, "use_fused_kernels", False):
            raise ValueError(
                "set actor_rollout_ref.model.use_fused_kernels=false: fused kernels skip the hidden states."
            )
        if getattr(self.model_config, "lora_rank", 0) > 0:
            raise ValueError("LoRA is not supported with the SPRM head; set actor_rollout_ref.model.lora_rank=0.")
        hf_config = self.model_config.hf_config
        text_config = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
        tokenizer = tokenizer if tokenizer is not None else self.model_config.tokenizer
        # Build everything first, assign last: a failed setup leaves the engine as it was.
        spec = resolve_step_spec(tokenizer, config.separators, config.think_tokens)
        layer = feature_layer_module(self.module, config.feature_layer)
        group = self._dp_group_for_sprm()
        runtime = SPRMHeadRuntime(
            config, int(text_config.hidden_size), device=engine_device(),
            total_steps=int(self.optimizer_config.total_training_steps or -1), dp_group=group,
        )
        self._sprm_spec, self._sprm_layer, self._sprm_group = spec, layer, group
        self.sprm_config, self.sprm = config, runtime
        logger.info(
            "SPRM head d=%d on layer %d input, separators %s, backbone_grad_scale=%g",
            text_config.hidden_size, config.feature_layer, spec.separator_ids, config.backbone_grad_scale,
        )

    def _dp_group_for_sprm(self):
        if not dist.is_initialized():
            return None
        group = self.get_data_parallel_group()
        return group if dist.get_world_size(group) > 1 else None

    def update_sprm_config(self, **changes) -> None:
        """Change loss-side settings (e.g. ``backbone_grad_scale``) of a set-up engine."""
        self.sprm_config = dataclasses.replace(self.sprm_config, **changes)
        self.sprm.config = self.sprm_config

    # ------------------------------------------------------------------ forward
    def forward_step(self, micro_batch, loss_function, forward_only):
        if self.sprm is None or forward_only or loss_function is None:
            return super().forward_step(micro_batch, loss_function, forward_only)
        captured: dict[str, torch.Tensor] = {}

        def capture(_module, args, kwargs):
            captured["hidden"] = args[0] if args else kwargs["hidden_states"]

        def loss_with_sprm(model_output, data, dp_group=None):
            loss, metrics = loss_function(model_output=model_output, data=data, dp_group=dp_group)
            spr, spr_metrics, outputs = self.sprm_loss(captured.pop("hidden"), data)
            model_output.update(outputs)
            return loss + spr, {**metrics, **spr_metrics}

        handle = self._sprm_layer.register_forward_pre_hook(capture, with_kwargs=True)
        try:
            return super().forward_step(micro_batch, loss_with_sprm, forward_only)
        finally:
            handle.remove()

    def sprm_loss(self, hidden: torch.Tensor, data) -> tuple[torch.Tensor, dict, dict]:
        """Weighted SPR loss of one micro-batch from the captured feature ``hidden`` (packed or padded)."""
        cfg = self.sprm_config
        ids, response, attention = full_sequence_response_mask(data)
        mask = step_mask(ids, response, self._sprm_spec, attention_mask=attention)
        rows, cols = mask.nonzero(as_tuple=True)
        packed = tu.get_non_tensor_data(data=data, key="use_remove_padding", default=True)
        if packed:  # (1, total_nnz [+ pad], d): sample i starts at offsets[i]
            offsets = data["input_ids"].offsets().to(hidden.device)
            features = hidden.reshape(-1, hidden.shape[-1])[offsets[rows] + cols]
        else:  # (B, T, d), right-padded
            features = hidden[rows, cols]
        features = scale_gradient(features.float(), cfg.backbone_grad_scale)
        self.sprm.head.train(self.mode != "eval")
        if self.mode != "eval":  # training features only estimate the standardization
            self.sprm.observe(features)
        with torch.autocast(device_type=get_device_name(), enabled=False):
            picked = self.sprm.logits(features)
        step_logits = torch.zeros(mask.shape, dtype=torch.float32, device=picked.device)
        step_logits = step_logits.index_put((rows, cols), picked)
        outcome = outcome_from_batch(data, cfg.outcome_threshold).to(step_logits.device)
        if self.sprm.replay is not None and self.mode != "eval":
            groups = data[GROUP_KEY].reshape(-1) if GROUP_KEY in data.keys() else torch.arange(mask.shape[0])
            self.sprm.record(features.detach(), rows, outcome, groups)
        loss, metrics = self.sprm.loss(step_logits, outcome, mask)
        share = self._micro_batch_share(data, mask.shape[0])
        metrics["sprm/invalid_frac"] = float((outcome == OUTCOME_INVALID).float().mean())
        # 1 when this micro-batch had no trainer-written labels and fell back to the reward threshold
        metrics["sprm/label_fallback"] = float(OUTCOME_KEY not in data.keys())
        if self._sprm_ranked is not None and GROUP_KEY in data.keys():  # inside train_batch
            valid = outcome != OUTCOME_INVALID
            with torch.no_grad():
                traj = aggregate(torch.sigmoid(step_logits.detach()), mask & valid[:, None], cfg.aggregation)
            self._sprm_ranked.append((data[GROUP_KEY].reshape(-1).cpu(), traj.cpu(), outcome.cpu()))
        offsets = data["input_ids"].offsets()
        outputs = {
            "sprm_scores": torch.nested.nested_tensor_from_jagged(
                torch.sigmoid(step_logits.detach())[attention] * mask[attention], offsets
            ),
            "sprm_step_mask": torch.nested.nested_tensor_from_jagged(mask[attention].float(), offsets),
        }
        return cfg.loss_coef * share * loss, metrics, outputs

    @staticmethod
    def _micro_batch_share(data, micro_size: int) -> float:
        """This micro-batch's share of the rank's mini-batch, so accumulated SPR gradients average, not sum."""
        global_batch = tu.get_non_tensor_data(data=data, key="global_batch_size", default=None)
        dp_size = tu.get_non_tensor_data(data=data, key="dp_size", default=1)
        if not global_batch:
            return 1.0
        return micro_size * dp_size / global_batch

    # ------------------------------------------------------------------ optimisation
    def optimizer_zero_grad(self):
        super().optimizer_zero_grad()
        if self.sprm is not None:
            self.sprm.zero_grad()

    def optimizer_step(self):
        grad_norm = super().optimizer_step()
        if self.sprm is not None:
            self.sprm.step()
        return grad_norm

    def lr_scheduler_step(self):
        lr = super().lr_scheduler_step()
        if self.sprm is not None:
            self.sprm.scheduler_step()
        return lr

    def train_batch(self, data, loss_function: Callable):
        self._sprm_ranked = []
        outputs = super().train_batch(data, loss_function)
        ranked, self._sprm_ranked = self._sprm_ranked, None
        # verl marks a step's last mini-batch (the one after which it steps the lr schedulers): the
        # head's end-of-step work (statistics frozen, replay passes, validation) runs there
        step_metrics = {}
        if self.sprm is not None and tu.get_non_tensor_data(data=data, key="update_lr_scheduler", default=False):
            step_metrics = self.sprm.end_step()
        if self.sprm is not None and self.is_mp_src_rank_with_outputs():
            # lists, like the per-micro-batch metrics: verl's worker flattens every list it gathers
            outputs["metrics"]["sprm/head_grad_norm"] = [self.sprm.last_grad_norm]
            outputs["metrics"]["sprm/lr"] = [self.sprm.current_lr()]
            if ranked:  # one entry per mini-batch; the trainer turns the sums into the step's AUROC and gap
                groups, scores, labels = (torch.cat(parts) for parts in zip(*ranked))
                for key, value in rank_sums(groups, scores, labels).items():
                    outputs["metrics"][key] = [value]
            for key, value in step_metrics.items():
                outputs["metrics"][key] = [value]
        return outputs

    def to(self, device: str, model: bool = True, optimizer: bool = True, grad: bool = True):
        super().to(device=device, model=model, optimizer=optimizer, grad=grad)
        if self.sprm is not None and not self.engine_config.forward_only:
            self.sprm.to("cpu" if device == "cpu" else engine_device(), model=model, optimizer=optimizer)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, local_path, hdfs_path=None, global_step=0, max_ckpt_to_keep=None, **kwargs):
        super().save_checkpoint(local_path, hdfs_path, global_step, max_ckpt_to_keep, **kwargs)
        if self.sprm is not None:
            if not dist.is_initialized() or dist.get_rank() == 0:
                self.sprm.save(local_path, self.checkpoint_config.save_contents)
            if dist.is_initialized():
                dist.barrier()

    def load_checkpoint(self, local_path, hdfs_path=None, del_local_after_load=True, **kwargs):
        super().load_checkpoint(local_path, hdfs_path, del_local_after_load, **kwargs)
        if self.sprm is not None:
            self.sprm.load(local_path, self.checkpoint_config.load_contents)
