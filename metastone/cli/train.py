"""``metastone train`` (also ``python -m metastone.train``): RL training, verl GRPO with the SPRM head trained
jointly (docs/train.md), from hydra overrides. Fitting a head offline on a frozen policy's saved drafts is
``metastone train-sprm``.

    metastone train --dry-run preset=s1_1p5b data.train_files=... data.val_files=...
    metastone train preset=tiny actor_rollout_ref.model.path=/models/tiny ...

``--dry-run`` composes and validates the full config, prints the resolved SPRM section and the
parameter counts, and starts nothing (no Ray, no GPU). Without it, the same validation runs first
and then ``metastone.train.launch.launch`` starts the verl run.
"""

from __future__ import annotations

import argparse

from metastone.train.launch import DEFAULT_CONFIG_NAME


def make_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train", help="RL training: verl GRPO + SPRM head, joint (also python -m metastone.train)",
        description="RL training: verl 0.9.1 GRPO with the SPRM head trained jointly on the same rollouts (hydra "
                    "overrides after the options). Offline fitting of a head on a frozen policy's saved drafts: "
                    "metastone train-sprm.",
    )
    parser.add_argument("--dry-run", action="store_true", help="compose + validate + print; start nothing")
    parser.add_argument("--config-dir", default=None, help="hydra config folder (default: the repo's configs/)")
    parser.add_argument("--config-name", default=DEFAULT_CONFIG_NAME, help="primary config (default: sprm_trainer)")
    parser.add_argument("--no-check-paths", action="store_true", help="skip data-file and model-path existence checks")
    parser.add_argument("overrides", nargs="*", help="hydra overrides, e.g. preset=s1_1p5b data.train_files=x.parquet")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from metastone.train.launch import compose_config, launch
    from metastone.train.validate import validate_run_config

    cfg = compose_config(args.overrides, args.config_dir, args.config_name)
    summary = validate_run_config(cfg, check_paths=not args.no_check_paths)
    print(summary.report())
    if args.dry_run:
        print("dry run: configuration is valid; nothing started.")
        return 0
    launch(cfg)
    return 0
