"""SPRM scorers as vLLM pooling models: the policy's backbone + the SPRM head, per-token scores out;
the policy with the head attached, scoring as it decodes (``*ForCausalLMWithSPRM`` + the
``StepScoresOut`` processor, ``serve/step_scores.py``); and ``NucleusOnCPU`` / ``RepetitionOnCPU``,
the top-p and repetition penalty our CPU generation engines sample with (``serve/vllm/cpu_sampling.py``).

The one file that imports vLLM internals (pinned: vLLM 0.32). The backbone is vLLM's own
``Qwen2Model``/``LlamaModel``; its EAGLE auxiliary-hidden-state hook returns ``hidden + residual``
entering decoder layer k, which is exactly HF ``hidden_states[k]``; the head is
``metastone.sprm.SPRMHead`` loaded with ``metastone.sprm.locate_head`` from the model folder (or from
``hf_overrides={"sprm_head_path": ...}``). ``forward`` returns one logit per token; the
token-classify pooler applies the sigmoid (one label), so ``/pooling`` and ``LLM.encode`` return
per-token probabilities. The backbone stops at the feature layer: the layers after it never run.
Choosing the step rows and aggregating is done by the caller with
``metastone.sprm`` (see ``metastone.serve.scoring``): this model never re-implements them.

vLLM's built-in ``Qwen2ForProcessRewardModel`` + STEP pooling does not fit: it reads the final
normed layer with another head and scores the separator token itself, one position off.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.layers.pooler.tokwise import pooler_for_token_classify
from vllm.model_executor.models.interfaces_base import default_pooling_type
from vllm.model_executor.models.llama import LlamaForCausalLM, LlamaModel
from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM, Qwen2Model
from vllm.model_executor.models.utils import AutoWeightsLoader, maybe_prefix
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from metastone.sprm.io import head_location, locate_head
from metastone.sprm.io import HEAD_KEYS
from metastone.sprm.features import layer_input_index
from metastone.serve.vllm.cpu_sampling import SETTINGS, repetition_penalty_, top_p_filter_, valid_setting
from metastone.serve.step_scores import STEP_SCORES_ARG, encode_records, step_scores_dir, valid_key

HEAD_PREFIX = "sprm_head."


def _attach_head(module: nn.Module, vllm_config: VllmConfig) -> None:
    """Load the SPRM head beside ``module.model`` (the backbone) and have the backbone return the feature
    layer's input as its auxiliary state: sets ``sprm_head``, ``sprm_config`` and ``feature_index``."""
    model_config = vllm_config.model_config
    text_config = model_config.hf_config.get_text_config()
    head_path = head_location(model_config.model, getattr(model_config.hf_config, "sprm_head_path", None))
    if not head_path.exists():
        raise FileNotFoundError(
            f"SPRM head location {head_path!r} does not exist locally; pass a local model folder or "
            "hf_overrides={'sprm_head_path': '/path/to/score_module.pt'}."
        )
    module._head_source = str(head_path)
    head, sprm_config = locate_head(model_config.model, head_path, hf_config=model_config.hf_config)
    module.sprm_config = sprm_config
    module.sprm_head = head.to(model_config.head_dtype)
    module.feature_index = layer_input_index(text_config.num_hidden_layers, sprm_config.feature_layer)
    module.model._set_aux_hidden_state_layers((module.feature_index,))


def _without_head(weights: Iterable[tuple[str, torch.Tensor]]):
    # vLLM reads every *.safetensors in the folder, our sprm_head.safetensors included: its keys
    # (0.weight, ...) are the head's, already loaded by _attach_head, so they are skipped here.
    return ((name, w) for name, w in weights if name not in HEAD_KEYS)


def _head_parameter_names(module: nn.Module) -> set[str]:
    return {HEAD_PREFIX + name for name, _ in module.sprm_head.named_parameters()}


class _SPRMForCausalLMBase(nn.Module):
    is_pooling_model = True
    backbone_cls: type[nn.Module]

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        hf_config = vllm_config.model_config.hf_config
        hf_config.num_labels = 1
        self.config = hf_config
        self.model = self.backbone_cls(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"))
        _attach_head(self, vllm_config)
        # Nothing after the feature layer is read: the backbone's layer loop stops where the feature is taken
        # (vLLM captures the auxiliary state after layer k-1 runs, under index k), so the last layer, which
        # the released head never reads, costs nothing (the final norm still runs, on the unused output).
        # Single-stage only: with pipeline stages each one owns a slice of the layers.
        if self.model.start_layer == 0 and self.model.end_layer > self.feature_index:
            self.model.end_layer = self.feature_index
        self.pooler = pooler_for_token_classify(vllm_config.model_config.pooler_config)
        self.make_empty_intermediate_tensors = self.model.make_empty_intermediate_tensors

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_input_ids(input_ids)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None):
        out = self.model(input_ids, positions, intermediate_tensors, inputs_embeds)
        _, aux = out
        feature = aux[0].to(self.sprm_head[0].weight.dtype)
        return self.sprm_head(feature).unsqueeze(-1)  # [T, 1] logits; the pooler applies the sigmoid

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loader = AutoWeightsLoader(self, ignore_unexpected_prefixes=["lm_head."])
        # the head was loaded from its own file in __init__; its parameters are reported as loaded
        return set(loader.load_weights(_without_head(weights))) | _head_parameter_names(self)


