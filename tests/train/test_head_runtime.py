"""``SPRMHeadRuntime``: the replicated head's optimizer, schedule, DP gradient mean and checkpoint files."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

pytestmark = pytest.mark.train


def test_lr_schedule_warmup_then_constant_or_cosine():
    from metastone.train.head_runtime import lr_factor

    assert [lr_factor(s, 2, 10, "constant", 0.0) for s in range(4)] == [0.5, 1.0, 1.0, 1.0]
    cosine = [lr_factor(s, 0, 10, "cosine", 0.1) for s in (0, 5, 10, 20)]
    assert cosine[0] == pytest.approx(1.0) and cosine[1] == pytest.approx(0.55) and cosine[2] == cosine[3] == pytest.approx(0.1)


def test_cosine_without_a_step_count_is_refused():
    from metastone.train.config import SPRMTrainConfig
    from metastone.train.head_runtime import SPRMHeadRuntime

    with pytest.raises(ValueError, match="trainer.total_training_steps"):
        SPRMHeadRuntime(SPRMTrainConfig(lr_scheduler_type="cosine"), 8, device="cpu", total_steps=-1)


def test_non_finite_gradient_skips_the_update():
    from metastone.train.config import SPRMTrainConfig
    from metastone.train.head_runtime import SPRMHeadRuntime

    rt = SPRMHeadRuntime(SPRMTrainConfig(), 8, device="cpu")
    before = rt.head[0].weight.clone()
    rt.head(torch.randn(3, 8)).sum().backward()
    rt.head[0].weight.grad[0, 0] = float("nan")
    rt.step()
    assert torch.equal(before, rt.head[0].weight) and rt.skipped_steps == 1


def test_same_init_on_every_rank_and_global_rng_untouched():
    from metastone.train.config import SPRMTrainConfig
    from metastone.train.head_runtime import SPRMHeadRuntime

    torch.manual_seed(0)
    a = SPRMHeadRuntime(SPRMTrainConfig(), 8, device="cpu")
    probe = torch.rand(1)
    torch.manual_seed(0)
    torch.rand(5)  # a different RNG history
    b = SPRMHeadRuntime(SPRMTrainConfig(), 8, device="cpu")
    torch.manual_seed(0)
    assert torch.equal(a.head[0].weight, b.head[0].weight) and torch.equal(torch.rand(1), probe)


def test_save_load_respects_contents(tmp_path):
    from metastone.sprm import load_head
    from metastone.train.config import SPRMTrainConfig
    from metastone.train.head_runtime import STATE_FILE, SPRMHeadRuntime

    rt = SPRMHeadRuntime(SPRMTrainConfig(dropout=0.0), 8, device="cpu")
    rt.head(torch.randn(4, 8)).sum().backward()
    rt.step()
    rt.scheduler_step()
    assert [p.name for p in rt.save(tmp_path / "m", ["model"])] == ["sprm_head.safetensors", "sprm_config.json"]
    rt.save(tmp_path / "all", ["model", "optimizer", "extra"])
    assert (tmp_path / "all" / STATE_FILE).is_file()
    head, cfg = load_head(tmp_path / "all")  # the scorers' loader reads the training checkpoint's head
    assert torch.equal(head[0].weight, rt.head[0].weight) and cfg.hidden_size == 8
    other = SPRMHeadRuntime(SPRMTrainConfig(dropout=0.0, lr=5.0), 8, device="cpu")
    other.load(tmp_path / "all", ["model", "optimizer", "extra"])
    assert torch.equal(other.head[3].weight, rt.head[3].weight)
    assert other.optimizer.state_dict()["state"][0]["exp_avg"].equal(rt.optimizer.state_dict()["state"][0]["exp_avg"])
    assert other.scheduler.last_epoch == 1
    with pytest.raises(ValueError, match=STATE_FILE):
        other.load(tmp_path / "m", ["optimizer"])


def _dp_worker(rank: int, world: int, port: int, out: str):
    import torch.distributed as dist

    from metastone.train.config import SPRMTrainConfig
    from metastone.train.head_runtime import SPRMHeadRuntime

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(100 + rank)  # different global RNG per rank: the head must still start identical
    rt = SPRMHeadRuntime(SPRMTrainConfig(dropout=0.0, lr=1e-2), 8, device="cpu", dp_group=dist.group.WORLD)
    x = torch.full((2, 8), float(rank + 1))
    if rank == 0:  # rank 1 sees no step at all: its gradient is None and must count as zeros
        rt.head(x).sum().backward()
    rt.step()
    torch.save({k: v.clone() for k, v in rt.head.state_dict().items()}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_replicated_head_steps_on_the_mean_gradient(tmp_path):
    from metastone.train.config import SPRMTrainConfig
    from metastone.train.head_runtime import SPRMHeadRuntime

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_dp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    heads = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    # single-process reference: gradient of rank 0's batch, halved (mean over 2 ranks)
    ref = SPRMHeadRuntime(SPRMTrainConfig(dropout=0.0, lr=1e-2), 8, device="cpu")
    (ref.head(torch.full((2, 8), 1.0)).sum() / 2).backward()
    ref.step()
    for key, value in ref.head.state_dict().items():
        assert torch.equal(heads[0][key], heads[1][key]), key
        torch.testing.assert_close(heads[0][key], value)


def _dp_options_worker(rank: int, world: int, port: int, out: str):
    import torch.distributed as dist

    from metastone.train.config import SPRMTrainConfig
    from metastone.train.head_runtime import SPRMHeadRuntime

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    cfg = SPRMTrainConfig(dropout=0.0, lr=1e-2, standardize_features=True, replay_passes=2, replay_groups_per_update=1,
                          agreement="centered")
    rt = SPRMHeadRuntime(cfg, 8, device="cpu", dp_group=dist.group.WORLD)
    g = torch.Generator().manual_seed(rank)
    # rank 0 holds 3 prompt groups, rank 1 one: rank 1 runs out of replay updates first (empty updates)
    groups = 3 if rank == 0 else 1
    feats = 50.0 + torch.randn(groups * 2 * 3, 8, generator=g)
    rows = torch.arange(groups * 2).repeat_interleave(3)
    outcome = torch.tensor([1.0, 0.0] * groups)
    rt.observe(feats)
    rt.logits(feats).sum().mul(0).backward()  # the inline update's collectives are the engine's; here a no-op step
    rt.step()
    rt.record(feats, rows, outcome, torch.arange(groups).repeat_interleave(2))
    metrics = rt.end_step()
    torch.save({"head": {k: v.clone() for k, v in rt.head.state_dict().items()}, "metrics": metrics,
                "mean": rt.standardizer.mean}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_standardization_and_replay_stay_in_lockstep_over_two_ranks(tmp_path):
    """Statistics all-reduced (identical on both ranks), replay updates padded to the larger buffer (no
    hang), heads identical after the step."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_dp_options_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert torch.equal(r0["mean"], r1["mean"])
    assert r0["metrics"]["sprm/replay_updates"] == r1["metrics"]["sprm/replay_updates"] == 6  # 2 passes x 3 groups
    for key in r0["head"]:
        assert torch.equal(r0["head"][key], r1["head"][key]), key
