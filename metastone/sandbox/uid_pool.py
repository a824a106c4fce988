"""Sandbox uids: a pool of unprivileged uids, each handed out only while no process owns it.

When the grader runs as root, every sandboxed program runs as its own uid (``SandboxConfig.uid``
downwards). A uid is free when no ``/proc`` entry belongs to it: zombies count, because they still
use the uid's ``RLIMIT_NPROC`` budget until the machine's init reaps them (seconds, in containers
whose init polls), so a killed fork bomb never starves the next program. Uids that other software
uses (e.g. ``nobody``) are simply skipped while those processes live. The pool is per process:
two grading processes on one machine should use different ``uid`` ranges.
"""

from __future__ import annotations

import collections
import logging
import os
import shutil
import subprocess
import threading
import time
from typing import Sequence

logger = logging.getLogger(__name__)

_UID_WAIT_S = 10.0
_KILL = shutil.which("kill")


class UidPool:
    """Hands out sandbox uids that no process owns (zombies included), least recently used first."""

    def __init__(self, uids: Sequence[int]):
        self._free = collections.deque(uids)
        self._cond = threading.Condition()

    def acquire(self) -> int:
        deadline = time.monotonic() + _UID_WAIT_S
        with self._cond:
            while True:
                if self._free:
                    busy = busy_uids()
                    for uid in self._free:
                        if uid not in busy:
                            self._free.remove(uid)
                            return uid
                if time.monotonic() > deadline and self._free:
                    uid = self._free.popleft()
                    logger.warning("every free sandbox uid still owns processes after %.0f s; using %d anyway "
                                   "(raise SandboxConfig.uid_pool_size)", _UID_WAIT_S, uid)
                    return uid
                self._cond.wait(timeout=0.05)

    def release(self, uid: int) -> None:
        with self._cond:
            self._free.append(uid)
            self._cond.notify()


_UID_POOLS: dict[tuple[int, int], UidPool] = {}
_UID_POOLS_LOCK = threading.Lock()


def uid_pool(first: int, size: int) -> UidPool:
    """The process-wide pool of uids ``first, first-1, ..., first-size+1``."""
    with _UID_POOLS_LOCK:
        key = (first, size)
        if key not in _UID_POOLS:
            _UID_POOLS[key] = UidPool(range(first, first - size, -1))
        return _UID_POOLS[key]


def busy_uids() -> set[int]:
    """Owners of every /proc/<pid> entry (zombies included: they still count for RLIMIT_NPROC)."""
    owners = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                owners.add(os.stat(f"/proc/{name}").st_uid)
            except OSError:
                pass
    return owners


def uid_processes(uid: int) -> list[int]:
    """Pids whose /proc entry belongs to ``uid`` (zombies included: they still count for NPROC)."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    pids.append(int(name))
            except OSError:
                pass
    return pids


def kill_uid_processes(uid: int) -> None:
    """Kill every process of ``uid`` (the rlimits backend has no pid namespace to do it).

    ``kill -KILL -1`` run as the sandbox uid reaches only that uid's processes.
    """
    if _KILL is None or not uid_processes(uid):
        return
    try:
        subprocess.run([_KILL, "-KILL", "-1"], user=uid, group=uid, extra_groups=[], env={},
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("could not kill leftovers of uid %d: %s", uid, exc)