class _PolicyWithSPRM:
    """A vLLM generation model that also applies the SPRM head while it decodes (``serve/step_scores.py``).

    Mixed in front of vLLM's own ``*ForCausalLM``: the same weights, layers and logits. The forward
    returns the final hidden states with the feature layer's states appended (``[T, 2d]``); vLLM keeps
    the rows it samples from and hands them to ``compute_logits``, which applies the head to their
    feature half and leaves the probabilities for ``StepScoresOut`` (same process, same step, same row
    order as the logits) before computing the logits from the other half.
    """

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        if vllm_config.parallel_config.pipeline_parallel_size > 1:
            raise ValueError("scoring while generating needs the whole model in one pipeline stage "
                             "(pipeline_parallel_size 1); score with the separate SPRM scorer instead.")
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        _attach_head(self, vllm_config)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None):
        hidden, aux = self.model(input_ids, positions, intermediate_tensors, inputs_embeds)
        return torch.cat([hidden, aux[0].to(hidden.dtype)], dim=-1)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        global _latest_step_probs
        d = hidden_states.shape[-1] // 2
        feature = hidden_states[:, d:].to(self.sprm_head[0].weight.dtype)
        _latest_step_probs = torch.sigmoid(self.sprm_head(feature).float()).cpu()
        return super().compute_logits(hidden_states[:, :d])

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return set(super().load_weights(_without_head(weights))) | _head_parameter_names(self)


# the head's probabilities for the rows of the logits being sampled now (set by _PolicyWithSPRM.compute_logits)
_latest_step_probs: torch.Tensor | None = None


class Qwen2ForCausalLMWithSPRM(_PolicyWithSPRM, Qwen2ForCausalLM):
    pass


class LlamaForCausalLMWithSPRM(_PolicyWithSPRM, LlamaForCausalLM):
    pass


@default_pooling_type(tok_pooling_type="ALL")
class Qwen2ForSPRM(_SPRMForCausalLMBase):
    backbone_cls = Qwen2Model
    packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}


@default_pooling_type(tok_pooling_type="ALL")
class LlamaForSPRM(_SPRMForCausalLMBase):
    backbone_cls = LlamaModel
    packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}


class _PerRequestProcessor(LogitsProcessor):
    """Keeps one state per batch row for the requests that carry our extra argument for ``FIELD``; vLLM reports
    rows removed, added and moved (in that order) before each step."""

    FIELD: str  # vLLM's own field for the setting (``cpu_sampling.SETTINGS``), which must then stay neutral (1.0)

    def __init__(self, vllm_config, device, is_pin_memory):
        self.rows: dict[int, object] = {}

    @classmethod
    def _arg(cls) -> str:
        return SETTINGS[cls.FIELD][0]  # the extra argument that carries the request's value

    @classmethod
    def _value(cls, sampling_params):
        return (sampling_params.extra_args or {}).get(cls._arg()) if sampling_params is not None else None

    @classmethod
    def validate_params(cls, sampling_params):
        value = cls._value(sampling_params)
        if value is None:
            return
        arg, words, _ = SETTINGS[cls.FIELD]
        if not valid_setting(cls.FIELD, value):
            raise ValueError(f"extra_args[{arg!r}] must be a number {words}, got {value!r}.")
        own = getattr(sampling_params, cls.FIELD)
        if own != 1:
            raise ValueError(f"set either {cls.FIELD} ({own}) or extra_args[{arg!r}] ({value}), not both.")

    def new_state(self, value, prompt_ids, output_ids):
        raise NotImplementedError

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for index, params, prompt_ids, output_ids in batch_update.added:
            value = self._value(params)
            self.rows.pop(index, None)
            if value is not None:
                self.rows[index] = self.new_state(value, prompt_ids, output_ids)
        for a, b, direction in batch_update.moved:
            state_a, state_b = self.rows.pop(a, None), self.rows.pop(b, None)
            if state_a is not None:
                self.rows[b] = state_a
            if direction == MoveDirectionality.SWAP and state_b is not None:
                self.rows[a] = state_b


