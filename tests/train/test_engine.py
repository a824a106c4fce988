"""verl's real FSDP2 engine (``SPRMEngine`` = ``FSDPEngineWithLMHead`` + SPRM) on a tiny Qwen2 on CPU.

Each test checks one property of the training forward/backward: the head learns, the backbone
receives exactly ``backbone_grad_scale`` times the SPR gradient, and the SPR labels come from the
reward function (invalid trajectories excluded).
"""

from __future__ import annotations

import pytest
import torch

from tests.train.conftest import make_batch, sample_texts

pytestmark = pytest.mark.train


@pytest.fixture(scope="module")
def engine(engine_factory):
    from metastone.train.config import SPRMTrainConfig

    # dropout 0 so that gradients from different runs are comparable
    return engine_factory(SPRMTrainConfig(dropout=0.0, lr=1e-2))


def local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def gradients(engine, data, loss_fn):
    engine.mode = "train"
    engine.optimizer_zero_grad()
    out = engine.forward_backward_batch(data, loss_fn, forward_only=False)
    backbone = torch.cat([local(p.grad).reshape(-1).clone() for p in engine.module.parameters()])
    head = None
    if engine.sprm is not None:
        head = torch.cat([p.grad.reshape(-1).clone() for p in engine.sprm.head.parameters()])
    engine.optimizer_zero_grad()
    return backbone, head, out


def labelled_batch(tokenizer, **kw):
    return make_batch(tokenizer, sample_texts(), labels=[1.0, 0.0, -1.0], **kw)


def test_engine_is_registered_for_sprm_model_type():
    from verl.workers.engine.base import EngineRegistry

    from metastone.train.engine import SPRMEngine

    for backend in ("fsdp", "fsdp2"):
        assert EngineRegistry._engines["sprm_language_model"][backend]["cuda"] is SPRMEngine


def test_head_gets_gradient_and_backbone_gets_exactly_the_scaled_share(engine, qwq_tokenizer, ppo_loss_fn):
    grads = {}
    for scale in (0.0, 1.0, 0.25):
        engine.update_sprm_config(backbone_grad_scale=scale)
        grads[scale] = gradients(engine, labelled_batch(qwq_tokenizer), ppo_loss_fn)
    engine.update_sprm_config(backbone_grad_scale=1e-4)

    # the head learns, whatever the coupling; its gradient does not depend on the coupling
    head0 = grads[0.0][1]
    assert head0.abs().sum() > 0
    for scale in (1.0, 0.25):
        torch.testing.assert_close(grads[scale][1], head0, rtol=1e-5, atol=1e-7)

    # backbone: PPO gradient + scale * full SPR gradient, nothing else
    ppo_only = grads[0.0][0]
    full_spr = grads[1.0][0] - ppo_only
    assert full_spr.norm() > 1e-3 * ppo_only.norm() > 0
    share = grads[0.25][0] - ppo_only
    torch.testing.assert_close(share, 0.25 * full_spr, rtol=1e-3, atol=1e-6 * full_spr.abs().max().item())

    # scale 0 == no SPRM at all for the backbone (features detached)
    sprm = engine.sprm
    engine.sprm = None
    try:
        plain, _, _ = gradients(engine, labelled_batch(qwq_tokenizer), ppo_loss_fn)
    finally:
        engine.sprm = sprm
    torch.testing.assert_close(plain, ppo_only, rtol=0, atol=0)


def test_outcome_labels_flow_from_the_reward_function(engine, qwq_tokenizer, ppo_loss_fn):
    from metastone.train.outcome import labels_from_rollouts
    from metastone.train.reward import compute_score

    texts = sample_texts()
    # what verl stores per trajectory: reward_extra_info from our compute_score
    results = [compute_score("math", response, truth) for _, response, truth in texts]
    extra_fields = [{"reward_extra_info": r} for r in results]
    rewards = torch.tensor([r["score"] for r in results])
    labels = labels_from_rollouts(extra_fields, rewards)
    assert labels.tolist() == [1.0, 0.0, -1.0]  # correct, wrong, truncated (no </think>)

    _, _, out = gradients(engine, make_batch(qwq_tokenizer, texts, labels=labels.tolist()), ppo_loss_fn)
    metrics = {k: v[0] for k, v in out["metrics"].items() if k.startswith("sprm/")}
    assert metrics["sprm/num_correct"] == 1 and metrics["sprm/num_wrong"] == 1
    assert metrics["sprm/invalid_frac"] == pytest.approx(1 / 3)

    # the invalid trajectory adds nothing: same SPR loss without it in the batch
    valid_only = make_batch(qwq_tokenizer, texts[:2], labels=labels.tolist()[:2])
    _, _, out2 = gradients(engine, valid_only, ppo_loss_fn)
    assert out2["metrics"]["sprm/loss"][0] == pytest.approx(metrics["sprm/loss"], rel=1e-5)
    assert out2["metrics"]["sprm/num_steps"][0] == metrics["sprm/num_steps"]


def test_without_explicit_labels_the_reward_decides(engine, qwq_tokenizer, ppo_loss_fn):
    batch = make_batch(qwq_tokenizer, sample_texts(), rm_scores=[1.0, 0.0, 0.0])
    _, _, out = gradients(engine, batch, ppo_loss_fn)
    assert out["metrics"]["sprm/num_correct"][0] == 1 and out["metrics"]["sprm/num_wrong"][0] == 2


