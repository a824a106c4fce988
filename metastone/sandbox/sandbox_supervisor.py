"""Sandbox supervisor: start one program, and exit only once every process it started is gone.

``Sandbox`` runs this file by path (``python -I -S -B sandbox_supervisor.py SPEC``, standard library
only) in front of every sandboxed program. It

1. makes itself a child subreaper (``PR_SET_CHILD_SUBREAPER``): a process that leaves the program's
   tree (double fork, ``setsid``: a "daemon") is reparented to the supervisor, never to the
   machine's init, so it can always be found and killed;
2. puts the program in a fresh cgroup v2 when one can be made (root with a writable cgroup2 mount),
   so ``cgroup.kill`` kills the whole tree in one write;
3. forks the program: new session, rlimits, the sandbox uid (when given), then ``exec``;
4. waits for the program to exit, or for ``SIGTERM`` from ``Sandbox`` (deadline, output limit); then
   kills the program's process group, the cgroup and every child it still has, reaps, and repeats
   until it has no child left (``ECHILD``); a pid namespace (bwrap, unshare) is gone by the time its
   init is reaped;
5. exits with the program's status (exit code, or dies by the same signal).

The supervisor gives up its stdin/stdout/stderr once the program has them, so ``Sandbox`` sees
end-of-file exactly when the last process holding them is dead.

Usage: ``sandbox_supervisor.py UID GID CGROUP RLIMITS -- CMD...`` with UID and GID numbers or ``-``
(keep ours), CGROUP ``1`` or ``0``, RLIMITS ``cpu=7,as=536870912,...`` (names of ``_RLIMITS``).
It starts on every sandboxed run, so it imports as little as it can (no ``json``, ``signal``/``enum``).
"""

from __future__ import annotations

import _signal as signal  # the C module: importing ``signal`` would pull in ``enum`` (~10 ms)
import ctypes
import os
import resource
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
_RLIMITS = {"cpu": resource.RLIMIT_CPU, "as": resource.RLIMIT_AS, "fsize": resource.RLIMIT_FSIZE,
            "nofile": resource.RLIMIT_NOFILE, "nproc": resource.RLIMIT_NPROC, "core": resource.RLIMIT_CORE}


class _Stop(Exception):
    """SIGTERM from the caller: kill everything now."""


def _on_term(_signum, _frame):
    raise _Stop


def _cgroup2_mount() -> str | None:
    try:
        with open("/proc/self/mounts", encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and parts[2] == "cgroup2":
                    return parts[1]
    except OSError:
        pass
    return None


def make_cgroup() -> str | None:
    """A new cgroup v2 below our own, with ``cgroup.kill``; None where one cannot be made."""
    mount = _cgroup2_mount()
    if mount is None:
        return None
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            own = next(line.split("::", 1)[1].strip() for line in f if line.startswith("0::"))
    except (OSError, StopIteration):
        return None
    path = os.path.join(mount, own.lstrip("/"), f"metastone-sbx-{os.getpid()}")
    try:
        os.mkdir(path)
    except OSError:
        return None
    if not os.path.exists(os.path.join(path, "cgroup.kill")):  # kernel < 5.14
        _remove_cgroup(path)
        return None
    return path


def _write(path: str, text: str) -> bool:
    try:
        with open(path, "w", encoding="ascii") as f:
            f.write(text)
        return True
    except OSError:
        return False


def _remove_cgroup(path: str) -> None:
    for _ in range(200):  # a task that is still exiting keeps it busy for a moment
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.005)


def _children() -> list[int]:
    """Our live children (the subreaper's: reparented orphans included)."""
    pids = []
    me = os.getpid()
    try:
        for tid in os.listdir(f"/proc/{me}/task"):
            with open(f"/proc/{me}/task/{tid}/children", encoding="ascii") as f:
                pids += [int(p) for p in f.read().split()]
        return pids
    except OSError:  # no CONFIG_PROC_CHILDREN: scan /proc
        pass
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == me:
                        pids.append(int(name))
            except (OSError, ValueError, IndexError):
                pass
    return pids


def sweep(pgid: int, cgroup: str | None) -> None:
    """Kill the program's group, its cgroup and every child we have; reap; repeat until none is left."""
    while True:
        if pgid > 0:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass
        if cgroup:
            _write(os.path.join(cgroup, "cgroup.kill"), "1")
        for pid in _children():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return
        time.sleep(0.002)


def parse_args(argv: list[str]) -> dict:
    uid, gid, cgroup, limits, sep, *cmd = argv[1:]
    if sep != "--" or not cmd:
        raise SystemExit("usage: sandbox_supervisor.py UID GID CGROUP RLIMITS -- CMD...")
    return {"uid": None if uid == "-" else int(uid), "gid": None if gid == "-" else int(gid), "cgroup": cgroup == "1",
            "rlimits": dict((k, int(v)) for k, v in (item.split("=") for item in limits.split(",") if item)),
            "cmd": cmd}


def _start(spec: dict, cgroup: str | None) -> int:
    pid = os.fork()
    if pid:
        return pid
    try:  # the child: only what must happen between fork and exec
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if cgroup and not _write(os.path.join(cgroup, "cgroup.procs"), "0"):
            raise OSError("could not join the sandbox cgroup")
        os.setsid()
        for name, value in spec.get("rlimits", {}).items():
            resource.setrlimit(_RLIMITS[name], (value, value))
        if spec.get("uid") is not None:
            os.setgroups([])
            os.setgid(int(spec["gid"]))
            os.setuid(int(spec["uid"]))
        os.execv(spec["cmd"][0], spec["cmd"])
    except BaseException as exc:  # noqa: BLE001 - reported on the program's stderr
        try:
            os.write(2, f"sandbox supervisor: cannot start the program: {exc}\n".encode())
        finally:
            os._exit(127)
    raise AssertionError("unreachable")


def main(argv: list[str]) -> None:
    spec = parse_args(argv)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        os.write(2, b"sandbox supervisor: PR_SET_CHILD_SUBREAPER failed\n")
        os._exit(126)
    cgroup = make_cgroup() if spec.get("cgroup") else None
    signal.signal(signal.SIGTERM, _on_term)
    status, pid = None, 0
    try:
        pid = _start(spec, cgroup)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # only the program's tree holds the caller's pipes now
            os.dup2(devnull, fd)
        while status is None:
            try:
                wpid, wstatus = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            if wpid == pid:
                status = wstatus
    except _Stop:
        pass
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        sweep(pid, cgroup)
    finally:
        if cgroup:
            _remove_cgroup(cgroup)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if status is not None and os.WIFEXITED(status):
        os._exit(os.WEXITSTATUS(status))
    sig = os.WTERMSIG(status) if status is not None and os.WIFSIGNALED(status) else signal.SIGKILL
    signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
    os.kill(os.getpid(), sig)
    os._exit(128 + int(sig))


if __name__ == "__main__":
    main(sys.argv)
