"""Feature extraction for Hugging Face decoder models: the hidden state the SPRM head reads.

The head reads HF ``hidden_states[-2]``: the residual stream entering the last decoder layer, before
any norm. ``extract_features`` captures exactly that tensor with a forward pre-hook on the layer and
stops the forward there, so the last layer, the final norm and the LM head (a [T, vocab] matmul,
the most expensive part at long context) are never computed. Works for every HF model whose
backbone keeps its decoder blocks in ``.layers`` (Qwen2/2.5/3, Llama, Mistral, SmolLM2).
"""

from __future__ import annotations

import torch
from torch import nn


class _StopForward(Exception):
    """Raised by the capture hook to end the forward once the feature is in hand."""


def backbone(model: nn.Module) -> nn.Module:
    """The decoder stack of a causal LM (``model.model`` for ``*ForCausalLM``), or the model itself."""
    inner = getattr(model, "model", None)
    if isinstance(inner, nn.Module) and hasattr(inner, "layers"):
        return inner
    if hasattr(model, "layers"):
        return model
    raise ValueError(
        f"{type(model).__name__}: cannot find the decoder layers (expected `.model.layers` or `.layers`); "
        "SPRM features need a decoder-only HF model such as Qwen2ForCausalLM or LlamaForCausalLM."
    )


def layer_input_index(num_layers: int, feature_layer: int) -> int:
    """Map an HF ``hidden_states`` index to the decoder layer whose input it is (-2 -> L-1)."""
    index = feature_layer if feature_layer >= 0 else num_layers + 1 + feature_layer
    if not 0 <= index < num_layers:
        raise ValueError(
            f"feature_layer={feature_layer} is not the input of a decoder layer of a {num_layers}-layer model; "
            f"use an index in [0, {num_layers - 1}] or [-{num_layers + 1}, -2]."
        )
    return index


def extract_features(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    feature_layer: int = -2,
    past_key_values=None,
) -> torch.Tensor:
    """Hidden states ``[B, T, d]`` equal to HF ``hidden_states[feature_layer]``, computing no later layer.

    Gradients flow if the caller enables them; wrap in ``torch.no_grad()`` for scoring. With a
    ``past_key_values`` cache (e.g. of a shared prompt, itself filled by a call to this function)
    the call continues from the cached tokens and fills the cache up to the feature layer only.
    """
    base = backbone(model)
    layers = base.layers
    layer = layers[layer_input_index(len(layers), feature_layer)]
    captured: dict[str, torch.Tensor] = {}

    def capture(_module, args, kwargs):
        captured["hidden"] = args[0] if args else kwargs["hidden_states"]
        raise _StopForward

    handle = layer.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        base(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
             past_key_values=past_key_values, use_cache=past_key_values is not None)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if "hidden" not in captured:
        raise RuntimeError("extract_features: the capture hook never ran; the model skipped its decoder layers.")
    return captured["hidden"]
