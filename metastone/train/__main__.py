"""``python -m metastone.train``: the same as ``metastone train`` (``metastone.cli.train``).

    python -m metastone.train --dry-run preset=s1_1p5b data.train_files=... data.val_files=...
    python -m metastone.train preset=tiny actor_rollout_ref.model.path=/models/tiny ...
"""

from __future__ import annotations

import sys

from metastone.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    """One parser, one error handler: the CLI's."""
    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
