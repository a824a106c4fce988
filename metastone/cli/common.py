"""Small helpers shared by the subcommands."""

from __future__ import annotations

import sys
from pathlib import Path


def read_text_arg(path: str, flag: str) -> str:
    """The UTF-8 text of the file a flag names (``-`` reads standard input), or an error naming the flag."""
    if path == "-":
        return sys.stdin.read()
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{flag} {path}: no such file.")
    return file.read_text(encoding="utf-8")


def add_service_arguments(p) -> None:
    """The flags every HTTP service takes: its load bound and its bearer token."""
    from metastone.serve.http.common import DEFAULT_MAX_IN_FLIGHT

    p.add_argument("--max_in_flight", "--max-in-flight", dest="max_in_flight", type=int, default=DEFAULT_MAX_IN_FLIGHT,
                   help="requests held at once (waiting or running); more are answered 503 with Retry-After "
                        "(default %(default)s)")
    p.add_argument("--api_key", "--api-key", dest="api_key", default=None,
                   help="require 'Authorization: Bearer KEY' (or set METASTONE_API_KEY)")
