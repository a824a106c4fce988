"""Fixtures for the training tests: verl's real FSDP engine on CPU (device lookups patched HERE only).

verl 0.9.1 has no CPU platform: its FSDP engine asks ``get_device_id()``/``get_device_name()`` for
the accelerator. The tests swap those lookups for ``"cpu"`` in the modules that imported them,
start a one-process gloo group, and then build the REAL ``SPRMEngine`` with ``initialize()``
(FSDP2 ``fully_shard`` on a CPU mesh, verl's checkpoint manager, optimizer and scheduler).
"""

from __future__ import annotations

import os
from functools import partial

import pytest
import torch

from metastone.devices import free_port

CPU_PATCHES = {
    "verl.workers.engine.fsdp.transformer_impl": ("get_device_id", "get_device_name", "device_name"),
    "verl.workers.engine.fsdp.utils": ("get_device_name",),
    "verl.workers.engine.base": ("get_device_name",),
    "verl.utils.fsdp_utils": ("get_device_id", "get_device_name"),
    "metastone.train.engine": ("get_device_id", "get_device_name"),
}


@pytest.fixture(scope="session")
def cpu_verl():
    """A one-rank gloo process group and verl's device lookups pointing at the CPU (undone at the end)."""
    import importlib

    import torch.distributed as dist

    mp = pytest.MonkeyPatch()
    for module_name, names in CPU_PATCHES.items():
        module = importlib.import_module(module_name)
        for name in names:
            value = "cpu" if name == "device_name" else (lambda: "cpu")
            mp.setattr(module, name, value)
    ti = importlib.import_module("verl.workers.engine.fsdp.transformer_impl")
    mp.setattr(ti, "log_gpu_memory_usage", lambda *a, **k: None)
    created = False
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ["MASTER_PORT"] = str(free_port())
        dist.init_process_group("gloo", rank=0, world_size=1)
        created = True
    yield
    if created:
        dist.destroy_process_group()
    mp.undo()


def _round_to_bf16(model_dir) -> None:
    """Make the saved weights exactly representable in bf16, so verl's bf16 export is lossless."""
    from safetensors.torch import load_file, save_file

    path = model_dir / "model.safetensors"
    state = load_file(str(path))
    save_file({k: v.to(torch.bfloat16).to(v.dtype).contiguous() for k, v in state.items()}, str(path),
              metadata={"format": "pt"})


@pytest.fixture(scope="session")
def train_model_dir(tmp_path_factory, qwq_tokenizer):
    """Tiny QwQ-flavoured Qwen2 (d=64, 2 layers) with bf16-exact weights and no head."""
    from metastone.assets.tiny import make_tiny_qwen2

    out = make_tiny_qwen2(tmp_path_factory.mktemp("train_tiny"), qwq_tokenizer, head_format="none", seed=3)
    _round_to_bf16(out)
    return out


@pytest.fixture(scope="session")
def actor_config(train_model_dir):
    """verl's FSDPActorConfig as the worker builds it, from our composed hydra config (tiny preset)."""
    from verl.utils.config import omega_conf_to_dataclass

    from metastone.train.launch import compose_config

    cfg = compose_config(["preset=tiny", f"actor_rollout_ref.model.path={train_model_dir}"])
    return omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)


@pytest.fixture(scope="session")
def engine_factory(cpu_verl, train_model_dir, qwq_tokenizer):
    """``build(sprm=SPRMTrainConfig|None, lr=...) -> SPRMEngine``: initialised on CPU, head set up if given."""
    from verl.trainer.config import CheckpointConfig
    from verl.workers.config import FSDPEngineConfig, FSDPOptimizerConfig, HFModelConfig

    from metastone.train.engine import SPRMEngine

    def build(sprm=None, lr: float = 1e-3, total_steps: int = 10):
        model_config = HFModelConfig(
            path=str(train_model_dir), use_remove_padding=False, enable_gradient_checkpointing=False,
            override_config={"attn_implementation": "sdpa"}, model_type="sprm_language_model",
        )
        engine_config = FSDPEngineConfig(
            strategy="fsdp2", use_torch_compile=False, forward_only=False,
            mixed_precision={"param_dtype": "fp32", "reduce_dtype": "fp32", "buffer_dtype": "fp32"},
        )
        optim = FSDPOptimizerConfig(lr=lr, total_training_steps=total_steps, clip_grad=1.0)
        contents = ["model", "optimizer", "extra"]
        ckpt = CheckpointConfig(save_contents=contents, load_contents=contents)
        engine = SPRMEngine(model_config, engine_config, optim, ckpt)
        engine.initialize()
        if sprm is not None:
            engine.setup_sprm(sprm, tokenizer=qwq_tokenizer)
        return engine

    return build


