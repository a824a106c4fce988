"""A CPU platform for verl 0.9.1, registered through verl's own platform registry (no fork, no patch).

verl asks one object, ``verl.plugin.platform.get_platform()``, for everything device-specific:
the torch device name and module, the collective backend, the Ray resource to reserve. It ships
``nvidia``, ``huawei`` and ``amd`` and falls back to ``nvidia`` when none is found. This module adds
``cpu``; it is selected with ``VERL_PLATFORM=cpu`` (never auto-detected, so a GPU cluster is
unaffected). ``prepare_cpu_run`` (called by ``python -m metastone.train`` when ``trainer.device=cpu``)
sets that variable and makes every Ray process import this module (``VERL_USE_EXTERNAL_MODULES``).

Choices, each the smallest that lets verl's unchanged code run on CPU:

- Ray resource: the logical ``GPU`` resource, one slot per training process. verl's resource pools
  reserve and count ``GPU``; a CPU run starts Ray with ``num_gpus`` = the number of training
  processes (``prepare_cpu_run`` sets ``ray_kwargs.ray_init.num_gpus``). Ray does not need real GPUs
  for a logical count.
- Collective backend: gloo. verl's default backend string would read ``cpu:gloo,cpu:gloo``
  (rejected by torch), so ``SPRMActorRolloutRefWorker`` opens the gloo group itself on this
  platform before verl would (``open_cpu_process_group``).
- Device module: ``torch.cpu`` plus the cache/memory/RNG calls verl makes on ``torch.cuda``
  (no-ops, or the process's RSS for memory reports).
"""

from __future__ import annotations

import contextlib
import os
import types
from typing import Any, Optional

import torch
from verl.plugin.platform import PlatformBase, PlatformRegistry

PLATFORM_NAME = "cpu"


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _mem_get_info(device=None) -> tuple[int, int]:
    """(free, total) bytes of system memory, as ``torch.cuda.mem_get_info`` reports device memory; free is
    ``metastone.devices.free_memory_bytes`` (the one memory probe: MemAvailable, the NUMA node, the cgroup)."""
    from metastone.devices import free_memory_bytes

    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        free = free_memory_bytes()
    except RuntimeError:
        free = total
    return free, total


def _noop(*_args, **_kwargs) -> None:
    return None


def make_device_module() -> types.ModuleType:
    """``torch.cpu`` with the extra ``torch.cuda``-style calls verl makes through ``get_torch_device()``."""
    module = types.ModuleType("metastone_cpu_device")
    for name in ("current_stream", "stream", "Stream", "Event", "StreamContext"):
        if hasattr(torch.cpu, name):
            setattr(module, name, getattr(torch.cpu, name))
    module.is_available = lambda: True
    module.device_count = lambda: 1
    module.current_device = lambda: PLATFORM_NAME
    module.set_device = _noop
    module.synchronize = _noop
    module.empty_cache = _noop
    module.ipc_collect = _noop
    module.set_per_process_memory_fraction = _noop
    module.reset_peak_memory_stats = _noop
    module.manual_seed = torch.manual_seed
    module.manual_seed_all = torch.manual_seed
    module.get_rng_state = lambda device=None: torch.get_rng_state()
    module.set_rng_state = lambda state, device=None: torch.set_rng_state(state)
    module.mem_get_info = _mem_get_info
    module.get_device_name = lambda device=None: "cpu"
    for name in ("memory_allocated", "memory_reserved", "max_memory_allocated", "max_memory_reserved"):
        setattr(module, name, lambda device=None: _rss_bytes())
    if not hasattr(module, "stream"):
        module.stream = lambda _stream=None: contextlib.nullcontext()
    return module


_DEVICE_MODULE = make_device_module()


@PlatformRegistry.register(platform=PLATFORM_NAME)
class PlatformCPU(PlatformBase):
    """verl platform for CPU-only machines (tests, the CPU demo); see the module doc."""

    @property
    def device_name(self) -> str:
        return PLATFORM_NAME

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> types.ModuleType:
        return _DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        # Never auto-detected: a CPU run asks for it with VERL_PLATFORM=cpu.
        return False

    def current_device(self) -> str:
        return PLATFORM_NAME

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: Optional[int] = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[Optional[int], Optional[int]]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    @contextlib.contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def ray_resource_options(self, num_gpus: float) -> dict[str, Any]:
        return {"num_gpus": num_gpus}

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None


def is_cpu_platform() -> bool:
    """True when verl's platform in this process is the CPU one."""
    from verl.plugin.platform import get_platform

    return get_platform().device_name == PLATFORM_NAME


def open_cpu_process_group() -> None:
    """Open the default process group with gloo (verl's own string would name ``cpu`` twice)."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    dist.init_process_group(
        backend="gloo",
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        init_method=os.environ.get("DIST_INIT_METHOD") or None,
    )


def prepare_cpu_run(cfg) -> dict[str, str]:
    """Select the CPU platform here and in every Ray process of a ``trainer.device=cpu`` run.

    Sets ``VERL_PLATFORM=cpu`` and adds this module to ``VERL_USE_EXTERNAL_MODULES`` (verl imports
    those in every process, before anything asks for the platform) here, and returns them for the
    caller to put in the run's Ray runtime env. Gives Ray one logical GPU slot per training process
    unless ``ray_kwargs.ray_init.num_gpus`` says otherwise.

    Also ``OMP_NUM_THREADS`` = this machine's usable cores divided among the training processes
    (unless set): Ray gives an actor without whole CPUs one thread, so the trainer and the rollout
    would each compute on one core. The sync trainer's phases (rollout, log-probs, update) run one
    after another, so each phase gets the cores.
    """
    from omegaconf import open_dict
    from verl.plugin.platform import get_platform, set_platform

    modules = [m for m in os.environ.get("VERL_USE_EXTERNAL_MODULES", "").split(",") if m]
    if __name__ not in modules:
        modules.append(__name__)
    env = {"VERL_PLATFORM": PLATFORM_NAME, "VERL_USE_EXTERNAL_MODULES": ",".join(modules)}
    os.environ.update(env)
    processes = int(cfg.trainer.n_gpus_per_node) * int(cfg.trainer.nnodes)
    if "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // max(1, processes)))
    if get_platform().device_name != PLATFORM_NAME:  # detected before the variable was set
        set_platform(PlatformCPU())
    with open_dict(cfg):
        if cfg.ray_kwargs.ray_init.get("num_gpus") is None:
            cfg.ray_kwargs.ray_init.num_gpus = processes
    if int(cfg.ray_kwargs.ray_init.num_gpus) < processes:
        raise ValueError(
            f"ray_kwargs.ray_init.num_gpus={cfg.ray_kwargs.ray_init.num_gpus} < trainer.n_gpus_per_node x "
            f"trainer.nnodes = {processes}: on CPU each training process takes one logical GPU slot; raise it."
        )
    return env
