"""The small-host core binding for vLLM's CPU backend: set only when unset, on small CPU-only hosts."""

import pytest

from metastone.serve.vllm import cpu as vllm_cpu


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


# ---- KV-cache sizing -----------------------------------------------------------------------------

GiB = vllm_cpu.GiB


def _model(tmp_path, *, layers=28, kv_heads=2, head_dim=128, max_pos=32768, weight_bytes=3 * GiB, dtype="bfloat16"):
    """A config.json shaped like a 1.5B Qwen2 and a sparse weights file of the given size."""
    import json

    cfg = {"num_hidden_layers": layers, "num_attention_heads": 12, "num_key_value_heads": kv_heads,
           "hidden_size": 12 * head_dim, "max_position_embeddings": max_pos, "dtype": dtype}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with open(tmp_path / "model.safetensors", "wb") as f:
        f.truncate(weight_bytes)
    return tmp_path


def test_kv_bytes_per_token_and_weights(tmp_path):
    model = _model(tmp_path)
    assert vllm_cpu.kv_bytes_per_token(model, "bfloat16") == 2 * 28 * 2 * 128 * 2
    assert vllm_cpu.kv_bytes_per_token(model, "float32") == 2 * 28 * 2 * 128 * 4
    assert vllm_cpu.weight_bytes(model, "auto") == 3 * GiB
    assert vllm_cpu.weight_bytes(model, "float32") == 6 * GiB  # bf16 checkpoint converted to fp32


def test_auto_size_is_bounded_by_need_and_free_memory(tmp_path):
    model = _model(tmp_path)
    one = vllm_cpu.kv_bytes_per_token(model) * 128 * (32768 // 128 + 1)
    # plenty free: 8 full-context sequences would be 7 GiB, capped at 4 GiB
    assert vllm_cpu.kv_cache_bytes(model, free_bytes=64 * GiB) == 4 * GiB
    # short context: at least 1 GiB
    assert vllm_cpu.kv_cache_bytes(model, max_model_len=1024, free_bytes=64 * GiB) == 1 * GiB
    # tight: half of what is left after weights and runtime, but never below one sequence
    free = 3 * GiB + vllm_cpu.RUNTIME_OVERHEAD_BYTES + 3 * GiB
    assert vllm_cpu.kv_cache_bytes(model, free_bytes=free) == max(3 * GiB // 2, one)
    with pytest.raises(ValueError, match="--kv_cache_gib.*--max_model_len"):
        vllm_cpu.kv_cache_bytes(model, free_bytes=3 * GiB + vllm_cpu.RUNTIME_OVERHEAD_BYTES + one // 2)


def test_explicit_size_must_hold_one_sequence_and_fit(tmp_path):
    model = _model(tmp_path)
    assert vllm_cpu.kv_cache_bytes(model, kv_cache_gib=2.5, free_bytes=64 * GiB) == int(2.5 * GiB)
    with pytest.raises(ValueError, match=r"--kv_cache_gib 0.1 holds \d+ tokens.*max_model_len 32768"):
        vllm_cpu.kv_cache_bytes(model, kv_cache_gib=0.1, free_bytes=64 * GiB)
    with pytest.raises(ValueError, match=r"needs 10.00 GiB \(--kv_cache_gib 10.*free now.*Lower --kv_cache_gib"):
        vllm_cpu.kv_cache_bytes(model, kv_cache_gib=10, free_bytes=12 * GiB)


def test_parse_flag_and_engine_kwargs(tmp_path, monkeypatch, no_gpu):
    assert vllm_cpu.parse_kv_cache_gib("auto") is None and vllm_cpu.parse_kv_cache_gib("1.5") == 1.5
    for bad in ("0", "-1", "lots", "inf", "nan"):
        with pytest.raises(ValueError, match="--kv_cache_gib"):
            vllm_cpu.parse_kv_cache_gib(bad)
    model = _model(tmp_path, weight_bytes=1024)
    monkeypatch.delenv(vllm_cpu.KV_CACHE_ENV, raising=False)
    monkeypatch.setattr(vllm_cpu, "free_memory_bytes", lambda: 16 * GiB)
    assert vllm_cpu.cpu_memory_kwargs(model, kv_cache_gib=2) == {"kv_cache_memory_bytes": 2 * GiB}
    monkeypatch.setenv(vllm_cpu.KV_CACHE_ENV, "3")  # vLLM's own variable wins: we pass nothing
    assert vllm_cpu.cpu_memory_kwargs(model, kv_cache_gib=2) == {}


def test_free_memory_reads_this_host():
    from metastone import devices

    free = devices.free_memory_bytes()
    assert 0 < free <= devices._meminfo("/proc/meminfo")["MemTotal"]


def test_one_builder_gives_every_engine_its_cpu_options(no_gpu, monkeypatch, tmp_path):
    """``serve.vllm_engine.engine_options``: the policy (in-process or served) and the scorer get the CPU KV size
    and blocks; only the policy gets chunked prefill off and our sampling processors; given options win; the
    server gets the same options as flags."""
    import json

    from metastone.serve.vllm import engine as vllm_engine
    from metastone.serve.vllm.cpu_sampling import PROCESSORS

    monkeypatch.setattr(vllm_cpu, "usable_cpus", lambda: [0, 1])
    monkeypatch.setattr(vllm_cpu, "free_memory_bytes", lambda: 16 * GiB)
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                                                   "num_key_value_heads": 1, "vocab_size": 100, "torch_dtype": "float32"}))
    policy = vllm_engine.engine_options(model, role="policy", dtype="float32", kv_cache_gib=1, max_model_len=512)
    assert policy["kv_cache_memory_bytes"] == GiB and policy["block_size"] == vllm_cpu.CPU_BLOCK_SIZE
    assert policy["enable_chunked_prefill"] is False and policy["max_num_batched_tokens"] == 2048
    assert policy["logits_processors"] == list(PROCESSORS) and vllm_engine.uses_cpu_sampling(policy)
    scorer = vllm_engine.engine_options(model, role="scorer", dtype="float32", kv_cache_gib=1, prefix_blocks=False)
    assert scorer == {"kv_cache_memory_bytes": GiB}
    plain = vllm_engine.engine_options(model, role="policy", kv_cache_gib=1, cpu_sampling=False, chunked_prefill="on",
                                       block_size=16, max_model_len=None)
    assert plain == {"kv_cache_memory_bytes": GiB, "block_size": 16} and not vllm_engine.uses_cpu_sampling(plain)
    cmd = vllm_engine.server_command("py", model, 8001, {"dtype": "float32", **policy, "enforce_eager": True})
    assert cmd[:3] == ["py", "-m", "vllm.entrypoints.openai.api_server"] and "--enforce-eager" in cmd
    assert "--no-enable-chunked-prefill" in cmd and cmd[cmd.index("--logits-processors") + 1:][:2] == list(PROCESSORS)
    assert cmd[cmd.index("--kv-cache-memory-bytes") + 1] == str(GiB) and cmd[cmd.index("--port") + 1] == "8001"
    with pytest.raises(ValueError, match="role must be one of"):
        vllm_engine.engine_options(model, role="judge")


def test_cpu_engines_get_blocks_small_enough_to_share_a_prompt(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert vllm_cpu.cpu_block_kwargs() == {"block_size": vllm_cpu.CPU_BLOCK_SIZE} and vllm_cpu.CPU_BLOCK_SIZE == 32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert vllm_cpu.cpu_block_kwargs() == {}  # vLLM's GPU default (16 tokens) is kept
