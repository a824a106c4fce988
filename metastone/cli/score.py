"""``metastone score``: SPRM scores of one trace with the HF backend, as JSON.

Prints ``{"value", "all_scores", "token_ids", "score_positions"}``: the trajectory score, the step
scores, the token ids of the trace (the text as written: no chat template is applied, special
tokens written in the text are parsed) and the scored positions (index of the token just before
each counted separator).
"""

from __future__ import annotations

import json

from metastone.cli.common import read_text_arg


def make_parser(subparsers):
    p = subparsers.add_parser("score", help="score one trace with the SPRM (HF backend)", description=__doc__)
    p.add_argument("--model", required=True, help="HF model folder with score_module.pt or sprm_head.safetensors")
    p.add_argument("--text-file", required=True, help="file holding the trace (prompt + response) as text")
    p.add_argument("--prompt-file", help="optional prompt; then --text-file holds the response only")
    p.add_argument("--head", help="head file or folder, if not beside the model")
    p.add_argument("--lang", choices=["en", "zh"],
                   help="separator mode: en '.\\n\\n' (default); zh: every short token holding '\\n' or '。' (the original's rule)")
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=main)
    return p




def main(args) -> int:
    from metastone.serve.hf.scorer import HFScorer

    text = read_text_arg(args.text_file, "--text-file")
    prompt = read_text_arg(args.prompt_file, "--prompt-file") if args.prompt_file else None
    scorer = HFScorer(args.model, head_path=args.head, device=args.device, dtype=args.dtype, lang=args.lang)
    print(json.dumps(scorer.score_text(text, prompt=prompt), ensure_ascii=False))
    return 0
