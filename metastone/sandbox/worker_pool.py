"""A process pool whose every task has its own wall-clock timeout; a worker that overruns is killed.

Why not ``concurrent.futures``: its ``result(timeout)`` stops waiting but leaves the worker running
(a sympy simplification can run for minutes), and there is no public way to kill one worker.
math-verify's own timeout uses ``signal.alarm`` and fails off the main thread (offline-assets.md,
section 3), so the graders call it with timeouts disabled and enforce time here instead.

Each worker is a fresh interpreter (``python -m metastone.sandbox.worker_pool --fd N``) joined to the
parent by a socket pair. Unlike ``multiprocessing``'s spawn, it never re-imports the caller's
``__main__``, so a script without an ``if __name__ == "__main__"`` guard works, and it is safe beside
threads and CUDA (nothing is forked from the parent's state). ``map(fn, items)`` hands one item at a
time to each idle worker; a worker past its deadline is SIGKILLed and replaced, and its item gets a
"timeout" outcome. ``fn`` must be a picklable module-level function. Workers start lazily and are
killed by ``close()``, by garbage collection, or when the parent dies (their socket closes).
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Sequence

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """Result of one item: ``status`` is "ok" (``value`` set), "timeout" or "error" (``error`` set)."""

    status: str
    value: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _serve(conn: Connection) -> None:
    """Worker loop: the first message is the initializer (or None), then (task_id, fn, item) tuples."""
    initializer = conn.recv()
    if initializer is not None:
        initializer()
    conn.send("ready")
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        task_id, fn, item = message
        try:
            reply = (task_id, "ok", fn(item), None)
        except Exception as exc:  # reported to the parent, never raised there
            reply = (task_id, "error", None, f"{type(exc).__name__}: {exc}")
        try:
            conn.send(reply)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            conn.send((task_id, "error", None, f"result not picklable: {exc}"))


class _Worker:
    def __init__(self, initializer):
        parent_sock, child_sock = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "metastone.sandbox.worker_pool", "--fd", str(child_sock.fileno())],
            pass_fds=(child_sock.fileno(),), env=env, stdin=subprocess.DEVNULL)
        child_sock.close()
        self.conn = Connection(parent_sock.detach())
        self.conn.send(initializer)
        self.ready = False
        self.task: int | None = None
        self.deadline = 0.0

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            logger.error("worker %d did not exit after SIGKILL", self.process.pid)
        self.conn.close()


class TimeoutPool:
    """``TimeoutPool(workers, timeout_s).map(fn, items) -> list[Outcome]`` (see module doc).

    ``initializer`` runs once in each new worker (e.g. to import heavy modules before the first
    deadline starts). Calls to ``map`` from several threads are serialised.
    """

    def __init__(self, workers: int | None = None, timeout_s: float = 10.0,
                 initializer: Callable[[], None] | None = None, startup_timeout_s: float = 120.0):
        workers = workers or min(4, os.cpu_count() or 1)
        if workers < 1:
            raise ValueError(f"TimeoutPool: workers must be >= 1, got {workers}.")
        if not timeout_s > 0:
            raise ValueError(f"TimeoutPool: timeout_s must be > 0, got {timeout_s}.")
        self.size = workers
        self.timeout_s = float(timeout_s)
        self.startup_timeout_s = float(startup_timeout_s)
        self._initializer = initializer
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self.timeouts = 0  # total items killed for overrunning, for logging and tests

    def _ensure_workers(self, n: int) -> None:
        for worker in [w for w in self._workers if not w.alive()]:
            worker.kill()
            self._workers.remove(worker)
        while len(self._workers) < min(n, self.size):
            self._workers.append(_Worker(self._initializer))
        for worker in self._workers:
            self._await_ready(worker)

    def _await_ready(self, worker: _Worker) -> None:
        """Wait for a new worker's "ready" (start-up and initializer are not part of any deadline)."""
        if worker.ready:
            return
        if worker.conn.poll(self.startup_timeout_s):
            try:
                worker.ready = worker.conn.recv() == "ready"
            except (EOFError, OSError):
                pass
        if not worker.ready:
            worker.kill()
            self._workers.remove(worker)
            raise RuntimeError(f"TimeoutPool: a worker failed to start (exit code {worker.process.returncode}); "
                               "its stderr above says why (is metastone importable by sys.executable?).")

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], timeout_s: float | None = None) -> list[Outcome]:
        """Apply ``fn`` to every item in the workers; one ``Outcome`` per item, in order."""
        timeout = self.timeout_s if timeout_s is None else float(timeout_s)
        results: list[Outcome | None] = [None] * len(items)
        if not items:
            return []
        with self._lock:
            self._ensure_workers(len(items))
            pending = list(range(len(items)))[::-1]
            busy: dict[int, _Worker] = {}  # task id -> worker
            idle = list(self._workers)
            while pending or busy:
                while pending and idle:
                    worker = idle.pop()
                    task = pending.pop()
                    try:
                        worker.conn.send((task, fn, items[task]))
                    except (BrokenPipeError, OSError):  # died while idle: replace it and retry the item
                        pending.append(task)
                        idle.append(self._replace(worker))
                        continue
                    worker.task, worker.deadline = task, time.monotonic() + timeout
                    busy[task] = worker
                now = time.monotonic()
                next_deadline = min(w.deadline for w in busy.values())
                ready = wait([w.conn for w in busy.values()], timeout=max(0.0, next_deadline - now))
                for worker in list(busy.values()):
                    if worker.conn in ready:
                        try:
                            task, status, value, error = worker.conn.recv()
                        except (EOFError, OSError):  # the worker died (e.g. killed by the OOM killer)
                            task = worker.task
                            results[task] = Outcome("error", error="worker process died")
                            busy.pop(task)
                            idle.append(self._replace(worker))
                            continue
                        results[task] = Outcome(status, value, error)
                        busy.pop(task)
                        worker.task = None
                        idle.append(worker)
                    elif time.monotonic() >= worker.deadline:
                        task = worker.task
                        logger.warning("task %d overran %.1f s; killing its worker", task, timeout)
                        self.timeouts += 1
                        results[task] = Outcome("timeout", error=f"no result within {timeout:g} s")
                        busy.pop(task)
                        idle.append(self._replace(worker))
        return results  # type: ignore[return-value]

    def _replace(self, worker: _Worker) -> _Worker:
        worker.kill()
        self._workers.remove(worker)
        fresh = _Worker(self._initializer)
        self._workers.append(fresh)
        self._await_ready(fresh)
        return fresh

    def close(self) -> None:
        """Stop every worker (idempotent)."""
        with self._lock:
            for worker in self._workers:
                try:
                    worker.conn.send(None)
                except (BrokenPipeError, OSError):
                    pass
            for worker in self._workers:
                try:
                    worker.process.wait(timeout=1)
                except subprocess.TimeoutExpired:
                    pass
                worker.kill()
            self._workers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="TimeoutPool worker (started by the pool, not by hand).")
    parser.add_argument("--fd", type=int, required=True, help="inherited socket file descriptor")
    args = parser.parse_args(argv)
    _serve(Connection(args.fd))


if __name__ == "__main__":
    _main()
