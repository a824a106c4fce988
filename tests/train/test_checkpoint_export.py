"""Train steps, verl FSDP2 checkpoints with the head, and the HF export the scorers load.

One engine for the module (single-process FSDP2 over gloo on CPU): a training step moves head and
backbone; save -> more training -> load restores head, head optimizer, head schedule and backbone
exactly; ``metastone.export`` of a checkpoint gives a folder whose ``HFScorer`` scores equal the
in-training head's.
"""

from __future__ import annotations

import copy

import pytest
import torch

from tests.train.conftest import make_batch, sample_texts, training_worker

pytestmark = pytest.mark.train


def local(t):
    return t.to_local() if hasattr(t, "to_local") else t


@pytest.fixture(scope="module")
def engine(engine_factory):
    from metastone.train.config import SPRMTrainConfig

    return engine_factory(SPRMTrainConfig(dropout=0.0, lr=1e-2, lr_warmup_steps=2), lr=1e-3)


def batch(tokenizer):
    return make_batch(tokenizer, sample_texts(), labels=[1.0, 0.0, -1.0])


def train_step(engine, data, loss_fn):
    with engine.train_mode():
        out = engine.train_batch(data, loss_fn)
    engine.lr_scheduler_step()
    return out


def snapshot(engine) -> dict:
    return {
        "head": {k: v.clone() for k, v in engine.sprm.head.state_dict().items()},
        "head_optim": copy.deepcopy(engine.sprm.optimizer.state_dict()),
        "head_sched": copy.deepcopy(engine.sprm.scheduler.state_dict()),
        "backbone": {k: local(v).clone() for k, v in engine.module.state_dict().items()},
        "optim_steps": engine.lr_scheduler.state_dict()["last_epoch"],
    }


def assert_same(a, b, path="state"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), path
    else:
        assert a == b, path


def test_train_step_moves_head_and_backbone(engine, qwq_tokenizer, ppo_loss_fn):
    before = snapshot(engine)
    assert engine.sprm.current_lr() == pytest.approx(5e-3)  # warmup step 1 of 2
    out = train_step(engine, batch(qwq_tokenizer), ppo_loss_fn)
    metrics = out["metrics"]
    assert metrics["sprm/head_grad_norm"][0] > 0 and metrics["sprm/lr"] == [pytest.approx(5e-3)]
    assert "sprm/loss" in metrics and "actor/pg_loss" in metrics
    after = snapshot(engine)
    assert all(not torch.equal(before["head"][k], after["head"][k]) for k in after["head"])
    moved = [k for k in after["backbone"] if not torch.equal(before["backbone"][k], after["backbone"][k])]
    assert moved, "the backbone did not move"
    assert engine.sprm.current_lr() == pytest.approx(1e-2)  # warmup done


def test_checkpoint_round_trip_restores_head_optimizer_and_schedule(engine, qwq_tokenizer, ppo_loss_fn, tmp_path):
    from metastone.train.head_runtime import STATE_FILE

    ckpt = tmp_path / "global_step_1" / "actor"
    engine.save_checkpoint(str(ckpt), global_step=1)
    for name in ("sprm_head.safetensors", "sprm_config.json", STATE_FILE, "model_world_size_1_rank_0.pt",
                 "optim_world_size_1_rank_0.pt", "fsdp_config.json"):
        assert (ckpt / name).is_file(), name
    saved = snapshot(engine)
    train_step(engine, batch(qwq_tokenizer), ppo_loss_fn)
    assert not torch.equal(saved["head"]["0.weight"], engine.sprm.head[0].weight)
    engine.load_checkpoint(str(ckpt), del_local_after_load=False)
    assert_same(saved, snapshot(engine))


def test_verls_training_worker_loop_drives_the_engine(engine, qwq_tokenizer, ppo_loss_fn, monkeypatch):
    """verl's own TrainingWorker.train_mini_batch (mini-batches, metrics gathering) around our engine."""
    from verl.utils import tensordict_utils as tu

    worker = training_worker(engine, ppo_loss_fn, monkeypatch)
    data = batch(qwq_tokenizer)
    tu.assign_non_tensor(data, mini_batch_size=3, epochs=1, seed=1, dataloader_kwargs={"shuffle": False})
    head_before = engine.sprm.head[0].weight.clone()
    out = worker.train_mini_batch(data)
    metrics = tu.get(out, "metrics")
    assert not torch.equal(head_before, engine.sprm.head[0].weight)
    for key in ("sprm/loss", "sprm/score_gap", "sprm/kept_step_frac", "sprm/head_grad_norm", "sprm/lr",
                "sprm/invalid_frac", "actor/pg_loss", "grad_norm"):
        assert key in metrics, key
    assert metrics["sprm/invalid_frac"] == [pytest.approx(1 / 3)]


def test_resume_refuses_a_checkpoint_without_a_head(engine, tmp_path):
    with pytest.raises(ValueError, match="no sprm_head.safetensors"):
        engine.sprm.load(tmp_path, ["model"])


def test_export_gives_a_folder_whose_scores_equal_the_in_training_head(
    engine, qwq_tokenizer, ppo_loss_fn, tmp_path
):
    from verl.utils import tensordict_utils as tu

    from metastone.cli import main as cli_main
    from metastone.serve.hf.scorer import HFScorer
    from metastone.sprm import load_head

    # verl's merger writes bf16: make the trained backbone bf16-exact so the export is lossless
    with torch.no_grad():
        for p in engine.module.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
    ckpt = tmp_path / "global_step_2" / "actor"
    engine.save_checkpoint(str(ckpt), global_step=2)
    out = tmp_path / "export"
    assert cli_main(["export", "merge", "--backend", "fsdp", "--local_dir", str(ckpt), "--target_dir", str(out)]) == 0
    for name in ("config.json", "score_module.pt", "sprm_head.safetensors", "sprm_config.json"):
        assert (out / name).is_file(), name
    head, _ = load_head(out / "score_module.pt")
    for key, value in engine.sprm.head.state_dict().items():
        torch.testing.assert_close(head.state_dict()[key], value, rtol=0, atol=0)

    # in-training scores: the engine's own training forward, head in eval mode
    data = batch(qwq_tokenizer)
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=int(data["loss_mask"].values().sum()), sp_size=1)
    engine.mode = "eval"
    with torch.no_grad():
        _, result = engine.forward_step(data, ppo_loss_fn, forward_only=False)
    scores = result["model_output"]["sprm_scores"].unbind()
    masks = result["model_output"]["sprm_step_mask"].unbind()

    texts = sample_texts()
    prompts = [qwq_tokenizer.encode(p, add_special_tokens=False) for p, _, _ in texts]
    seqs = [p + qwq_tokenizer.encode(r, add_special_tokens=False) for p, (_, r, _) in zip(prompts, texts)]
    for head_path in (None, out / "score_module.pt"):
        scorer = HFScorer(out, head_path=head_path)
        results = scorer.score_ids(seqs, [len(p) for p in prompts])
        for res, s, m in zip(results, scores, masks):
            positions = m.nonzero().flatten().tolist()
            assert res.positions == positions and positions
            torch.testing.assert_close(torch.tensor(res.step_scores), s[positions], rtol=1e-4, atol=1e-5)


def test_export_explains_a_wrong_folder(tmp_path):
    from metastone.export import export_checkpoint

    with pytest.raises(ValueError, match="fsdp_config.json"):
        export_checkpoint(tmp_path, tmp_path / "out")
