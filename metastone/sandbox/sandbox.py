"""Run one untrusted Python program, contained: rlimits, new session, non-root uid, no network, no host files.

Every code test runs in its own process through ``Sandbox.run``. Layers (offline-assets.md, section 3):

1. rlimits: CPU seconds, address space, file size, open files, process count and core size 0,
   set before the program starts;
2. a supervisor (``metastone/sandbox/sandbox_supervisor.py``) starts the program in a new session and
   returns only when the whole process tree is dead: it is a child subreaper (a daemonized
   grandchild comes back to it, never to init), puts the program in its own cgroup v2 where one can
   be made (``cgroup.kill``), and on the program's exit or the wall-clock deadline kills the process
   group, the cgroup and every child it has until none is left; stdout is read through a pipe and
   capped (a flood is killed as "output_limit");
3. when running as root, the program runs as an unprivileged uid taken from a pool
   (``SandboxConfig.uid`` downwards, ``uid_pool_size`` of them): a uid is handed out only while no
   process owns it, so concurrent programs never share a uid, an ``RLIMIT_NPROC`` budget or
   signals, and the zombies of a killed fork bomb (reaped whenever the machine's init gets to
   them) never eat the budget of the next program;
4. an empty environment, ``python -I -S -B`` (no site-packages, no user paths, no .pyc writes), a
   private temp dir as the working directory;
5. a backend, chosen by ``backend="auto"`` in this order, each probed once with a trivial program:

   - ``bwrap`` (bubblewrap; ``apt-get install -y bubblewrap``): new pid, net, ipc, uts and cgroup
     namespaces, only ``/usr``, ``/lib*`` and the interpreter's prefix mounted read-only, a private
     ``/tmp``, the work dir at ``/sandbox``; killing bwrap tears down the whole pid namespace;
   - ``unshare`` (util-linux): new pid and net namespaces (``--kill-child``); as root, ``--setuid``
     to the sandbox uid; the host filesystem stays visible, read-only to that uid except
     world-writable places such as ``/tmp``;
   - ``rlimits``: layers 1-4 only; no network isolation. Without root the program runs as the
     caller's uid and could kill its supervisor, and with it the guarantee that nothing outlives
     the run (``guarantees()["tree_killed"]`` is False then).

``Sandbox.guarantees()`` says which protections the chosen backend gives; the tests skip the
containment checks a backend cannot give (e.g. network under ``rlimits``), never weaken them.
The interpreter must be readable by the sandbox uid: outside bwrap a pyenv Python under ``/root``
is not, and the probe falls back to ``/usr/bin/python3``. Programs get the standard library only.
"""

from __future__ import annotations

import logging
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from metastone.sandbox.uid_pool import kill_uid_processes, uid_pool, uid_processes

logger = logging.getLogger(__name__)

BACKENDS = ("bwrap", "unshare", "rlimits")
STATUSES = ("ok", "error", "timeout", "output_limit", "sandbox_error")
_PYTHON_FLAGS = ("-I", "-S", "-B", "-X", "utf8")
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_WORKDIR_IN_BWRAP = "/sandbox"
_DRAIN_GRACE_S = 0.2
_SUPERVISOR = str(Path(__file__).with_name("sandbox_supervisor.py"))
_SUPERVISOR_STOP_S = 10.0  # how long the supervisor may take to kill and reap the tree after SIGTERM


