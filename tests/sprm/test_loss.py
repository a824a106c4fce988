"""SPR loss against hand-computed values (MetaStone-S1 Eq. 6 with the original code's weights)."""

import math

import pytest
import torch

from metastone.sprm import OUTCOME_INVALID, map_invalid_outcome, spr_loss


def softplus(x):
    return math.log1p(math.exp(x))


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


LOGITS = [[2.0, -1.0, 0.5, 9.0], [-1.5, -0.2, 0.0, -9.0]]
MASK = [[1, 1, 1, 0], [1, 1, 1, 0]]
OUTCOME = [1.0, 0.0]


def make(logits=LOGITS, mask=MASK, outcome=OUTCOME):
    return (
        torch.tensor(logits, requires_grad=True),
        torch.tensor(outcome),
        torch.tensor(mask, dtype=torch.bool),
    )


def test_hand_computed_loss_and_metrics():
    logits, outcome, mask = make()
    loss, m = spr_loss(logits, outcome, mask)
    # kept: correct trajectory steps with logit > 0 (2.0, 0.5); wrong trajectory steps with logit < 0 (-1.5, -0.2).
    # -1.0 disagrees with y=1, 0.0 agrees with neither; position 3 is not a step.
    n_pos, n_neg = 2, 2
    pos_c, neg_c = n_pos + 1, n_neg + 1
    w_pos, w_neg = 1.5 * neg_c / (pos_c + neg_c), pos_c / (pos_c + neg_c)
    bce_pos = softplus(-2.0) + softplus(-0.5)  # BCE(x, 1) = softplus(-x)
    bce_neg = softplus(-1.5) + softplus(-0.2)  # BCE(x, 0) = softplus(x)
    expected = (w_pos * bce_pos + w_neg * bce_neg) / (w_pos * n_pos + w_neg * n_neg)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert m["sprm/loss"] == pytest.approx(expected, rel=1e-6)
    correct = (sigmoid(2.0) * sigmoid(-1.0) * sigmoid(0.5)) ** (1 / 3)
    wrong = (sigmoid(-1.5) * sigmoid(-0.2) * 0.5) ** (1 / 3)
    assert m["sprm/correct_score"] == pytest.approx(correct, rel=1e-6)
    assert m["sprm/wrong_score"] == pytest.approx(wrong, rel=1e-6)
    assert m["sprm/score_gap"] == pytest.approx(correct - wrong, rel=1e-6)
    assert m["sprm/kept_step_frac"] == pytest.approx(4 / 6)
    assert (m["sprm/num_pos"], m["sprm/num_neg"], m["sprm/num_steps"]) == (2, 2, 6)


