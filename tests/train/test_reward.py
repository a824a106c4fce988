"""The math reward and its explicit invalid label (truncated / no </think> / no box / unparseable)."""

from __future__ import annotations

import asyncio

import pytest
import torch

pytestmark = pytest.mark.train


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{5}.", "5"),
        ("\\boxed{\\frac{1}{2}} and later \\boxed{x^{2}}", "x^{2}"),
        ("\\fbox{7}", "7"),
        ("\\boxed {12}", "12"),
        ("no box here", None),
        ("cut off \\boxed{\\frac{1}{", None),
    ],
)
def test_last_boxed_takes_the_last_balanced_box(text, expected):
    from metastone.train.reward import last_boxed

    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    "response, truncated, label, reason",
    [
        ("<think>steps.\n\n</think>The answer is \\boxed{5}.", False, 1.0, "graded"),
        ("<think>steps.\n\n</think>The answer is \\boxed{\\frac{10}{2}}.", False, 1.0, "graded"),
        ("<think>steps.\n\n</think>The answer is \\boxed{6}.", False, 0.0, "graded"),
        # a box inside the thinking does not count: only the answer after </think> is graded
        ("<think>maybe \\boxed{5}.\n\n</think>The answer is \\boxed{6}.", False, 0.0, "graded"),
        ("<think>maybe \\boxed{5}.\n\n</think>I am not sure.", False, -1.0, "no_boxed_answer"),
        ("<think>still thinking about \\boxed{5}", False, -1.0, "no_think_end"),
        ("<think>steps.\n\n</think>The answer is \\boxed{5}.", True, -1.0, "truncated"),
        ("<think>steps.\n\n</think>The answer is \\boxed{}.", False, -1.0, "no_boxed_answer"),
    ],
)
def test_math_outcome_labels(response, truncated, label, reason):
    from metastone.train.reward import math_outcome

    outcome = math_outcome(response, "5", truncated=truncated)
    assert (outcome.label, outcome.reason) == (label, reason)


@pytest.mark.parametrize(
    "response, label",
    [
        ("<think>steps.\n\n</think>So \\boxed{5}.", 1.0),  # thinking closed: graded
        ("<think>still thinking about \\boxed{5}", -1.0),  # thinking never closed: no answer
        ("So \\boxed{5}.", -1.0),  # no think tags: no answer (the original's reward), graded by the evaluation
    ],
)
def test_reward_uses_the_evaluations_answer_region_strictly(response, label):
    from metastone.eval.extract import answer_region
    from metastone.train import reward

    assert reward.answer_region is answer_region  # one implementation, not a copy
    outcome = reward.math_outcome(response, "5")
    assert outcome.label == label
    assert (outcome.reason == "no_think_end") == (answer_region(response, require_think=True) is None)


def test_ground_truth_forms():
    from metastone.train.reward import math_outcome

    text = "</think>\\boxed{204}"
    assert math_outcome(text, {"target": "204"}).label == 1.0  # verl / DeepScaleR parquet style
    assert math_outcome(text, ["17", "204"]).label == 1.0
    assert math_outcome(text, 204).label == 1.0
    with pytest.raises(ValueError, match="empty ground truth"):
        math_outcome(text, "  ")


def test_compute_score_returns_numbers_only_and_separates_score_from_label():
    from metastone.train.reward import compute_score

    right = compute_score("math", "</think>\\boxed{5}", "5")
    wrong = compute_score("math", "</think>\\boxed{4}", "5")
    cut = compute_score("math", "</think>\\boxed{5}", "5", {"truncated": True})
    assert (right["score"], right["sprm_label"]) == (1.0, 1.0)
    assert (wrong["score"], wrong["sprm_label"]) == (0.0, 0.0)
    assert (cut["score"], cut["sprm_label"], cut["invalid"]) == (0.0, -1.0, 1.0)
    assert compute_score("math", "</think>\\boxed{5}", "5", {"truncated": True}, invalid_score=-0.5)["score"] == -0.5
    assert all(isinstance(v, float) for r in (right, wrong, cut) for v in r.values())
    assert compute_score("math", "\\boxed{5}", "5", think_end=None)["sprm_label"] == 1.0