@dataclass(frozen=True)
class SandboxConfig:
    """Limits and backend of one sandboxed run (defaults suit LiveCodeBench-style tests)."""

    timeout_s: float = 6.0  # wall clock per run; the whole process group is killed after it
    cpu_s: int | None = None  # RLIMIT_CPU; default ceil(timeout_s) + 1
    memory_mb: int = 1024  # RLIMIT_AS
    file_size_mb: int = 16  # RLIMIT_FSIZE: largest file the program may write
    open_files: int = 64  # RLIMIT_NOFILE
    processes: int = 32  # RLIMIT_NPROC for the sandbox uid (threads count too)
    max_stdout_bytes: int = 32 * 2**20  # more stdout than this: killed, status "output_limit"
    max_stderr_bytes: int = 64 * 2**10  # stderr beyond this is dropped (not an error)
    backend: str = "auto"  # auto | bwrap | unshare | rlimits
    uid: int = 65534  # when running as root, programs run as uids uid, uid-1, ... (gid = uid)
    uid_pool_size: int = 64  # how many uids the pool holds (must exceed the number of parallel runs)
    python: str | None = None  # interpreter for programs; default: probe this one, then /usr/bin/python3
    tmp_root: str | None = None  # where private work dirs are made; default: the system temp dir

    def __post_init__(self):
        if not self.timeout_s > 0:
            raise ValueError(f"SandboxConfig.timeout_s must be > 0, got {self.timeout_s}.")
        for name in ("memory_mb", "file_size_mb", "open_files", "processes", "max_stdout_bytes", "max_stderr_bytes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"SandboxConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if self.open_files < 16:
            raise ValueError(f"SandboxConfig.open_files must be >= 16 (Python needs a few), got {self.open_files}.")
        if self.cpu_s is not None and self.cpu_s < 1:
            raise ValueError(f"SandboxConfig.cpu_s must be >= 1 or None, got {self.cpu_s}.")
        if self.backend not in ("auto",) + BACKENDS:
            raise ValueError(f"SandboxConfig.backend must be auto, bwrap, unshare or rlimits; got {self.backend!r}.")
        if self.uid_pool_size < 1 or self.uid - self.uid_pool_size + 1 < 1000 or self.uid >= 2**31:
            raise ValueError(f"SandboxConfig.uid and uid_pool_size must give unprivileged uids (all >= 1000), "
                             f"got uid={self.uid}, uid_pool_size={self.uid_pool_size}.")

    @property
    def cpu_limit(self) -> int:
        return self.cpu_s if self.cpu_s is not None else int(self.timeout_s) + 2


@dataclass
class RunResult:
    """``status``: ok (exit 0), error (other exit or signal), timeout, output_limit, sandbox_error."""

    status: str
    returncode: int | None
    stdout: bytes
    stderr: bytes
    wall_s: float
    backend: str

    @property
    def detail(self) -> str:
        """A one-line explanation (last stderr line, or the signal) for reports."""
        if self.status == "timeout":
            return f"killed after the wall-clock limit ({self.wall_s:.2f} s)"
        if self.status == "output_limit":
            return "killed: stdout exceeded the output limit"
        lines = self.stderr.decode("utf-8", "replace").strip().splitlines()
        if lines:
            return lines[-1][:300]
        if self.returncode is not None and self.returncode < 0:
            return f"killed by {signal.Signals(-self.returncode).name}"
        return f"exit code {self.returncode}"


@dataclass(frozen=True)
class _Resolved:
    backend: str
    python: str
    prefix: str  # interpreter prefix to mount in bwrap
    as_root: bool


_RESOLVED: dict[tuple, _Resolved] = {}
_RESOLVE_LOCK = threading.Lock()


def _python_candidates(configured: str | None) -> list[str]:
    if configured:
        return [configured]
    found = []
    for path in (getattr(sys, "_base_executable", None), sys.executable, "/usr/bin/python3", shutil.which("python3")):
        if path and os.path.exists(path):
            real = os.path.realpath(path)
            if real not in found:
                found.append(real)
    return found


def _prefix_of(python: str) -> str:
    return os.path.dirname(os.path.dirname(os.path.realpath(python)))


class Sandbox:
    """``Sandbox(config).run(files, argv, stdin) -> RunResult``; thread-safe; see the module doc."""

    def __init__(self, config: SandboxConfig | None = None):
        self.config = config or SandboxConfig()

    # ---- backend resolution ----------------------------------------------------------------

    @property
    def resolved(self) -> _Resolved:
        key = (self.config.backend, self.config.python, os.geteuid(), self.config.uid)
        with _RESOLVE_LOCK:
            if key not in _RESOLVED:
                _RESOLVED[key] = self._resolve()
                r = _RESOLVED[key]
                logger.info("sandbox backend %s, python %s%s", r.backend, r.python,
                            f", uids {self.config.uid}..{self.config.uid - self.config.uid_pool_size + 1}"
                            if r.as_root else "")
            return _RESOLVED[key]

    @property
    def backend(self) -> str:
        return self.resolved.backend

    def _resolve(self) -> _Resolved:
        wanted = BACKENDS if self.config.backend == "auto" else (self.config.backend,)
        as_root = os.geteuid() == 0
        errors = []
        for backend in wanted:
            missing = [tool for tool in self._tools(backend, as_root) if shutil.which(tool) is None]
            if missing:
                errors.append(f"{backend}: {', '.join(missing)} not found")
                continue
            for python in _python_candidates(self.config.python):
                candidate = _Resolved(backend, python, _prefix_of(python), as_root)
                result = self._run(candidate, {"probe.py": "print(12345)\n"}, ["probe.py"], b"")
                if result.status == "ok" and result.stdout.strip() == b"12345":
                    return candidate
                errors.append(f"{backend} with {python}: {result.status}, {result.detail}")
        raise RuntimeError("no working sandbox backend: " + "; ".join(errors)
                           + ". Install bubblewrap (apt-get install -y bubblewrap) or choose another backend.")

    @staticmethod
    def _tools(backend: str, as_root: bool) -> list[str]:
        if backend == "bwrap":
            return ["bwrap", "setpriv"] if as_root else ["bwrap"]
        if backend == "unshare":
            return ["unshare"]
        return []

    def guarantees(self) -> dict:
        """Which protections the resolved backend gives (used by docs, logs and the tests)."""
        r = self.resolved
        isolated = r.backend in ("bwrap", "unshare")
        return {
            "backend": r.backend,
            "python": r.python,
            "network_isolated": isolated,
            "pid_namespace": isolated,
            "uid_dropped": r.as_root,
            "filesystem_hidden": r.backend == "bwrap",
            "caller_files_protected": r.as_root or r.backend == "bwrap",
            "parent_env_hidden": r.as_root or isolated,
            "parent_unkillable": r.as_root or isolated,
            # the supervisor (or a pid namespace) kills every process the program started
            "tree_killed": r.as_root or isolated,
        }

    # ---- running ---------------------------------------------------------------------------

    def run(self, files: Mapping[str, str | bytes], argv: Sequence[str], stdin: str | bytes = b"") -> RunResult:
        """Write ``files`` into a fresh work dir, run ``python <flags> *argv`` there, and clean up.

        Thread-safe: call it from as many threads as programs should run in parallel. Never raises
        for anything the program does; a bad file name raises ``ValueError``.
        """
        for name in files:
            if os.path.isabs(name) or ".." in name.split("/") or not name:
                raise ValueError(f"sandbox file names must be relative paths inside the work dir, got {name!r}.")
        data = stdin.encode("utf-8") if isinstance(stdin, str) else bytes(stdin)
        return self._run(self.resolved, files, argv, data)

    def _run(self, r: _Resolved, files, argv, stdin: bytes) -> RunResult:
        cfg = self.config
        pool = uid_pool(cfg.uid, cfg.uid_pool_size) if r.as_root else None
        uid = pool.acquire() if pool else os.geteuid()
        workdir = tempfile.mkdtemp(prefix="metastone-sbx-", dir=cfg.tmp_root)
        start = time.monotonic()
        try:
            for name, content in files.items():
                path = os.path.join(workdir, name)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(content.encode("utf-8") if isinstance(content, str) else content)
                os.chmod(path, 0o644)
            os.chmod(workdir, 0o700)
            if r.as_root:
                os.chown(workdir, uid, uid)
            spec, cwd = self._command(r, workdir, uid, list(argv))
            cmd = _supervisor_command(spec)
            with tempfile.TemporaryFile() as stdin_file:
                stdin_file.write(stdin)
                stdin_file.seek(0)
                try:
                    proc = subprocess.Popen(cmd, stdin=stdin_file, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            cwd=cwd, env={}, start_new_session=True, close_fds=True)
                except OSError as exc:
                    return RunResult("sandbox_error", None, b"", str(exc).encode(), 0.0, r.backend)
                status, out, err = self._communicate(proc, start)
            if status is None:
                status = "ok" if proc.returncode == 0 else "error"
            return RunResult(status, proc.returncode, out, err, time.monotonic() - start, r.backend)
        finally:
            if pool:
                if r.backend == "rlimits":  # belt and braces: the supervisor already killed the tree
                    kill_uid_processes(uid)
                pool.release(uid)
            _remove_tree(workdir)

    def _command(self, r: _Resolved, workdir: str, uid: int, argv: list[str]) -> tuple[dict, str | None]:
        """The supervisor's spec (command, rlimits, uid, cgroup) and its working directory."""
        cfg = self.config
        python = [r.python, *_PYTHON_FLAGS, *argv]
        spec: dict = {"uid": None, "gid": None, "cgroup": r.as_root}
        limits = {
            "cpu": cfg.cpu_limit, "as": cfg.memory_mb * 2**20, "fsize": cfg.file_size_mb * 2**20,
            "nofile": cfg.open_files, "nproc": cfg.processes, "core": 0,
        }
        if not r.as_root:  # RLIMIT_NPROC counts every process of the caller's own uid too
            limits["nproc"] += len(uid_processes(os.geteuid()))
        spec["rlimits"] = limits
        if r.backend == "bwrap":
            cmd = [shutil.which("bwrap"), "--die-with-parent", "--new-session", "--clearenv"]
            if r.as_root:  # no user namespace: setpriv drops to the real unprivileged uid inside
                cmd += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
            else:
                cmd += ["--unshare-all"]
            for path in _SYSTEM_DIRS:
                if os.path.islink(path):
                    cmd += ["--symlink", os.readlink(path), path]
                elif os.path.isdir(path):
                    cmd += ["--ro-bind", path, path]
            if not any(r.prefix == d or r.prefix.startswith(d + "/") for d in _SYSTEM_DIRS):
                cmd += ["--ro-bind", r.prefix, r.prefix]
            cmd += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp",
                    "--bind", workdir, _WORKDIR_IN_BWRAP, "--chdir", _WORKDIR_IN_BWRAP, "--"]
            if r.as_root:
                cmd += [shutil.which("setpriv"), f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
            return {**spec, "cmd": cmd + python}, None
        if r.backend == "unshare":
            cmd = [shutil.which("unshare"), "--net", "--pid", "--fork", "--kill-child"]
            cmd += [f"--setuid={uid}", f"--setgid={uid}"] if r.as_root else ["--user", "--map-root-user"]
            return {**spec, "cmd": cmd + ["--"] + python}, workdir
        if r.as_root:
            spec.update(uid=uid, gid=uid)
        return {**spec, "cmd": python}, workdir

    def _communicate(self, proc: subprocess.Popen, start: float):
        """Read stdout/stderr until exit or deadline; kill the group; return (status|None, out, err)."""
        cfg = self.config
        deadline = start + cfg.timeout_s
        out, err = bytearray(), bytearray()
        status = None
        sel = selectors.DefaultSelector()
        for stream in (proc.stdout, proc.stderr):
            os.set_blocking(stream.fileno(), False)
            sel.register(stream, selectors.EVENT_READ)
        exit_seen_at = None
        try:
            while sel.get_map():
                now = time.monotonic()
                if exit_seen_at is None and proc.poll() is not None:
                    exit_seen_at = now  # the supervisor has killed the leftovers: the pipes close now
                if exit_seen_at is not None and now - exit_seen_at > _DRAIN_GRACE_S:
                    break
                if now >= deadline:
                    status = "timeout"
                    break
                for key, _ in sel.select(timeout=min(0.05, deadline - now)):
                    try:
                        chunk = os.read(key.fd, 1 << 16)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        sel.unregister(key.fileobj)
                        continue
                    if key.fileobj is proc.stdout:
                        out += chunk
                        if len(out) > cfg.max_stdout_bytes:
                            status = "output_limit"
                            break
                    elif len(err) < cfg.max_stderr_bytes:
                        err += chunk[: cfg.max_stderr_bytes - len(err)]
                if status is not None:
                    break
            if status is None:
                try:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    status = "timeout"
        finally:
            sel.close()
            _stop(proc)
            proc.stdout.close()
            proc.stderr.close()
        return status, bytes(out[: cfg.max_stdout_bytes]), bytes(err)


def _supervisor_command(spec: dict) -> list[str]:
    """``python sandbox_supervisor.py UID GID CGROUP RLIMITS -- CMD...`` (see that module)."""
    ids = ["-" if spec[k] is None else str(spec[k]) for k in ("uid", "gid")]
    limits = ",".join(f"{k}={int(v)}" for k, v in spec["rlimits"].items())
    return [sys.executable, "-I", "-S", "-B", _SUPERVISOR, *ids, "1" if spec["cgroup"] else "0", limits, "--", *spec["cmd"]]


def _stop(proc: subprocess.Popen) -> None:
    """Have the supervisor kill the program's whole tree; return when it has exited (it reaps first)."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=_SUPERVISOR_STOP_S)
        return
    except subprocess.TimeoutExpired:
        logger.error("sandbox supervisor %d did not finish within %.0f s; killing it and its group",
                     proc.pid, _SUPERVISOR_STOP_S)
    for kill in (lambda: os.killpg(proc.pid, signal.SIGKILL), proc.kill):
        try:
            kill()
        except (ProcessLookupError, PermissionError):
            pass
    proc.wait()


def _remove_tree(path: str) -> None:
    def retry(func, failed, _exc):
        try:
            os.chmod(os.path.dirname(failed), 0o700)
            os.chmod(failed, 0o700)
            func(failed)
        except OSError:
            pass

    shutil.rmtree(path, onerror=retry)
    if os.path.exists(path):
        logger.warning("could not remove sandbox work dir %s", path)