def test_weights_without_smoothing_and_pos_weight():
    logits, outcome, mask = make(logits=[[2.0, 1.0, -3.0, 0.0], [-1.5, 0.3, 0.0, 0.0]])
    loss, _ = spr_loss(logits, outcome, mask, pos_weight=2.0, count_smoothing=0.0)
    n_pos, n_neg = 2, 1
    w_pos, w_neg = 2.0 * n_neg / 3, n_pos / 3
    expected = (w_pos * (softplus(-2.0) + softplus(-1.0)) + w_neg * softplus(-1.5)) / (w_pos * n_pos + w_neg * n_neg)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_gradient_only_at_kept_steps():
    logits, outcome, mask = make()
    loss, _ = spr_loss(logits, outcome, mask)
    loss.backward()
    kept = torch.tensor([[1, 0, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    assert (logits.grad[~kept] == 0).all()
    assert (logits.grad[kept] != 0).all()
    # pushing towards the label: negative gradient for y=1 (raise the logit), positive for y=0
    assert (logits.grad[0, kept[0]] < 0).all() and (logits.grad[1, kept[1]] > 0).all()


def test_invalid_outcome_both_ways_by_hand():
    # correct, wrong, and an invalid trajectory (e.g. truncated) with steps 5.0, -2.0, -0.5
    logits, outcome, mask = make(
        logits=LOGITS + [[5.0, -2.0, -0.5, 0.0]], mask=MASK + [[1, 1, 1, 0]], outcome=OUTCOME + [OUTCOME_INVALID]
    )
    bce_pos = softplus(-2.0) + softplus(-0.5)
    # exclude: the invalid trajectory adds nothing. kept: 2 pos, 2 neg; counts 3 / 3.
    w_pos, w_neg = 1.5 * 3 / 6, 3 / 6
    exclude = (w_pos * bce_pos + w_neg * (softplus(-1.5) + softplus(-0.2))) / (w_pos * 2 + w_neg * 2)
    assert exclude == pytest.approx(0.340211928, rel=1e-8)
    loss, m = spr_loss(logits, map_invalid_outcome(outcome, "exclude"), mask)
    assert loss.item() == pytest.approx(exclude, rel=1e-6)
    assert (m["sprm/num_correct"], m["sprm/num_wrong"], m["sprm/num_neg"]) == (1, 1, 2)
    # negative (the original): it is a wrong trajectory; 5.0 disagrees, -2.0 and -0.5 are kept negatives.
    # kept: 2 pos, 4 neg; counts 3 / 5: w_pos = 1.5 * 5/8, w_neg = 3/8.
    w_pos, w_neg = 1.5 * 5 / 8, 3 / 8
    bce_neg = softplus(-1.5) + softplus(-0.2) + softplus(-2.0) + softplus(-0.5)
    negative = (w_pos * bce_pos + w_neg * bce_neg) / (w_pos * 2 + w_neg * 4)
    assert negative == pytest.approx(0.322563292, rel=1e-8)
    assert map_invalid_outcome(outcome).tolist() == [1.0, 0.0, 0.0]  # the default is "negative"
    loss, m = spr_loss(logits, map_invalid_outcome(outcome, "negative"), mask)
    assert loss.item() == pytest.approx(negative, rel=1e-6)
    assert (m["sprm/num_correct"], m["sprm/num_wrong"], m["sprm/num_neg"]) == (1, 2, 4)
    with pytest.raises(ValueError, match="negative, exclude"):
        map_invalid_outcome(outcome, "drop")


def test_invalid_trajectories_are_excluded():
    base, _ = spr_loss(*make())
    logits, outcome, mask = make(
        logits=LOGITS + [[5.0, 5.0, -5.0, 0.0]], mask=MASK + [[1, 1, 1, 1]], outcome=OUTCOME + [OUTCOME_INVALID]
    )
    loss, m = spr_loss(logits, outcome, mask)
    assert loss.item() == pytest.approx(base.item(), rel=1e-7)
    assert m["sprm/num_steps"] == 6 and m["sprm/num_correct"] == 1 and m["sprm/num_wrong"] == 1
    loss.backward()
    assert (logits.grad[2] == 0).all()


def test_nothing_kept_gives_zero_loss_with_a_graph():
    logits, outcome, mask = make(logits=[[-1.0, -2.0, -3.0, 0.0], [1.0, 2.0, 0.0, 0.0]])
    loss, m = spr_loss(logits, outcome, mask)
    assert loss.item() == 0.0 and m["sprm/kept_step_frac"] == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_no_steps_at_all():
    logits = torch.zeros(2, 3, requires_grad=True)
    loss, m = spr_loss(logits, torch.tensor([1.0, 0.0]), torch.zeros(2, 3, dtype=torch.bool))
    assert loss.item() == 0.0 and m["sprm/correct_score"] == 0.0 and m["sprm/num_steps"] == 0
    loss.backward()


def test_bad_inputs_name_the_problem():
    logits, outcome, mask = make()
    with pytest.raises(ValueError, match="outcome values"):
        spr_loss(logits, torch.tensor([1.0, 0.1]), mask)
    with pytest.raises(ValueError, match=r"outcome must be \[B\]"):
        spr_loss(logits, torch.tensor([1.0]), mask)
    with pytest.raises(ValueError, match="step_mask"):
        spr_loss(logits, outcome, mask[:, :2])


def test_bool_outcome_accepted():
    logits, _, mask = make()
    a, _ = spr_loss(logits, torch.tensor([True, False]), mask)
    b, _ = spr_loss(logits, torch.tensor(OUTCOME), mask)
    assert a.item() == b.item()


def test_centered_agreement_filters_on_the_mean_logit():
    """agreement="centered": the same loss with the filter's threshold at the mean logit of the steps."""
    shift = 4.0  # a head whose logits all drifted down: the sign test keeps no positive step
    logits, outcome, mask = make(logits=[[x - shift for x in row] for row in LOGITS])
    _, sign = spr_loss(logits, outcome, mask)
    assert sign["sprm/num_pos"] == 0
    loss, centered = spr_loss(logits, outcome, mask, agreement="centered")
    mean = sum(x - shift for row, m in zip(LOGITS, MASK) for x, k in zip(row, m) if k) / 6  # (-0.2/6) - 4
    kept_pos = [x - shift for x in LOGITS[0][:3] if x - shift > mean]  # 2.0 and 0.5 (shifted)
    kept_neg = [x - shift for x in LOGITS[1][:3] if x - shift < mean]  # -1.5 and -0.2 (shifted)
    assert (centered["sprm/num_pos"], centered["sprm/num_neg"]) == (len(kept_pos), len(kept_neg)) == (2, 2)
    pos_c, neg_c = 3, 3
    w_pos, w_neg = 1.5 * neg_c / 6, pos_c / 6
    expected = (w_pos * sum(softplus(-x) for x in kept_pos) + w_neg * sum(softplus(x) for x in kept_neg)) / (
        w_pos * 2 + w_neg * 2)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # without drift the two filters agree on these logits (the mean is close to 0)
    assert spr_loss(*make(), agreement="centered")[1]["sprm/num_pos"] == 2
    with pytest.raises(ValueError, match="agreement='median'"):
        spr_loss(*make(), agreement="median")
