"""Math outcome reward for GRPO + SPRM, with an explicit INVALID label for the SPR loss.

Every rollout gets two things from one grading:

- ``score`` (the GRPO reward): 1.0 if the final answer is right, else 0.0 (``invalid_score`` for
  truncated / unparseable responses, 0.0 by default);
- ``sprm_label`` (the SPR loss target, ``metastone.sprm`` outcome codes): ``OUTCOME_CORRECT`` (1),
  ``OUTCOME_WRONG`` (0) or ``OUTCOME_INVALID`` (-1). Invalid trajectories are excluded from the SPR
  loss: the step scores of a response that never finished, or whose answer cannot be read, say
  nothing about whether its steps lead to a right answer.

Grading reads only the answer region (``metastone.eval.extract.answer_region`` with
``require_think=True``: the text after the LAST ``</think>``, never the thinking or the prompt; a
response without ``</think>``, think tags or not, has no answer, as in the original release's reward)
and only its LAST ``\\boxed{...}``, verified against the ground truth with math-verify.

Invalid means: truncated at the response-length limit, no ``</think>`` (no answer region), no
``\\boxed{}`` after it, or a box math-verify cannot parse. The label is a separate field; nothing is
encoded in, or later edited out of, the reward value (the original kept a 0.1 sentinel in the
reward tensor and zeroed it in place, which also erased its own mask).

Answer region, box extraction and answer equivalence are the evaluation's own
(``metastone.eval.extract``, ``metastone.eval.math_grader``): the reward and the benchmark numbers
come from one grader; only the reward's strictness on a response without think tags differs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from metastone.eval.extract import THINK_END, answer_region, last_boxed
from metastone.eval.math_grader import parse_answer, parse_gold
from metastone.sprm.loss import OUTCOME_CORRECT, OUTCOME_INVALID, OUTCOME_WRONG

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MathOutcome:
    """The grading of one response: SPR label, why, and the extracted answer (if any)."""

    label: float
    reason: str
    answer: str | None = None

    @property
    def valid(self) -> bool:
        return self.label != OUTCOME_INVALID


def grade_boxed(answer: str, ground_truth: str) -> bool | None:
    """Whether ``answer`` (a box's content) equals ``ground_truth``, by the evaluation's own math grader.

    None if the answer cannot be parsed; a ground truth math-verify cannot parse is a ``ValueError``.
    """
    from math_verify import verify

    pred = parse_answer(answer)
    if not pred:
        return None
    try:
        gold = parse_gold(ground_truth)
    except ValueError as exc:
        raise ValueError(f"{exc} Fix the dataset's reward_model.ground_truth.") from exc
    return bool(verify(gold, pred, timeout_seconds=None))


def ground_truths(ground_truth) -> list[str]:
    """Accepted answers: a string, a number, a list of them, or a dict with ``target`` (verl/DeepScaleR style)."""
    if isinstance(ground_truth, dict):
        ground_truth = ground_truth.get("target", ground_truth.get("answer"))
    if isinstance(ground_truth, (list, tuple)) or hasattr(ground_truth, "tolist"):
        values = list(ground_truth.tolist() if hasattr(ground_truth, "tolist") else ground_truth)
    else:
        values = [ground_truth]
    answers = [str(v).strip() for v in values if v is not None and str(v).strip()]
    if not answers:
        raise ValueError(
            f"empty ground truth {ground_truth!r}; every row needs reward_model.ground_truth "
            "(write the data with `python -m metastone.data.prepare`)."
        )
    return answers


def math_outcome(
    solution_str: str, ground_truth, *, truncated: bool = False, think_end: str | None = THINK_END
) -> MathOutcome:
    """Grade one response (see module doc). ``think_end=None`` grades the whole response.

    ``ground_truth`` may list several accepted answers (any match is correct).
    """
    if truncated:
        return MathOutcome(OUTCOME_INVALID, "truncated")
    region = answer_region(solution_str, think_end=think_end, require_think=True)
    if region is None:
        return MathOutcome(OUTCOME_INVALID, "no_think_end")
    answer = last_boxed(region)
    if answer is None or not answer.strip():
        return MathOutcome(OUTCOME_INVALID, "no_boxed_answer")
    results = [grade_boxed(answer, gt) for gt in ground_truths(ground_truth)]
    ok = None if all(r is None for r in results) else any(bool(r) for r in results)
    if ok is None:
        return MathOutcome(OUTCOME_INVALID, "unparseable_answer", answer)
    return MathOutcome(OUTCOME_CORRECT if ok else OUTCOME_WRONG, "graded", answer)


def compute_score(
    data_source: str | None,
    solution_str: str,
    ground_truth: str,
    extra_info: dict | None = None,
    *,
    think_end: str | None = THINK_END,
    correct_score: float = 1.0,
    wrong_score: float = 0.0,
    invalid_score: float = 0.0,
    **_unused,
) -> dict:
    """verl custom reward function (``reward.custom_reward_function``): a dict with ``score`` and ``sprm_label``.

    ``extra_info["truncated"]`` (set by ``SPRMMathRewardManager`` from the token ids) marks responses
    cut at the length limit. All values are numbers, so verl can average them into metrics.
    """
    truncated = bool((extra_info or {}).get("truncated", False))
    outcome = math_outcome(solution_str, ground_truth, truncated=truncated, think_end=think_end)
    return reward_fields(outcome.label, truncated, correct_score, wrong_score, invalid_score)


def reward_fields(label: float, truncated: bool, correct_score: float, wrong_score: float, invalid_score: float) -> dict:
    """What a reward function returns for one graded response: the GRPO ``score`` for its SPR ``label``,
    and numbers verl can average into metrics (``acc``, ``sprm_label``, ``truncated``, ``invalid``)."""
    scores = {OUTCOME_CORRECT: correct_score, OUTCOME_WRONG: wrong_score}
    return {
        "score": float(scores.get(label, invalid_score)),
        "acc": float(label == OUTCOME_CORRECT),
        "sprm_label": float(label),
        "truncated": float(truncated),
        "invalid": float(label == OUTCOME_INVALID),
    }


def demo_compute_score(
    data_source: str | None,
    solution_str: str,
    ground_truth,
    extra_info: dict | None = None,
    *,
    correct_score: float = 1.0,
    wrong_score: float = 0.0,
    invalid_score: float = 0.0,
    **_unused,
) -> dict:
    """verl custom reward function for the CPU demo task (``metastone.eval.demo_task``).

    Graded exactly as the evaluation grades the task (``Demo.grade``: the number after the first "The
    answer is"): correct / wrong, or invalid when the response was cut at the length limit or states
    no answer. Same fields as ``compute_score``.
    """
    from metastone.eval.demo_task import parse_demo_answer

    truncated = bool((extra_info or {}).get("truncated", False))
    value = None if truncated else parse_demo_answer(solution_str)
    if value is None:
        label = OUTCOME_INVALID
    else:
        ok = any(str(value) == gt.replace(",", "") for gt in ground_truths(ground_truth))
        label = OUTCOME_CORRECT if ok else OUTCOME_WRONG
    return reward_fields(label, truncated, correct_score, wrong_score, invalid_score)
