"""The machine's facts every engine decides by, read in one place: whether there is a CUDA device (and so
which device the HF engines use), the cores this process may run on, the memory free for a new engine and a free loopback port.
Pure Python (torch imported on use): the serving and the training environments both use it."""

from __future__ import annotations

import glob
import os
import socket
from pathlib import Path


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def default_device(device: str | None = None) -> str:
    """The device the HF engines run on: the one asked for, else ``cuda`` when there is one, else ``cpu``."""
    return device or ("cuda" if has_cuda() else "cpu")


def usable_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def _meminfo(path: str, per_node: bool = False) -> dict[str, int]:
    """``/proc/meminfo``-style file -> bytes per key (node files prefix each line with ``Node N``)."""
    out = {}
    with open(path, encoding="ascii") as f:
        for line in f:
            parts = line.split()[2:] if per_node else line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                out[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return out


def _node_available(cpu: int) -> int | None:
    """Memory vLLM's CPU worker counts as available on the NUMA node of ``cpu`` (free + file cache + reclaimable)."""
    nodes = glob.glob(f"/sys/devices/system/cpu/cpu{cpu}/node[0-9]*") or ["node0"]
    node = os.path.basename(nodes[0])
    try:
        info = _meminfo(f"/sys/devices/system/node/{node}/meminfo", per_node=True)
    except OSError:
        return None
    keys = ("MemFree", "Active(file)", "Inactive(file)", "SReclaimable")
    return sum(info.get(k, 0) for k in keys) if "MemFree" in info else None


def _cgroup_room() -> int | None:
    """Memory left under this process's cgroup limit (v2 or v1), None without a limit."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            limit, usage = f"/sys/fs/cgroup{path}/memory.max", f"/sys/fs/cgroup{path}/memory.current"
        elif "memory" in controllers.split(","):
            limit = f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"
            usage = f"/sys/fs/cgroup/memory{path}/memory.usage_in_bytes"
        else:
            continue
        try:
            raw = Path(limit).read_text().strip()
            if raw != "max" and int(raw) < 1 << 60:
                return max(0, int(raw) - int(Path(usage).read_text().strip()))
        except (OSError, ValueError):
            continue
    return None


def free_memory_bytes() -> int:
    """Memory free for a new engine now: the least of MemAvailable, vLLM's node view and the cgroup's room."""
    candidates = []
    try:
        candidates.append(_meminfo("/proc/meminfo")["MemAvailable"])
    except (OSError, KeyError):
        pass
    for value in (_node_available(usable_cpus()[0]), _cgroup_room()):
        if value is not None:
            candidates.append(value)
    if not candidates:
        raise RuntimeError("cannot read free memory (/proc/meminfo); give an explicit KV-cache size")
    return min(candidates)


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
