"""Head I/O: the released ``score_module.pt`` and our ``sprm_head.safetensors`` + ``sprm_config.json``.

Released MetaStone-S1 folders hold the HF model and ``score_module.pt``, a torch state dict with
keys ``0.weight [2d, d]``, ``0.bias [2d]``, ``3.weight [1, 2d]``, ``3.bias [1]`` (the indices of
``nn.Sequential(Linear, ReLU, Dropout, Linear)``). It carries no config, so loading it uses the
paper's defaults (layer -2, ".\\n\\n", geometric mean) with d read from the weights. Our format keeps
the same keys in safetensors and records the config beside them.

A head file beside a single-file ``model.safetensors`` would be read as model weights by loaders
that take every ``*.safetensors`` of a folder (vLLM does); ``ensure_weights_index`` writes the
standard ``model.safetensors.index.json`` so they read the listed file only (HF prefers the single
file and is unaffected). ``save_head`` calls it for every folder it writes into.
"""

from __future__ import annotations

from pathlib import Path

import json
import os

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from metastone.sprm.config import SPRMConfig
from metastone.sprm.head import SPRMHead

HEAD_FILE = "sprm_head.safetensors"
CONFIG_FILE = "sprm_config.json"
RELEASED_HEAD_FILE = "score_module.pt"
# every file a head may consist of (ours, its config, the released format)
HEAD_FILES = (HEAD_FILE, CONFIG_FILE, RELEASED_HEAD_FILE)
MODEL_WEIGHTS_FILE = "model.safetensors"
MODEL_WEIGHTS_INDEX = "model.safetensors.index.json"
HEAD_KEYS = ("0.weight", "0.bias", "3.weight", "3.bias")
# Prefixes that wrappers (DDP, FSDP1, torch.compile) put in front of parameter names.
_WRAPPER_PREFIXES = ("module.", "_fsdp_wrapped_module.", "_orig_mod.")