def test_truncation_comes_from_token_ids_not_text(qwq_tokenizer):
    from metastone.train.reward_manager import is_truncated, stop_token_ids

    stops = stop_token_ids(qwq_tokenizer)
    assert qwq_tokenizer.convert_tokens_to_ids("<|im_end|>") in stops
    body = qwq_tokenizer.encode("</think>\\boxed{5}", add_special_tokens=False)
    end = qwq_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert not is_truncated(body, limit=100, stops=stops)  # shorter than the limit: finished
    assert is_truncated(body, limit=len(body), stops=stops)  # filled the limit without a stop token
    assert not is_truncated(body + [end], limit=len(body) + 1, stops=stops)  # stopped exactly at the limit


def test_reward_manager_grades_a_verl_item(qwq_tokenizer):
    import numpy as np
    from omegaconf import OmegaConf
    from tensordict import TensorDict
    from verl import DataProto

    from metastone.train.reward_manager import SPRMMathRewardManager

    def item(response: str, width: int):
        prompt = qwq_tokenizer.encode("<|im_start|>user\nq<|im_end|>\n", add_special_tokens=False)
        resp = qwq_tokenizer.encode(response, add_special_tokens=False)[:width]
        padded = resp + [0] * (width - len(resp))
        batch = TensorDict({
            "prompts": torch.tensor([prompt]), "responses": torch.tensor([padded]),
            "attention_mask": torch.tensor([[1] * len(prompt) + [1] * len(resp) + [0] * (width - len(resp))]),
        }, batch_size=1)
        return DataProto(batch=batch, non_tensor_batch={
            "data_source": np.array(["math"], dtype=object),
            "reward_model": np.array([{"ground_truth": "5"}], dtype=object),
            "extra_info": np.array([{}], dtype=object),
        })

    config = OmegaConf.create({"actor_rollout_ref": {"rollout": {"response_length": 12}}})
    manager = SPRMMathRewardManager(config, qwq_tokenizer, None)
    done = asyncio.run(manager.run_single(item("<think>a.\n\n</think>\\boxed{5}<|im_end|>", 40)))
    assert done["reward_score"] == 1.0 and done["reward_extra_info"]["sprm_label"] == 1.0
    cut = asyncio.run(manager.run_single(item("<think>a.\n\nb.\n\nc.\n\nd.\n\ne.\n\nf.\n\ng.\n\n", 12)))
    assert cut["reward_extra_info"]["truncated"] == 1.0 and cut["reward_extra_info"]["sprm_label"] == -1.0


@pytest.mark.parametrize(
    "response, truncated, label",
    [
        (" 23 + 45 = 68. The answer is 68.\n\n", False, 1.0),
        (" 23 + 45 = 67. The answer is 67.", False, 0.0),
        (" The answer is 68. The answer is 1.", False, 1.0),  # the first answer, as the evaluation reads it
        (" 23 + 45 = 68.", False, -1.0),  # no answer stated
        (" 23 + 45 = 68. The answer is 68.", True, -1.0),  # cut at the length limit
    ],
)
def test_demo_reward_grades_as_the_evaluation(response, truncated, label):
    from metastone.eval.tasks import Demo, Example
    from metastone.train.reward import demo_compute_score

    out = demo_compute_score("demo", response, "68", {"truncated": truncated})
    assert out["sprm_label"] == label and out["score"] == float(label == 1.0)
    assert out["invalid"] == float(label == -1.0)
    if not truncated:  # the evaluation's own grade agrees
        example = Example("q", "prompt", 68)
        assert Demo([example]).grade(response, example).correct == (label == 1.0)
