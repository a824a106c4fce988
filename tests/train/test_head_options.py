"""The small-scale head options of ``SPRMHeadRuntime``: standardization (folded at save), replay passes,
the validation set; on synthetic step features with a learnable signal (no verl needed)."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.train

D = 16


def synthetic_groups(n_groups: int, drafts: int = 8, seed: int = 0):
    """Per group, ``drafts`` trajectories of 2-5 steps: a common-mode offset plus a direction that is
    larger on steps of right trajectories; about half the trajectories are right."""
    fixed = torch.Generator().manual_seed(123)  # the same feature geometry for every sample seed
    base = 300.0 + 20.0 * torch.randn(D, generator=fixed)
    signal = torch.randn(D, generator=fixed)
    g = torch.Generator().manual_seed(seed)
    out = []
    for q in range(n_groups):
        for _ in range(drafts):
            right = bool(torch.rand(1, generator=g) < 0.5)
            n = int(torch.randint(2, 6, (1,), generator=g))
            feats = base + 3.0 * torch.randn(n, D, generator=g) + (2.0 if right else -2.0) * signal
            out.append((q, feats, 1.0 if right else 0.0))
    return out


def as_batch(trajs):
    feats = torch.cat([f for _, f, _ in trajs])
    rows = torch.cat([torch.full((len(f),), i) for i, (_, f, _) in enumerate(trajs)])
    cols = torch.cat([torch.arange(len(f)) for _, f, _ in trajs])
    labels = torch.tensor([y for _, _, y in trajs])
    groups = torch.tensor([q for q, _, _ in trajs])
    mask = torch.zeros(len(trajs), int(cols.max()) + 1, dtype=torch.bool)
    mask[rows, cols] = True
    return feats, rows, cols, labels, groups, mask


def inline_update(rt, trajs) -> dict:
    """What the engine does for one mini-batch: observe, score, SPR loss, head step, record."""
    from metastone.sprm import spr_loss

    feats, rows, cols, labels, groups, mask = as_batch(trajs)
    rt.zero_grad()
    rt.head.train()
    rt.observe(feats)
    logits = torch.zeros(mask.shape).index_put((rows, cols), rt.logits(feats))
    loss, metrics = spr_loss(logits, labels, mask)
    loss.backward()
    rt.step()
    rt.record(feats, rows, labels, groups)
    return metrics


def write_valset(path, seed=7):
    from metastone.train.head_validation import ValidationSet

    trajs = synthetic_groups(6, seed=seed)
    ValidationSet.from_drafts([f for _, f, _ in trajs], [q for q, _, _ in trajs], [y > 0 for _, _, y in trajs]).save(path)
    return trajs


def runtime(tmp_path=None, **overrides):
    from metastone.train.config import SPRMTrainConfig
    from metastone.train.head_runtime import SPRMHeadRuntime

    torch.manual_seed(0)
    cfg = SPRMTrainConfig(think_tokens=None, **overrides)
    return SPRMHeadRuntime(cfg, D, device="cpu", total_steps=6)


def train(rt, steps=6, groups_per_step=4):
    data = synthetic_groups(steps * groups_per_step)
    per_step = 8 * groups_per_step
    metrics = []
    for s in range(steps):
        step = [(q + 100 * s, f, y) for q, f, y in data[s * per_step:(s + 1) * per_step]]
        inline = inline_update(rt, step)
        metrics.append({**inline, **rt.end_step()})
    return metrics


def test_standardized_replayed_head_learns_and_no_update_drops_every_positive(tmp_path):
    valset = tmp_path / "val.safetensors"
    trajs = write_valset(valset)
    rt = runtime(lr=3e-3, standardize_features=True, replay_passes=3, replay_steps=2, replay_groups_per_update=4,
                 validation_file=str(valset), validation_freq=2)
    metrics = train(rt)
    for m in metrics:
        # >= 4 groups per update: both classes kept in every inline and replay update
        assert m["sprm/num_pos"] > 0 and m["sprm/num_neg"] > 0
        assert m["sprm/replay_zero_pos_updates"] == 0 and m["sprm/replay_updates"] > 0
    # the buffer holds the last replay_steps steps only
    assert metrics[-1]["sprm/replay_buffer"] == 2 * 32
    # validation every 2 steps (and at the last, 6)
    assert ["sprm/val_auroc" in m for m in metrics] == [False, True, False, True, False, True]
    assert metrics[-1]["sprm/val_auroc"] > 0.9 and metrics[-1]["sprm/val_bon"] > metrics[-1]["sprm/val_pass1"]
    assert metrics[-1]["sprm/val_pairs"] > 0
    assert rt.head.training  # validation put it back in training mode


def test_original_settings_do_nothing_extra():
    rt = runtime()
    assert rt.standardizer is None and rt.replay is None
    metrics = train(rt, steps=2)
    assert not any(k.startswith(("sprm/replay", "sprm/val")) for m in metrics for k in m)
    feats = torch.randn(3, D)
    rt.head.eval()
    assert torch.equal(rt.logits(feats), rt.head(feats))


def test_save_writes_the_folded_head_and_resume_restores_every_state(tmp_path):
    from metastone.sprm import load_head
    from metastone.train.head_runtime import STATE_FILE, STATS_FILE

    rt = runtime(lr=1e-3, standardize_features=True, replay_passes=1, replay_steps=2)
    train(rt, steps=2)
    contents = ["model", "optimizer", "extra"]
    rt.save(tmp_path, contents)
    assert (tmp_path / STATS_FILE).is_file() and (tmp_path / STATE_FILE).is_file()
    digest = rt.state_digest()

    # the saved head is an ordinary head on RAW features, equal to the runtime's standardized scoring
    head, _ = load_head(tmp_path)
    x = synthetic_groups(2, seed=5)[0][1]
    rt.head.eval()
    head.eval()
    torch.testing.assert_close(head(x), rt.logits(x), rtol=0, atol=1e-5)

    other = runtime(lr=1e-3, standardize_features=True, replay_passes=1, replay_steps=2)
    other.load(tmp_path, contents)
    assert other.state_digest() == digest and other.steps_done == 2 and len(other.replay) == len(rt.replay)
    # continuing both gives the same head
    torch.manual_seed(1)
    train(rt, steps=1)
    torch.manual_seed(1)
    train(other, steps=1)
    assert other.state_digest() == rt.state_digest()

    # a checkpoint saved without standardization cannot be resumed with it
    plain = runtime()
    plain.save(tmp_path / "plain", contents)
    with pytest.raises(ValueError, match="standardize_features=false"):
        runtime(standardize_features=True).load(tmp_path / "plain", contents)


def test_option_errors_name_the_key(tmp_path):
    from metastone.train.config import SPRMTrainConfig

    for key, value in (("replay_passes", -1), ("replay_steps", 0), ("replay_groups_per_update", 0),
                       ("standardize_steps", 0), ("validation_freq", 0)):
        with pytest.raises(ValueError, match=f"actor_rollout_ref.sprm.{key}={value}"):
            SPRMTrainConfig(**{key: value})
    with pytest.raises(ValueError, match="init_head_path=null"):
        SPRMTrainConfig(standardize_features=True, init_head_path="some/head")
    rt = runtime(validation_file=str(tmp_path / "missing.safetensors"))
    with pytest.raises(FileNotFoundError, match="validation_file"):
        rt.validate()


def test_validation_metrics_match_a_direct_computation(tmp_path):
    """AUROC over within-question pairs and Best-of-K against scores computed by hand."""
    from metastone.train.head_validation import ValidationSet, evaluate_head

    feats = [torch.tensor([[2.0]]), torch.tensor([[1.0]]), torch.tensor([[3.0]]), torch.tensor([[0.5]]), torch.tensor([[5.0]])]
    vs = ValidationSet.from_drafts(feats, [0, 0, 0, 1, 1], [True, False, False, True, False])
    vs = ValidationSet.load(vs.save(tmp_path / "v.safetensors"))
    m = evaluate_head(vs, lambda f: f[:, 0], "geomean")
    # question 0: right 2.0 vs wrong 1.0 (win), 3.0 (loss); question 1: right 0.5 vs wrong 5.0 (loss)
    assert m["sprm/val_pairs"] == 3 and m["sprm/val_auroc"] == pytest.approx(1 / 3)
    assert m["sprm/val_bon"] == 0.0 and m["sprm/val_pass1"] == pytest.approx(0.4)


def test_engine_standardized_head_through_verls_worker_then_export_scores_the_same(
    engine_factory, qwq_tokenizer, ppo_loss_fn, monkeypatch, tmp_path
):
    """verl's worker loop drives the engine with standardization + replay + validation on: the step's
    last mini-batch runs the end-of-step work; the checkpoint's folded head, exported, scores exactly as
    the in-training (standardized) head."""
    from verl.utils import tensordict_utils as tu

    from metastone.cli import main as cli_main
    from metastone.sprm import load_head
    from metastone.train.config import SPRMTrainConfig
    from metastone.train.head_runtime import STATS_FILE
    from metastone.train.head_validation import ValidationSet
    from tests.train.conftest import make_batch, sample_texts, training_worker

    hidden = 64
    g = torch.Generator().manual_seed(0)
    ValidationSet.from_drafts([torch.randn(3, hidden, generator=g) for _ in range(4)], [0, 0, 1, 1],
                              [True, False, True, False]).save(tmp_path / "val.safetensors")
    cfg = SPRMTrainConfig(dropout=0.0, lr=1e-3, standardize_features=True, replay_passes=2,
                          validation_file=str(tmp_path / "val.safetensors"))
    engine = engine_factory(cfg, lr=1e-3)
    worker = training_worker(engine, ppo_loss_fn, monkeypatch)
    data = make_batch(qwq_tokenizer, sample_texts(), labels=[1.0, 0.0, -1.0], micro_batch_size=1)
    data["sprm_group"] = torch.tensor([0, 0, 0])
    tu.assign_non_tensor(data, mini_batch_size=1, epochs=1, seed=1, dataloader_kwargs={"shuffle": False})
    metrics = tu.get(worker.train_mini_batch(data), "metrics")
    # three mini-batches, one end of step: statistics frozen, the two valid trajectories replayed, validated
    assert engine.sprm.steps_done == 1 and engine.sprm.standardizer.frozen
    assert metrics["sprm/replay_updates"] == [2.0] and metrics["sprm/replay_buffer"] == [2.0]
    assert metrics["sprm/val_pairs"] == [2.0] and "sprm/val_auroc" in metrics

    with torch.no_grad():  # verl's merger writes bf16: make the backbone bf16-exact so the export is lossless
        for p in engine.module.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
    ckpt = tmp_path / "global_step_1" / "actor"
    engine.save_checkpoint(str(ckpt), global_step=1)
    assert (ckpt / STATS_FILE).is_file()
    out = tmp_path / "export"
    assert cli_main(["export", "merge", "--backend", "fsdp", "--local_dir", str(ckpt), "--target_dir", str(out)]) == 0
    stats = engine.sprm.standardizer  # raw features as the backbone makes them: around its statistics
    x = stats.mean + stats.std * torch.randn(20, hidden, generator=g)
    engine.sprm.head.eval()
    with torch.no_grad():
        want = engine.sprm.logits(x)
        for name in ("score_module.pt", "sprm_head.safetensors"):
            head, _ = load_head(out / name)
            torch.testing.assert_close(torch.sigmoid(head.eval()(x)), torch.sigmoid(want), rtol=0, atol=1e-5)
            torch.testing.assert_close(head(x), want, rtol=1e-5, atol=1e-5)
    digest = engine.sprm.state_digest()
    engine.load_checkpoint(str(ckpt), del_local_after_load=False)
    assert engine.sprm.state_digest() == digest