def training_worker(engine, loss_fn, monkeypatch):
    """verl's ``TrainingWorker`` around ``engine`` without Ray (its ``train_mini_batch`` splits a batch into
    mini-batches, marks the step's last one and gathers metrics, as in a run); one rank, gloo."""
    import types

    import torch.distributed as dist
    import verl.workers.engine_workers as ew

    real_all_reduce = dist.all_reduce

    def all_reduce(tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):  # gloo has no AVG; world size is 1
        return real_all_reduce(tensor, op=dist.ReduceOp.SUM if op == dist.ReduceOp.AVG else op, group=group,
                               async_op=async_op)

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    memory = types.SimpleNamespace(max_memory_allocated=lambda: 0, max_memory_reserved=lambda: 0)
    monkeypatch.setattr(ew, "get_torch_device", lambda: memory)
    worker = ew.TrainingWorker.__new__(ew.TrainingWorker)
    worker.engine, worker.loss_fn, worker.device_name, worker.flops_counter = engine, loss_fn, "cpu", None
    worker.engine_config, worker.model_config = engine.engine_config, engine.model_config
    worker.profiler = types.SimpleNamespace(step=lambda: None, check_enable=lambda: False, rank=0)
    return worker


# ------------------------------------------------------------------ batches

STEP = "Let me compute this.\n\nFirst term is 2.\n\nThen add 3.\n\nSo it is 5.\n\n"


def sample_texts():
    """(prompt, response, ground truth) triples: correct, wrong, truncated (no </think>)."""
    prompt = "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n<think>\n"
    return [
        (prompt, STEP + "</think>\nThe answer is \\boxed{5}.<|im_end|>", "5"),
        (prompt, STEP + "Hmm.\n\n</think>\nThe answer is \\boxed{6}.<|im_end|>", "5"),
        (prompt, STEP + "Still thinking.\n\nMore", "5"),
    ]


def make_batch(tokenizer, texts, *, labels=None, rm_scores=None, micro_batch_size=None, advantages=None):
    """A no-padding micro-batch TensorDict shaped like verl's update_actor input (nested fields)."""
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu

    def nested(seqs, dtype):
        return torch.nested.as_nested_tensor([torch.tensor(s, dtype=dtype) for s in seqs], layout=torch.jagged)

    prompts = [tokenizer.encode(p, add_special_tokens=False) for p, _, _ in texts]
    responses = [tokenizer.encode(r, add_special_tokens=False) for _, r, _ in texts]
    full = [p + r for p, r in zip(prompts, responses)]
    n = len(texts)
    adv = advantages if advantages is not None else [1.0 if i % 2 == 0 else -1.0 for i in range(n)]
    scores = rm_scores if rm_scores is not None else [0.0] * n
    fields = {
        "prompts": nested(prompts, torch.long),
        "responses": nested(responses, torch.long),
        "input_ids": nested(full, torch.long),
        "position_ids": nested([list(range(len(f))) for f in full], torch.long),
        "response_mask": nested([[1] * len(r) for r in responses], torch.long),
        "loss_mask": nested([[1] * len(r) for r in responses], torch.long),
        "old_log_probs": nested([[-2.0] * len(r) for r in responses], torch.float32),
        "ref_log_prob": nested([[-2.0] * len(r) for r in responses], torch.float32),
        "advantages": nested([[a] * len(r) for a, r in zip(adv, responses)], torch.float32),
        "rm_scores": nested([[0.0] * (len(r) - 1) + [s] for s, r in zip(scores, responses)], torch.float32),
    }
    if labels is not None:
        fields["sprm_outcome"] = torch.tensor(labels, dtype=torch.float32)
    data = TensorDict(fields, batch_size=[n])
    tu.assign_non_tensor(
        data, temperature=1.0, use_remove_padding=False, use_dynamic_bsz=False, use_fused_kernels=False,
        micro_batch_size_per_gpu=micro_batch_size or n, global_batch_size=n, calculate_entropy=False,
    )
    return data


@pytest.fixture(scope="session")
def ppo_loss_fn(actor_config):
    from verl.workers.utils.losses import ppo_loss

    return partial(ppo_loss, config=actor_config)


@pytest.fixture(scope="session")
def cpu_loop_data(tmp_path_factory, qwq_tokenizer):
    """The CPU loop's inputs, written as docs/train.md "CPU runs" writes them: the tiny reasoner policy and
    one-digit-sum training/validation parquet files (read-only for the runs that use them)."""
    import json
    import subprocess
    import sys

    from metastone.assets.tiny import make_tiny_reasoner, reasoner_problems

    root = tmp_path_factory.mktemp("cpu_loop")
    model = make_tiny_reasoner(root / "model", qwq_tokenizer)
    problems = root / "problems.jsonl"
    problems.write_text("".join(json.dumps(r) + "\n" for r in reasoner_problems(64, seed=1)))
    proc = subprocess.run([sys.executable, "-m", "metastone.data.prepare", "--input", problems, "--output",
                           root / "train.parquet", "--val-output", root / "val.parquet", "--val-size", "8"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"model": model, "train": root / "train.parquet", "val": root / "val.parquet"}
