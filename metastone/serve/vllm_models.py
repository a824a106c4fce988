"""SPRM scorers as vLLM pooling models: the policy's backbone + the SPRM head, per-token scores out;
and ``NucleusOnCPU``, the sort-free top-p our CPU generation engines sample with.

The one file that imports vLLM internals (pinned: vLLM 0.32). The backbone is vLLM's own
``Qwen2Model``/``LlamaModel``; its EAGLE auxiliary-hidden-state hook returns ``hidden + residual``
entering decoder layer k, which is exactly HF ``hidden_states[k]``; the head is
``metastone.sprm.SPRMHead`` loaded with ``metastone.sprm.load_head`` from the model folder (or from
``hf_overrides={"sprm_head_path": ...}``). ``forward`` returns one logit per token; the
token-classify pooler applies the sigmoid (one label), so ``/pooling`` and ``LLM.encode`` return
per-token probabilities. The backbone stops at the feature layer: the layers after it never run.
Choosing the step rows and aggregating is done by the caller with
``metastone.sprm`` (see ``metastone.serve.scoring``): this model never re-implements them.

vLLM's built-in ``Qwen2ForProcessRewardModel`` + STEP pooling does not fit: it reads the final
normed layer with another head and scores the separator token itself, one position off.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.layers.pooler.tokwise import pooler_for_token_classify
from vllm.model_executor.models.interfaces_base import default_pooling_type
from vllm.model_executor.models.llama import LlamaModel
from vllm.model_executor.models.qwen2 import Qwen2Model
from vllm.model_executor.models.utils import AutoWeightsLoader, maybe_prefix
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from metastone.sprm import load_head
from metastone.sprm.io import HEAD_KEYS
from metastone.sprm.features import layer_input_index
from metastone.serve.nucleus import TOP_P_ARG, top_p_filter_

HEAD_PREFIX = "sprm_head."


class _SPRMForCausalLMBase(nn.Module):
    is_pooling_model = True
    backbone_cls: type[nn.Module]

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        model_config = vllm_config.model_config
        hf_config = model_config.hf_config
        hf_config.num_labels = 1
        text_config = hf_config.get_text_config()
        self.config = hf_config
        self.model = self.backbone_cls(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"))
        head_path = getattr(hf_config, "sprm_head_path", None) or model_config.model
        if not Path(head_path).exists():
            raise FileNotFoundError(
                f"SPRM head location {head_path!r} does not exist locally; pass a local model folder or "
                "hf_overrides={'sprm_head_path': '/path/to/score_module.pt'}."
            )
        self._head_source = head_path
        head, sprm_config = load_head(head_path, hidden_size=text_config.hidden_size)
        self.sprm_config = sprm_config
        self.sprm_head = head.to(model_config.head_dtype)
        self.feature_index = layer_input_index(text_config.num_hidden_layers, sprm_config.feature_layer)
        self.model._set_aux_hidden_state_layers((self.feature_index,))
        # Nothing after the feature layer is read: the backbone's layer loop stops where the feature is taken
        # (vLLM captures the auxiliary state after layer k-1 runs, under index k), so the last layer, which
        # the released head never reads, costs nothing (the final norm still runs, on the unused output).
        # Single-stage only: with pipeline stages each one owns a slice of the layers.
        if self.model.start_layer == 0 and self.model.end_layer > self.feature_index:
            self.model.end_layer = self.feature_index
        self.pooler = pooler_for_token_classify(model_config.pooler_config)
        self.make_empty_intermediate_tensors = self.model.make_empty_intermediate_tensors

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_input_ids(input_ids)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None):
        out = self.model(input_ids, positions, intermediate_tensors, inputs_embeds)
        _, aux = out
        feature = aux[0].to(self.sprm_head[0].weight.dtype)
        return self.sprm_head(feature).unsqueeze(-1)  # [T, 1] logits; the pooler applies the sigmoid

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        # vLLM reads every *.safetensors in the folder, our sprm_head.safetensors included: its keys
        # (0.weight, ...) are the head's, already loaded in __init__, so they are skipped here.
        backbone_weights = ((name, w) for name, w in weights if name not in HEAD_KEYS)
        loader = AutoWeightsLoader(self, ignore_unexpected_prefixes=["lm_head."])
        loaded = loader.load_weights(backbone_weights)
        # The head was loaded from its own file in __init__; report its parameters as loaded.
        return set(loaded) | {HEAD_PREFIX + name for name, _ in self.sprm_head.named_parameters()}


@default_pooling_type(tok_pooling_type="ALL")
class Qwen2ForSPRM(_SPRMForCausalLMBase):
    backbone_cls = Qwen2Model
    packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}


@default_pooling_type(tok_pooling_type="ALL")
class LlamaForSPRM(_SPRMForCausalLMBase):
    backbone_cls = LlamaModel
    packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}


class NucleusOnCPU(LogitsProcessor):
    """Top-p for requests that carry it as ``extra_args[TOP_P_ARG]`` (vLLM's own ``top_p`` left at 1.0).

    A vLLM logits processor (``LLM(logits_processors=[...])``, ``--logits-processors``): vLLM applies
    argmax-invariant processors after the temperature and before its own top-k/top-p, which is where
    its nucleus is taken, so the request samples from the same nucleus; ``metastone.serve.nucleus``
    finds it without sorting the vocabulary. Our CPU generation engines start with it
    (``vllm_cpu.cpu_sampler_kwargs``) and move each request's top-p here (``nucleus.split_top_p``).
    """

    def __init__(self, vllm_config, device, is_pin_memory):
        self.top_p: dict[int, float] = {}  # batch row -> top_p, for the rows that have one

    @classmethod
    def validate_params(cls, sampling_params):
        p = (sampling_params.extra_args or {}).get(TOP_P_ARG)
        if p is None:
            return
        if not isinstance(p, (int, float)) or not 0 < p <= 1:
            raise ValueError(f"extra_args[{TOP_P_ARG!r}] must be a number in (0, 1], got {p!r}.")
        if sampling_params.top_p < 1:
            raise ValueError(f"set either top_p ({sampling_params.top_p}) or extra_args[{TOP_P_ARG!r}] ({p}), not both.")

    def is_argmax_invariant(self) -> bool:
        return True  # the most likely token is always in the nucleus

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.top_p.pop(index, None)
        for index, params, _, _ in batch_update.added:
            p = (params.extra_args or {}).get(TOP_P_ARG) if params is not None else None
            if p is not None and p < 1:
                self.top_p[index] = float(p)
            else:
                self.top_p.pop(index, None)
        for a, b, direction in batch_update.moved:
            p_a, p_b = self.top_p.pop(a, None), self.top_p.pop(b, None)
            if p_a is not None:
                self.top_p[b] = p_a
            if direction == MoveDirectionality.SWAP and p_b is not None:
                self.top_p[a] = p_b

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.top_p:
            return logits
        p = torch.ones(logits.shape[0], dtype=torch.float32)
        for index, value in self.top_p.items():
            if index < logits.shape[0]:
                p[index] = value
        return top_p_filter_(logits, p)
