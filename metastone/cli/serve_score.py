"""``metastone serve-score``: the SPRM scoring service (``test/score_model_queue.py`` wraps it).

Flags of the original script keep working (``--model_path --score_model_dim --lang --ip --port``);
the default bind address is 127.0.0.1 (the original README used 0.0.0.0).
"""

from __future__ import annotations

import logging

from metastone.cli.common import add_service_arguments
from metastone.serve.vllm.cpu import add_kv_cache_argument

logger = logging.getLogger(__name__)


def add_arguments(p):
    p.add_argument("--model_path", "--model-path", "--model", dest="model_path", required=True,
                   help="HF model folder with score_module.pt or sprm_head.safetensors beside the weights")
    p.add_argument("--score_model_dim", "--score-model-dim", dest="score_model_dim", type=int,
                   help="expected head size; checked against the model's hidden_size (1536/3584/5120 for 1.5B/7B/32B)")
    p.add_argument("--lang", choices=["en", "zh"], default="en", help="separator mode")
    p.add_argument("--ip", "--host", dest="host", default="127.0.0.1", help="bind address (default loopback)")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--backend", choices=["vllm", "hf"], default="vllm", help="vllm pooling model or HF reference")
    p.add_argument("--head", help="head file or folder, if not beside the model")
    p.add_argument("--dtype", default="bfloat16", help="bfloat16 | float32 | float16")
    p.add_argument("--device", default=None, help="HF backend device (default: cuda if available, else cpu)")
    p.add_argument("--max_model_len", "--max-model-len", dest="max_model_len", type=int, default=None)
    p.add_argument("--gpu_memory_utilization", "--gpu-memory-utilization", dest="gpu_memory_utilization", type=float, default=None)
    add_kv_cache_argument(p)
    p.add_argument("--max_batch", "--max-batch", dest="max_batch", type=int, default=64, help="requests scored together")
    add_service_arguments(p)


def make_parser(subparsers):
    p = subparsers.add_parser("serve-score", help="SPRM scoring service (HTTP)", description=__doc__)
    add_arguments(p)
    p.set_defaults(func=main)
    return p


def build_scorer(args):
    """The backend named by ``args.backend``; checks ``--score_model_dim`` first."""
    import json
    from pathlib import Path

    cfg_file = Path(args.model_path) / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"--model_path {args.model_path}: not a Hugging Face model folder (no config.json).")
    cfg = json.loads(cfg_file.read_text())
    hidden = cfg.get("hidden_size") or cfg.get("text_config", {}).get("hidden_size")
    if args.score_model_dim is not None and args.score_model_dim != hidden:
        raise ValueError(
            f"--score_model_dim {args.score_model_dim} does not match the model's hidden_size {hidden} "
            f"({cfg_file}); the SPRM head size equals the hidden size (1536 for 1.5B, 3584 for 7B, 5120 for 32B)."
        )
    if args.backend == "hf":
        from metastone.devices import default_device
        from metastone.serve.hf.scorer import HFScorer

        device = default_device(args.device)
        logger.info("score service: HF backend on device %s, %s", device, args.dtype)
        return HFScorer(args.model_path, head_path=args.head, device=device, dtype=args.dtype, lang=args.lang)
    from metastone.serve.vllm.scorer import VLLMScorer

    kwargs = {k: v for k, v in (("max_model_len", args.max_model_len), ("gpu_memory_utilization", args.gpu_memory_utilization)) if v is not None}
    return VLLMScorer(args.model_path, head_path=args.head, dtype=args.dtype, lang=args.lang,
                      kv_cache_gib=args.kv_cache_gib, **kwargs)


def main(args) -> int:
    from metastone.serve.http.common import resolve_api_key, run_app
    from metastone.serve.http.score_server import create_score_app

    scorer = build_scorer(args)
    app = create_score_app(scorer, lambda text: scorer.tokenizer.encode(text, add_special_tokens=False),
                           max_len=scorer.max_len, vocab_size=scorer.vocab_size, api_key=resolve_api_key(args.api_key),
                           max_batch=args.max_batch, model_name=str(args.model_path), max_in_flight=args.max_in_flight)
    try:
        run_app(app, args.host, args.port)
    finally:
        close = getattr(scorer, "close", None)
        if close is not None:  # vLLM: stop the engine before the interpreter's exit hooks run
            close()
    return 0
