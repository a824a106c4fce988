"""Helpers to run the real services as subprocesses on loopback, started as the README starts them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from metastone.serve.http.process import ServiceProcess


class Server(ServiceProcess):
    """``metastone <args> --port P``, logging to ``$TMPDIR/metastone-server-P.log``; healthy on return unless
    ``wait=False`` (then ``ready()``); ``kill`` + ``restart`` keep the port."""

    def __init__(self, args: list[str], env: dict | None = None, ready_timeout: float = 240.0, wait: bool = True):
        log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"metastone-server-{os.getpid()}-{id(self)}.log", "w+")
        super().__init__(args, log, env=env, ready_timeout=ready_timeout, wait=wait)


@pytest.fixture
def server_factory():
    started: list[Server] = []

    def start(args, **kw) -> Server:
        server = Server(args, **kw)
        started.append(server)
        return server

    yield start
    for s in started:
        s.stop()
