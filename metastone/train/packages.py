"""Settings that need an optional package: chosen by what is importable, or refused before any worker starts.

verl 0.9.1 loads the policy with ``attn_implementation=flash_attention_2`` unless
``actor_rollout_ref.model.override_config.attn_implementation`` says otherwise, and it imports
liger / triton kernels only when the model is built. On a machine without those packages the run
fails at model load, after Ray and every worker have started. ``resolve_package_settings`` runs in
the pre-start validation (``python -m metastone.train --dry-run`` and every real run):

- attention left at verl's default: ``flash_attention_2`` when ``flash_attn`` is importable, else
  ``sdpa`` (written into the config, so the run and its saved resolved config use it);
- attention set explicitly to a flash-attention implementation without ``flash_attn``: refused;
- ``use_liger`` without ``liger_kernel``, ``use_fused_kernels`` without ``triton``: refused.

The check looks at the launching machine's environment; workers on other nodes must have the same
packages (``make setup-gpu`` builds the same environment everywhere).
"""

from __future__ import annotations

import importlib.util

from omegaconf import DictConfig, OmegaConf, open_dict

ATTN_KEY = "actor_rollout_ref.model.override_config.attn_implementation"
FLASH_IMPLS = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}
# boolean settings -> (package import name, pip name, what turning it on does)
PACKAGE_SWITCHES = {
    "actor_rollout_ref.model.use_liger": ("liger_kernel", "liger-kernel", "Liger kernels"),
    "actor_rollout_ref.model.use_fused_kernels": ("triton", "triton", "verl's fused Triton kernels"),
}


def importable(module: str) -> bool:
    """Whether ``module`` can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def resolve_package_settings(cfg: DictConfig) -> list[str]:
    """Pick or check every setting that needs an optional package; returns notes for the dry-run summary."""
    notes = []
    have = OmegaConf.select(cfg, ATTN_KEY, default=None)
    if have is None:
        chosen = "flash_attention_2" if importable("flash_attn") else "sdpa"
        with open_dict(cfg):
            if OmegaConf.select(cfg, "actor_rollout_ref.model.override_config") is None:
                cfg.actor_rollout_ref.model.override_config = {}
            cfg.actor_rollout_ref.model.override_config.attn_implementation = chosen
        why = "flash-attn is importable" if chosen == "flash_attention_2" else (
            "flash-attn is not importable here; install it (make setup-gpu) for flash_attention_2")
        notes.append(f"{ATTN_KEY}={chosen} chosen ({why}).")
    elif have in FLASH_IMPLS and not importable(FLASH_IMPLS[have]):
        raise ValueError(
            f"{ATTN_KEY}={have!r} needs the {FLASH_IMPLS[have]} package, which is not importable here (the model "
            f"would fail to load after the workers start). Install flash-attn (make setup-gpu), or set "
            f"{ATTN_KEY}=sdpa (or remove the setting: metastone then picks sdpa without flash-attn)."
        )
    for key, (module, pip_name, what) in PACKAGE_SWITCHES.items():
        if OmegaConf.select(cfg, key, default=False) and not importable(module):
            raise ValueError(
                f"{key}=true turns on {what}, which need the {module} package, not importable here. "
                f"Install it (pip install {pip_name}) or set {key}=false."
            )
    return notes
