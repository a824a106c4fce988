"""The small-host core binding for vLLM's CPU backend: set only when unset, on small CPU-only hosts."""

import pytest

from metastone.serve import vllm_cpu


@pytest.fixture
def no_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv(vllm_cpu.ENV, raising=False)


def test_small_host_binds_every_usable_core(no_gpu, monkeypatch):
    import os

    monkeypatch.setattr(vllm_cpu, "usable_cpus", lambda: [0, 1])
    assert vllm_cpu.bind_all_cores_on_small_hosts() == "0,1"
    assert os.environ[vllm_cpu.ENV] == "0,1"


def test_user_setting_and_large_hosts_are_left_alone(no_gpu, monkeypatch):
    import os

    monkeypatch.setattr(vllm_cpu, "usable_cpus", lambda: list(range(64)))
    assert vllm_cpu.bind_all_cores_on_small_hosts() is None and vllm_cpu.ENV not in os.environ
    monkeypatch.setattr(vllm_cpu, "usable_cpus", lambda: [0, 1])
    monkeypatch.setenv(vllm_cpu.ENV, "nobind")
    assert vllm_cpu.bind_all_cores_on_small_hosts() is None and os.environ[vllm_cpu.ENV] == "nobind"


def test_cpu_dtype_follows_native_bf16(monkeypatch):
    monkeypatch.setattr(vllm_cpu, "cpu_has_native_bf16", lambda: False)
    assert vllm_cpu.cpu_dtype("auto") == "float32"
    monkeypatch.setattr(vllm_cpu, "cpu_has_native_bf16", lambda: True)
    assert vllm_cpu.cpu_dtype("auto") == "bfloat16"
    assert vllm_cpu.cpu_dtype("float32") == "float32"


def test_native_bf16_reads_the_cpu_flags(monkeypatch, tmp_path):
    import builtins

    real_open = builtins.open
    for flags, want in (("fpu avx2 avx512f", False), ("fpu avx512f avx512_bf16", True), ("fpu amx_bf16", True)):
        info = tmp_path / "cpuinfo"
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(builtins, "open", lambda path, *a, _i=info, **k: real_open(_i if path == "/proc/cpuinfo" else path, *a, **k))
        assert vllm_cpu.cpu_has_native_bf16() is want
        monkeypatch.setattr(builtins, "open", real_open)