def save_head(head: SPRMHead, out_dir: str | Path, config: SPRMConfig, *, released_format: bool = True) -> Path:
    """Write ``sprm_head.safetensors`` + ``sprm_config.json`` (and ``score_module.pt`` if asked) to ``out_dir``."""
    if config.hidden_size != head.hidden_size:
        raise ValueError(f"save_head: config.hidden_size={config.hidden_size} but the head has d={head.hidden_size}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    save_file(state, str(out / HEAD_FILE))
    config.save(out / CONFIG_FILE)
    if released_format:
        torch.save(state, out / RELEASED_HEAD_FILE)
    ensure_weights_index(out)
    return out


def ensure_weights_index(folder: str | Path) -> Path | None:
    """Write ``model.safetensors.index.json`` for a single-file model that has none; returns its path or None."""
    folder = Path(folder)
    weights, index = folder / MODEL_WEIGHTS_FILE, folder / MODEL_WEIGHTS_INDEX
    if not weights.is_file() or index.exists():
        return None
    with safe_open(str(weights), framework="pt") as f:
        names = list(f.keys())
    data = {"metadata": {"total_size": weights.stat().st_size}, "weight_map": {n: MODEL_WEIGHTS_FILE for n in names}}
    tmp = index.with_name(index.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, index)
    return index


def _clean_state_dict(state, source: Path) -> dict[str, torch.Tensor]:
    if isinstance(state, torch.nn.Module):
        state = state.state_dict()
    if not isinstance(state, dict):
        raise ValueError(f"{source}: expected a state dict with keys {list(HEAD_KEYS)}, got {type(state).__name__}.")
    cleaned = {}
    for key, value in state.items():
        for prefix in _WRAPPER_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        cleaned[key] = value
    missing = [k for k in HEAD_KEYS if k not in cleaned]
    extra = sorted(set(cleaned) - set(HEAD_KEYS))
    if missing or extra:
        raise ValueError(
            f"{source}: not an SPRM head state dict: missing keys {missing}, unexpected keys {extra}; "
            f"expected exactly {list(HEAD_KEYS)}."
        )
    return cleaned


def _check_shapes(state: dict[str, torch.Tensor], source: Path) -> int:
    d2, d = state["0.weight"].shape
    expected = {"0.weight": (2 * d, d), "0.bias": (2 * d,), "3.weight": (1, 2 * d), "3.bias": (1,)}
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise ValueError(f"{source}: {key} has shape {tuple(state[key].shape)}, expected {shape} for d={d}.")
    if d2 != 2 * d:
        raise ValueError(f"{source}: 0.weight has shape {(d2, d)}, expected (2d, d).")
    return d


def find_head_file(path: str | Path) -> Path:
    """The head file in a model folder (ours preferred over the released one), or the file itself."""
    path = Path(path)
    if path.is_file():
        return path
    for name in (HEAD_FILE, RELEASED_HEAD_FILE):
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(
        f"{path}: no SPRM head found; expected {HEAD_FILE} (with {CONFIG_FILE}) or {RELEASED_HEAD_FILE} in this folder."
    )


def load_head(
    path: str | Path,
    *,
    hidden_size: int | None = None,
    dtype: torch.dtype | None = None,
    config: SPRMConfig | None = None,
) -> tuple[SPRMHead, SPRMConfig]:
    """Load an SPRM head from a model folder or a head file; returns ``(head in eval mode, config)``.

    ``hidden_size`` is the backbone's hidden size: a head of another size is an error naming both.
    ``config`` overrides the config found on disk (or the defaults of a released ``score_module.pt``).
    """
    file = find_head_file(path)
    if file.suffix == ".safetensors":
        state = _clean_state_dict(load_file(str(file)), file)
        config_file = file.with_name(CONFIG_FILE)
        disk_config = SPRMConfig.load(config_file) if config_file.is_file() else None
    else:
        try:
            raw = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # unpickling errors have several types
            raise ValueError(f"{file}: cannot be read as a torch state dict ({exc}).") from exc
        state = _clean_state_dict(raw, file)
        disk_config = None
    d = _check_shapes(state, file)
    if hidden_size is not None and d != hidden_size:
        raise ValueError(
            f"{file}: the SPRM head has hidden size {d}, but the model's hidden_size is {hidden_size}. "
            "The head must come from the same model size (1536 for 1.5B, 3584 for 7B, 5120 for 32B)."
        )
    config = config or disk_config or SPRMConfig(hidden_size=d)
    if config.hidden_size != d:
        raise ValueError(f"{file}: config hidden_size={config.hidden_size} but the head weights have d={d}.")
    head = SPRMHead(d, dropout=config.dropout)
    head.load_state_dict(state)
    if dtype is not None:
        head.to(dtype)
    return head.eval(), config


def backbone_hidden_size(model) -> int:
    """The backbone's hidden size d: from a model folder's ``config.json`` or an HF config object (the text
    config of a multimodal one)."""
    if isinstance(model, (str, Path)):
        file = Path(model) / "config.json"
        if not file.is_file():
            raise FileNotFoundError(f"{model}: no config.json; expected a Hugging Face model folder.")
        data = json.loads(file.read_text())
        d = (data.get("text_config") or {}).get("hidden_size") or data.get("hidden_size")
    else:
        text = model.get_text_config() if hasattr(model, "get_text_config") else model
        d = getattr(text, "hidden_size", None) or getattr(model, "hidden_size", None)
    if not isinstance(d, int) or d <= 0:
        raise ValueError(f"{model}: no positive hidden_size in the model config (top level or text_config).")
    return d


def head_location(model_dir: str | Path, head_path: str | Path | None = None) -> Path:
    """Which head a model is scored with: ``head_path`` when given (a head folder or file), else the model folder
    (``sprm_head.safetensors`` + ``sprm_config.json`` preferred over the released ``score_module.pt``)."""
    return Path(head_path or model_dir)


def locate_head(model_dir: str | Path, head_path: str | Path | None = None, *, hf_config=None,
                dtype: torch.dtype | None = None, config: SPRMConfig | None = None) -> tuple[SPRMHead, SPRMConfig]:
    """The one head locator: the head at ``head_location(model_dir, head_path)``, checked against the backbone's
    hidden size (``hf_config``'s when the caller has it loaded, else ``model_dir/config.json``'s); ``dtype`` and
    ``config`` as ``load_head``. Every scorer, policy and command loads its head through here."""
    hidden = backbone_hidden_size(hf_config if hf_config is not None else model_dir)
    return load_head(head_location(model_dir, head_path), hidden_size=hidden, dtype=dtype, config=config)


def locate_head_config(model_dir: str | Path, head_path: str | Path | None = None) -> SPRMConfig:
    """The ``SPRMConfig`` of the head ``locate_head`` would load, reading no weights: its ``sprm_config.json``, or
    the paper's defaults for a released ``score_module.pt`` (whose d is not needed for steps; 1 here)."""
    file = find_head_file(head_location(model_dir, head_path))
    config_file = file.with_name(CONFIG_FILE)
    if file.suffix == ".safetensors" and config_file.is_file():
        return SPRMConfig.load(config_file)
    return SPRMConfig(hidden_size=1)
