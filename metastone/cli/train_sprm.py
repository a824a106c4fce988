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

from metastone.cli.flags import add_config_flags, config_kwargs
from metastone.fit.config import FitConfig
from metastone.sampling import DEMO_SAMPLING

DEMO_SEPARATORS = (".",)
# Flags whose default is decided from the other flags (None here): the demo model and task have their own.
RESOLVED_LATER = {
    "max_tokens": f"max new tokens per draft (default {FitConfig.max_tokens}; task demo {DEMO_SAMPLING.max_tokens})",
    "separators": "step separator strings, one token each (default '.\\n\\n'; demo model '.'); escapes like \\n work",
}


def make_parser(subparsers):
    p = subparsers.add_parser("train-sprm", help="offline fitting: an SPRM head on a frozen policy's saved drafts (no RL)", description=__doc__)
    add_config_flags(p, FitConfig, aliases={"data": ("--input_file", "--input-file")},
                     defaults=dict.fromkeys(RESOLVED_LATER), helps=RESOLVED_LATER)
    p.add_argument("--no-progress", "--no_progress", dest="no_progress", action="store_true")
    p.set_defaults(func=main)
    return p


def config_from_args(args) -> FitConfig:
    given = config_kwargs(args, [f.name for f in fields(FitConfig)])
    demo_model = given["model"] == "demo"
    if demo_model:
        from metastone.assets.smollm2 import demo_model_dir

        given["model"] = str(demo_model_dir())
    seps = given["separators"]
    if seps is None:
        seps = DEMO_SEPARATORS if demo_model else FitConfig.separators
    else:
        seps = tuple(s.encode().decode("unicode_escape") for s in seps)
    given["separators"] = tuple(seps)
    if given["max_tokens"] is None:
        given["max_tokens"] = DEMO_SAMPLING.max_tokens if args.task == "demo" else FitConfig.max_tokens
    return FitConfig(**given)


def main(args) -> int:
    import json

    from metastone.fit.pipeline import fit

    cfg = config_from_args(args)
    report = fit(cfg, progress=not args.no_progress)
    print(json.dumps(report, indent=2), file=sys.stdout)
    return 0
