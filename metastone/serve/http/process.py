"""A service started as users start it: ``metastone serve-score|serve-policy ... --port P`` in its own
process group on loopback, ready once ``/health`` answers 200; then killed, restarted on the same port,
or stopped, and its memory read (RSS of the whole process tree: a vLLM service's API server, engine and
worker). What the tests and the service benchmarks (``benchmarks/fuzz_services.py``,
``benchmarks/load_services.py``) stand on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from metastone.devices import free_port


class ServiceProcess:
    """``metastone <args> --port P``; the log goes to ``log`` (a path or an open file)."""

    def __init__(self, args: list[str], log, *, env: dict | None = None, ready_timeout: float = 240.0, wait: bool = True):
        """``wait=False``: return once started; ``ready()`` waits for health (start several side by side)."""
        self.args, self.env, self.ready_timeout = list(args), env, ready_timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log if hasattr(log, "write") else open(log, "w+")
        self._start(wait)

    def _start(self, wait: bool) -> None:
        script = Path(sys.executable).with_name("metastone")  # the console script beside this Python
        exe = [str(script)] if script.exists() else [sys.executable, "-m", "metastone"]  # a checkout on PYTHONPATH
        self.proc = subprocess.Popen([*exe, *self.args, "--port", str(self.port)], stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "HF_HUB_OFFLINE": "1", **(self.env or {})}, start_new_session=True)
        if wait:
            self.ready()

    def ready(self) -> None:
        """Wait until ``/health`` answers 200; the log's tail in the error if the process exits or time runs out."""
        import httpx

        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.args[0]} exited early ({self.proc.returncode}):\n{self.tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.args[0]} not healthy after {self.ready_timeout:.0f}s:\n{self.tail()}")

    def tail(self, chars: int = 4000) -> str:
        if self.log.closed:
            return ""
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-chars:]

    def rss_mb(self) -> float:
        """Resident memory of the service's process tree, MiB (nan once it is gone)."""
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return float("nan")
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total / 2**20

    def kill(self) -> None:
        """SIGKILL the whole process group (a vLLM service's engine processes too), as a crash would."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def restart(self, wait: bool = True) -> None:
        """Start again on the same port (after ``kill``)."""
        self._start(wait)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if not self.log.closed:
            self.log.close()
