"""``metastone prepare-data`` (also ``python -m metastone.data.prepare``): problem files -> verl RL parquet
(``metastone.data.prepare``; docs/train.md).

    metastone prepare-data --input deepscaler.json --output data/metastone/train.parquet \\
        --val-output data/metastone/val.parquet --val-size 64
"""

from __future__ import annotations

import argparse

from metastone.data.prepare import ANSWER_KEYS, INSTRUCTION, QUESTION_KEYS


def make_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "prepare-data", help="problem files -> verl RL parquet",
        description="Math problems -> verl RL parquet (prompt / reward_model / data_source)."
    )
    parser.add_argument("--input", nargs="+", help=".jsonl / .json / .csv / .parquet file(s) (not with --task)")
    parser.add_argument("--task", choices=["demo"], default=None,
                        help="write a bundled task's rows instead (demo: its completion prompts and stop strings; "
                             "--input may name a file in its format, default its train split)")
    parser.add_argument("--out", "--output", dest="output", required=True, help="training parquet to write")
    parser.add_argument("--val-output", default=None, help="also write a validation parquet split off the input")
    parser.add_argument("--val-size", type=int, default=0, help="rows moved to --val-output (random, --seed)")
    parser.add_argument("--data-source", default="math", help="data_source for rows that carry none")
    parser.add_argument("--question-key", default=None, help=f"question field (default: first of {QUESTION_KEYS})")
    parser.add_argument("--answer-key", default=None, help=f"answer field (default: first of {ANSWER_KEYS})")
    parser.add_argument("--instruction", default=INSTRUCTION, help="appended to questions without a \\boxed request")
    parser.add_argument("--limit", type=int, default=None, help="keep only the first N records")
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed for the validation split")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from metastone.data.prepare import prepare

    prepare(
        args.output, args.input, task=args.task, val_output=args.val_output, val_size=args.val_size,
        data_source=args.data_source, question_key=args.question_key, answer_key=args.answer_key,
        instruction=args.instruction, limit=args.limit, seed=args.seed,
    )
    return 0