class NucleusOnCPU(_PerRequestProcessor):
    """Top-p for requests that carry it as ``extra_args[TOP_P_ARG]`` (vLLM's own ``top_p`` left at 1.0).

    A vLLM logits processor (``LLM(logits_processors=[...])``, ``--logits-processors``): vLLM applies
    argmax-invariant processors after the temperature and before its own top-k/top-p, which is where
    its nucleus is taken, so the request samples from the same nucleus; ``serve/vllm/cpu_sampling.py``
    finds it without sorting the vocabulary. Our CPU generation engines start with it
    (``vllm.cpu.cpu_sampler_kwargs``) and move each request's top-p here (``cpu_sampling.split_sampling``).
    """

    FIELD = "top_p"

    def is_argmax_invariant(self) -> bool:
        return True  # the most likely token is always in the nucleus

    def new_state(self, value, prompt_ids, output_ids):
        return float(value)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        rows = {i: p for i, p in self.rows.items() if p < 1 and i < logits.shape[0]}
        if not rows:
            return logits
        p = torch.ones(logits.shape[0], dtype=torch.float32)
        for index, value in rows.items():
            p[index] = value
        return top_p_filter_(logits, p)


class _Seen:
    """The token ids one request has seen (prompt + output so far), as a tensor grown as the output grows."""

    def __init__(self, penalty: float, prompt_ids, output_ids: list[int]):
        self.penalty, self.output_ids, self.done = penalty, output_ids, 0  # output_ids: vLLM's running list
        self.ids = set(prompt_ids or ())
        self.tensor = None

    def current(self) -> torch.Tensor:
        new = self.output_ids[self.done:]
        self.done += len(new)
        if self.tensor is None or not self.ids.issuperset(new):
            self.ids.update(new)
            self.tensor = torch.tensor(sorted(self.ids), dtype=torch.long)
        return self.tensor


class RepetitionOnCPU(_PerRequestProcessor):
    """Repetition penalty for requests that carry it as ``extra_args[REPETITION_ARG]`` (vLLM's own
    ``repetition_penalty`` left at 1.0): the same rule and float32 operations as vLLM's, applied only to
    the tokens the request has seen (``cpu_sampling.repetition_penalty_``). vLLM runs custom
    non-argmax-invariant processors after its built-in ones (min tokens, logit bias) and right before
    its penalties, which is where the repetition penalty was applied, so the order is unchanged."""

    FIELD = "repetition_penalty"

    def is_argmax_invariant(self) -> bool:
        return False  # a penalised token can stop being the most likely one

    def new_state(self, value, prompt_ids, output_ids):
        return _Seen(float(value), prompt_ids, output_ids)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        rows = {i: st for i, st in self.rows.items() if st.penalty != 1 and i < logits.shape[0]}
        if not rows:
            return logits
        seen: list[torch.Tensor | None] = [None] * logits.shape[0]
        penalty = torch.ones(logits.shape[0], dtype=torch.float32)
        for index, state in rows.items():
            seen[index], penalty[index] = state.current(), state.penalty
        return repetition_penalty_(logits, seen, penalty)


class StepScoresOut(_PerRequestProcessor):
    """Writes the SPRM probability of each decoding step for requests that carry
    ``extra_args[STEP_SCORES_ARG]`` (a key) to ``<dir>/<key>``, the directory named by the engine's
    environment (``serve/step_scores.py``). Leaves the logits unchanged. Runs only in an engine whose model
    is a ``*ForCausalLMWithSPRM``; a request asking for scores elsewhere is refused.

    The row being sampled holds the state of the request's newest token: response index
    ``len(output) - 1`` (-1 at the prompt's last token, not scored)."""

    def __init__(self, vllm_config, device, is_pin_memory):
        super().__init__(vllm_config, device, is_pin_memory)
        self.dir = step_scores_dir()

    @classmethod
    def _arg(cls) -> str:
        return STEP_SCORES_ARG

    @classmethod
    def validate_params(cls, sampling_params):
        key = cls._value(sampling_params)
        if key is None:
            return
        if not valid_key(key):
            raise ValueError(f"extra_args[{STEP_SCORES_ARG!r}] must be 32 lowercase hex digits, got {key!r}.")
        if step_scores_dir() is None:
            raise ValueError(f"extra_args[{STEP_SCORES_ARG!r}]: this engine was not started to score while generating.")
        if sampling_params.n != 1:
            raise ValueError(f"extra_args[{STEP_SCORES_ARG!r}] names one draft's record; send n=1 requests, one key each "
                             f"(got n={sampling_params.n}).")

    def is_argmax_invariant(self) -> bool:
        return False  # it must run for greedy requests too (it changes nothing)

    def new_state(self, value, prompt_ids, output_ids):
        return os.path.join(self.dir, value), output_ids

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        probs = _latest_step_probs
        if not self.rows or probs is None or probs.shape[0] != logits.shape[0]:
            return logits
        for index, (path, output_ids) in self.rows.items():
            j = len(output_ids) - 1
            if j >= 0 and index < probs.shape[0]:
                with open(path, "ab", buffering=0) as f:
                    f.write(encode_records([j], [float(probs[index])]))
        return logits
