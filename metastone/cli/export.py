"""``metastone export`` (also ``python -m metastone.export``): a verl FSDP checkpoint -> an HF folder with
the SPRM head in both formats (``metastone.export.export_checkpoint``; docs/train.md).

    metastone export --local_dir checkpoints/metastone/run/global_step_100/actor --target_dir exports/run-step100

The flags are verl's model merger's (``merge --backend fsdp --local_dir ... --target_dir ...``), so the
original ``verl/scripts/model_merger.sh`` command line works unchanged.
"""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def make_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export", help="verl FSDP checkpoint -> HF folder with the SPRM head",
        description="Merge a verl FSDP checkpoint into an HF folder with the SPRM head (both formats)."
    )
    parser.add_argument("operation", nargs="?", default="merge", choices=["merge"],
                        help="verl-compatible positional (only 'merge')")
    parser.add_argument("--backend", default="fsdp", choices=["fsdp"], help="checkpoint backend (FSDP only)")
    parser.add_argument("--local_dir", "--local-dir", required=True, help="global_step_N/actor checkpoint folder")
    parser.add_argument("--out", "--target_dir", "--target-dir", dest="target_dir", required=True, help="HF folder to write")
    parser.add_argument("--hf_upload_path", default=None, help="also upload to this Hub repo (after the head)")
    parser.add_argument("--private", action="store_true", help="private Hub repo")
    parser.add_argument("--trust-remote-code", action="store_true", help="trust remote code of the model config")
    parser.add_argument("--allow-missing-head", action="store_true", help="export a checkpoint saved without a head")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from metastone.export import export_checkpoint

    out = export_checkpoint(
        args.local_dir, args.target_dir, hf_upload_path=args.hf_upload_path, private=args.private,
        trust_remote_code=args.trust_remote_code, require_head=not args.allow_missing_head,
    )
    logger.info("exported %s -> %s", args.local_dir, out)
    return 0
