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
