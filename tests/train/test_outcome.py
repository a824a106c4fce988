"""Reward -> SPR label plumbing (what SPRMPPOTrainer writes to TransferQueue and the engine reads)."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.train


def test_labels_from_reward_extra_info_with_padding_and_fallback():
    from tensordict import NonTensorData

    from metastone.train.outcome import labels_from_rollouts

    extra = [
        {"reward_extra_info": {"score": 1.0, "sprm_label": 1.0}},
        NonTensorData({"reward_extra_info": {"score": 0.0, "sprm_label": -1.0}}),  # as TransferQueue returns it
        {"reward_extra_info": {"score": 0.0, "sprm_label": 0.0}},
        {"reward_extra_info": {"acc": 1.0}},  # another reward function: falls back to reward > 0.5
        {"reward_extra_info": {"sprm_label": 1.0}},  # synthetic padding sample: always invalid
    ]
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    labels = labels_from_rollouts(extra, rewards, is_padding=[False, False, False, False, True])
    assert labels.tolist() == [1.0, -1.0, 0.0, 1.0, -1.0]


def test_bad_label_is_an_error_naming_the_allowed_values():
    from metastone.train.outcome import labels_from_rollouts

    with pytest.raises(ValueError, match="sprm_label"):
        labels_from_rollouts([{"reward_extra_info": {"sprm_label": 0.1}}], torch.tensor([0.1]))


@pytest.mark.parametrize(
    "mode, labels, negative, excluded",
    [("negative", [1.0, 0.0, 0.0, 0.0, -1.0], 3 / 4, 0.0), ("exclude", [1.0, -1.0, -1.0, 0.0, -1.0], 1 / 4, 2 / 4)],
)
def test_invalid_outcome_option_and_both_counts(mode, labels, negative, excluded):
    from metastone.train.outcome import spr_labels

    graded = [1.0, -1.0, -1.0, 0.0, 1.0]  # the last one is a padding sample
    extra = [{"reward_extra_info": {"sprm_label": v}} for v in graded]
    got, metrics = spr_labels(extra, torch.zeros(5), is_padding=[False] * 4 + [True], invalid_outcome=mode)
    assert got.tolist() == labels
    # graded counts are logged in both modes, over the 4 real trajectories
    assert metrics["sprm/label_correct_frac"] == 1 / 4
    assert metrics["sprm/label_wrong_frac"] == 1 / 4
    assert metrics["sprm/label_invalid_frac"] == 2 / 4
    assert metrics["sprm/label_negative_frac"] == negative
    assert metrics["sprm/label_excluded_frac"] == excluded


def test_outcome_from_batch_prefers_explicit_labels():
    from tensordict import TensorDict

    from metastone.train.outcome import outcome_from_batch

    rm = torch.nested.as_nested_tensor([torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0, 0.0])], layout=torch.jagged)
    data = TensorDict({"rm_scores": rm}, batch_size=[2])
    assert outcome_from_batch(data).tolist() == [1.0, 0.0]
    data["sprm_outcome"] = torch.tensor([-1.0, 0.0])
    assert outcome_from_batch(data).tolist() == [-1.0, 0.0]
    with pytest.raises(ValueError, match="no outcome"):
        outcome_from_batch(TensorDict({}, batch_size=[2]))


def test_rank_sums_count_within_question_pairs_only_with_ties_as_half():
    from metastone.train.outcome import group_ids, rank_sums, step_rank_metrics

    groups = group_ids(["a", "a", "a", "b", "b", "c"])
    assert groups.tolist() == [0, 0, 0, 1, 1, 2]
    scores = torch.tensor([0.9, 0.2, 0.5, 0.4, 0.4, 0.99])
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0])  # c: one wrong, no pair
    sums = rank_sums(groups, scores, labels)
    # a: correct 0.9 beats 0.2 and 0.5 (2 wins / 2 pairs); b: a tie (0.5 / 1); the cross-question 0.99 never counts
    assert sums["sprm/rank_pairs"] == 3 and sums["sprm/rank_wins"] == 2.5
    assert sums["sprm/correct_n"] == 2 and sums["sprm/wrong_n"] == 4
    # invalid labels are skipped
    assert rank_sums(groups, scores, torch.tensor([1.0, -1.0, -1.0, 1.0, 0.0, 0.0]))["sprm/rank_pairs"] == 1
    # two mini-batches, mean-reduced as verl does: the ratio of means is the pooled ratio
    other = rank_sums(torch.tensor([0, 0]), torch.tensor([0.1, 0.3]), torch.tensor([1.0, 0.0]))
    reduced = {f"actor/{k}": (sums[k] + other[k]) / 2 for k in sums}
    out = step_rank_metrics(reduced)
    assert out["sprm/within_q_auroc"] == pytest.approx(2.5 / 4)
    correct = (0.9 + 0.4 + 0.1) / 3
    wrong = (0.2 + 0.5 + 0.4 + 0.99 + 0.3) / 5
    assert out["sprm/step_score_gap"] == pytest.approx(correct - wrong, abs=1e-6)
    assert not any(k.startswith("actor/sprm/rank") or k.endswith("_sum") for k in reduced)  # popped
    assert step_rank_metrics({}) == {}
