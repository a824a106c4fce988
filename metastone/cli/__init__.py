"""The ``metastone`` command. Each subcommand is a module here with ``make_parser(subparsers)``, whose
parser's ``func`` runs it; the library below never imports this package (the ``python -m`` entries of
``metastone.train``, ``metastone.export`` and ``metastone.data.prepare`` call ``main`` when run as scripts)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# subcommand name -> module under metastone.cli
SUBCOMMANDS = {
    "score": "metastone.cli.score",
    "serve-score": "metastone.cli.serve_score",
    "serve-policy": "metastone.cli.serve_policy",
    "infer": "metastone.cli.infer",
    "metric": "metastone.cli.metric",
    "grade-math": "metastone.cli.grade_math",
    "grade-code": "metastone.cli.grade_code",
    "train": "metastone.cli.train",
    "export": "metastone.cli.export",
    "prepare-data": "metastone.cli.prepare_data",
    "train-sprm": "metastone.cli.train_sprm",
    "demo": "metastone.cli.demo",
    "demo-train": "metastone.cli.demo_train",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metastone", description="MetaStone-S1: policy + SPRM tools.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
        importlib.import_module(module).make_parser(subparsers)
    return parser


def exit_cleanly_on_sigterm() -> None:
    """Make SIGTERM (``kill``, ``pkill``, a job scheduler's stop) exit like Ctrl-C: ``finally`` blocks and exit
    hooks run, so the engines a command started in processes of their own (in-process vLLM's EngineCore and
    workers, the policy service's vLLM server) are stopped with it, not left running with their memory
    (``pkill -f "metastone infer"`` used to leave ~6 GB of vLLM processes behind). Servers replace it with
    uvicorn's own graceful shutdown while they serve."""
    import signal
    import threading

    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    exit_cleanly_on_sigterm()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"metastone {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