def test_micro_batches_average_rather_than_sum(engine, qwq_tokenizer, ppo_loss_fn):
    """Two identical wrong trajectories: one micro-batch of 2 == two micro-batches of 1 (each weighted 1/2)."""
    texts = [sample_texts()[1]] * 2
    kw = dict(labels=[0.0, 0.0], advantages=[0.0, 0.0])
    whole = gradients(engine, make_batch(qwq_tokenizer, texts, **kw), ppo_loss_fn)[1]
    split = gradients(engine, make_batch(qwq_tokenizer, texts, micro_batch_size=1, **kw), ppo_loss_fn)[1]
    assert whole.abs().sum() > 0
    torch.testing.assert_close(split, whole, rtol=1e-4, atol=1e-7)


def test_forward_only_passes_are_the_parents(engine, qwq_tokenizer):
    """old/ref log-prob passes do not run the head: identical outputs with and without SPRM."""
    batch = labelled_batch(qwq_tokenizer)
    engine.mode = "eval"
    with torch.no_grad():
        with_head = engine.forward_backward_batch(batch, None, forward_only=True)
        sprm, engine.sprm = engine.sprm, None
        try:
            without = engine.forward_backward_batch(labelled_batch(qwq_tokenizer), None, forward_only=True)
        finally:
            engine.sprm = sprm
    torch.testing.assert_close(with_head["model_output"]["log_probs"].values(),
                               without["model_output"]["log_probs"].values())
    assert "sprm_scores" not in with_head["model_output"]


def test_hidden_state_is_hf_hidden_states_minus_two(engine, qwq_tokenizer, train_model_dir):
    """The captured feature equals HF's hidden_states[-2] of the same model (what the scorers read)."""
    from transformers import AutoModelForCausalLM

    from metastone.train.engine import feature_layer_module

    ids = torch.tensor([qwq_tokenizer.encode(sample_texts()[0][0] + sample_texts()[0][1], add_special_tokens=False)])
    captured = {}

    def capture(_module, args, _kwargs):
        captured["h"] = args[0]

    layer = feature_layer_module(engine.module, -2)
    handle = layer.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with torch.no_grad():
            engine.module(input_ids=ids, use_cache=False)
    finally:
        handle.remove()
    hf = AutoModelForCausalLM.from_pretrained(train_model_dir, attn_implementation="sdpa").eval()
    with torch.no_grad():
        ref = hf(input_ids=ids, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(captured["h"], ref, rtol=1e-4, atol=1e-5)


def test_setup_refuses_a_head_of_another_size_and_keeps_the_old_one(engine):
    from metastone.train.config import SPRMTrainConfig

    before = engine.sprm
    with pytest.raises(ValueError, match="actor_rollout_ref.sprm.hidden_size=128"):
        engine.setup_sprm(SPRMTrainConfig(hidden_size=128, dropout=0.0))
    assert engine.sprm is before


def test_packed_and_padded_batches_give_the_same_step_scores(engine, qwq_tokenizer, ppo_loss_fn):
    """use_remove_padding packs the micro-batch into one row; the head must index it per sample."""
    from verl.utils import tensordict_utils as tu

    results = {}
    engine.mode = "eval"
    for packed in (False, True):
        data = labelled_batch(qwq_tokenizer)
        tu.assign_non_tensor(data, use_remove_padding=packed, dp_size=1, sp_size=1,
                             batch_num_tokens=int(data["loss_mask"].values().sum()))
        with torch.no_grad():
            _, out = engine.forward_step(data, ppo_loss_fn, forward_only=False)
        results[packed] = out
    for key in ("sprm_scores", "sprm_step_mask"):
        torch.testing.assert_close(results[True]["model_output"][key].values(),
                                   results[False]["model_output"][key].values(), rtol=1e-4, atol=1e-5)
    assert results[True]["metrics"]["sprm/loss"] == pytest.approx(results[False]["metrics"]["sprm/loss"], rel=1e-4)
    assert results[True]["model_output"]["sprm_step_mask"].values().sum() > 0


def test_prompt_groups_give_the_ranking_sums_of_the_mini_batch(engine, qwq_tokenizer, ppo_loss_fn):
    from metastone.train.outcome import GROUP_KEY, rank_sums

    batch = labelled_batch(qwq_tokenizer, micro_batch_size=1)  # labels correct, wrong, invalid
    batch[GROUP_KEY] = torch.tensor([0, 0, 1])
    engine._sprm_ranked = []  # what train_batch does before its forward/backward passes
    gradients(engine, batch, ppo_loss_fn)
    ranked, engine._sprm_ranked = engine._sprm_ranked, None
    groups, scores, labels = (torch.cat(parts) for parts in zip(*ranked))
    assert sorted(groups.tolist()) == [0, 0, 1] and len(ranked) == 3  # one record per micro-batch
    sums = rank_sums(groups, scores, labels)
    assert sums["sprm/rank_pairs"] == 1 and sums["sprm/rank_wins"] in (0.0, 0.5, 1.0)
    assert sums["sprm/correct_n"] == 1 and sums["sprm/wrong_n"] == 1  # the invalid one is left out
    # without the field (a batch from elsewhere) nothing is recorded
    engine._sprm_ranked = []
    gradients(engine, labelled_batch(qwq_tokenizer), ppo_loss_fn)
    assert engine._sprm_ranked == []
    engine._sprm_ranked = None
