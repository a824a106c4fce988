"""``metastone train-sprm``: offline fitting, no RL: an SPRM head fitted on a frozen policy's own saved drafts
(outcome labels only). RL training (verl GRPO + SPRM, joint) is ``metastone train`` / ``python -m metastone.train``.

Example (the shipped demo head; docs/demo.md)::

    metastone train-sprm --model demo --task demo --n-drafts 8 --questions 320 --out runs/smollm2-sprm --plot

``--model demo`` is the embedded SmolLM2-135M-Instruct (converted on first use). Stages: sample ->
grade -> features -> train; rerun the same command to finish a killed run. The output folder is a
ready model folder for ``test/inference.py --model_dir`` (links to the model's files + the head).
"""

from __future__ import annotations

import sys
from dataclasses import fields

from metastone.fit.config import FitConfig

DEMO_SEPARATORS = (".",)


def make_parser(subparsers):
    p = subparsers.add_parser("train-sprm", help="offline fitting: an SPRM head on a frozen policy's saved drafts (no RL)", description=__doc__)
    helps = {f.name: f.metadata.get("help", "") for f in fields(FitConfig)}
    p.add_argument("--model", required=True, help=helps["model"] + " ('demo': the embedded SmolLM2)")
    p.add_argument("--task", required=True, help=helps["task"])
    p.add_argument("--out", required=True, help=helps["out"])
    p.add_argument("--input_file", "--input-file", "--data", dest="data", default=None, help=helps["data"])
    p.add_argument("--n-drafts", "--n_drafts", dest="n_drafts", type=int, default=8, help=helps["n_drafts"])
    p.add_argument("--questions", type=int, default=0, help=helps["questions"])
    p.add_argument("--backend", choices=["vllm", "hf"], default="vllm", help=helps["backend"])
    p.add_argument("--seed", type=int, default=0, help=helps["seed"])
    p.add_argument("--max-tokens", "--max_tokens", dest="max_tokens", type=int, default=None, help="max new tokens per draft (default 256; demo 64)")
    # train-sprm's sampling defaults (FitConfig's), not the paper's 0.6 / 1.05 (metastone.sampling)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", "--top_p", dest="top_p", type=float, default=0.95)
    p.add_argument("--repetition-penalty", "--repetition_penalty", dest="repetition_penalty", type=float, default=1.0)
    p.add_argument("--separators", nargs="+", default=None,
                   help="step separator strings, one token each (default '.\\n\\n'; demo model '.'); escapes like \\n work")
    p.add_argument("--think-tokens", nargs=2, default=None, metavar=("START", "END"), help=helps["think_tokens"])
    p.add_argument("--feature-layer", type=int, default=-2)
    p.add_argument("--feature-dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--aggregation", default="geomean", choices=["geomean", "min", "last", "product", "mean"])
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--heldout-frac", type=float, default=0.2)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64, help=helps["batch_size"])
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--pos-weight", type=float, default=1.5)
    p.add_argument("--invalid-outcome", choices=["negative", "exclude"], default="negative", help=helps["invalid_outcome"])
    p.add_argument("--no-standardize", dest="standardize", action="store_false", help="train on raw features")
    p.add_argument("--patience", type=int, default=20, help=helps["patience"])
    p.add_argument("--feature-batch", type=int, default=16, help=helps["feature_batch"])
    p.add_argument("--no-link-model", dest="link_model", action="store_false", help="write only the head files")
    p.add_argument("--plot", action="store_true", help="draw fit_curves.png")
    p.add_argument("--no-progress", "--no_progress", dest="no_progress", action="store_true")
    p.set_defaults(func=main)
    return p


def config_from_args(args) -> FitConfig:
    model = args.model
    demo_model = model == "demo"
    if demo_model:
        from metastone.assets.smollm2 import demo_model_dir

        model = str(demo_model_dir())
    seps = args.separators
    if seps is None:
        seps = DEMO_SEPARATORS if demo_model else (".\n\n",)
    else:
        seps = tuple(s.encode().decode("unicode_escape") for s in seps)
    max_tokens = args.max_tokens or (64 if args.task == "demo" else 256)
    return FitConfig(
        model=model, task=args.task, out=args.out, data=args.data, n_drafts=args.n_drafts, questions=args.questions,
        backend=args.backend, seed=args.seed, max_tokens=max_tokens, temperature=args.temperature, top_p=args.top_p,
        repetition_penalty=args.repetition_penalty, separators=tuple(seps),
        think_tokens=tuple(args.think_tokens) if args.think_tokens else None, feature_layer=args.feature_layer,
        feature_dtype=args.feature_dtype, aggregation=args.aggregation, dropout=args.dropout,
        heldout_frac=args.heldout_frac, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, pos_weight=args.pos_weight, invalid_outcome=args.invalid_outcome, standardize=args.standardize,
        patience=args.patience, feature_batch=args.feature_batch, link_model=args.link_model, plot=args.plot,
    )


def main(args) -> int:
    import json

    from metastone.fit.pipeline import fit

    cfg = config_from_args(args)
    report = fit(cfg, progress=not args.no_progress)
    print(json.dumps(report, indent=2), file=sys.stdout)
    return 0
