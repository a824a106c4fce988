"""The original release's grading rules, as an option (``metastone metric --grading original``).

Our graders read only the answer after ``</think>`` and take its LAST answer (``extract.py``). The
original MetaStone-S1 ``test/compute_metric.py`` graded differently, and its published numbers come
from those rules; this module reproduces them so that the same drafts can be scored both ways:

- AIME (``aime24``, ``aime25``, and any math data loaded with them): the original graded
  ``question + output`` with its ``prime_math.compute_score``, so the answer is the LAST
  ``\\boxed{}`` anywhere in prompt + response: inside the thinking, in a truncated response, or, when
  the response has none, the prompt's own ``\\boxed{}`` (AIME prompts end with "put your final answer
  within \\boxed{}", an empty box, hence wrong). Equivalence is ours (math-verify, ``math_grader``),
  not prime_math's: only the extraction rule is the original's.
- C-EVAL: the FIRST match of ``(?i)(?:答案|answer)\\s*[:：]\\s*([A-Da-d])`` (``re.search``) anywhere in
  the response, thinking included.

Other tasks have no original rule here; asking for one is an error. See docs/metrics.md for an
example where the two gradings disagree, and docs/differences.md.
"""

from __future__ import annotations

import re
from typing import Sequence

from metastone.eval.base import Example, Grade, Task
from metastone.eval.ceval_grader import CEval
from metastone.eval.extract import last_boxed
from metastone.eval.math_grader import MathTask

GRADINGS = ("ours", "original")
_ORIGINAL_CEVAL_RE = re.compile(r"(?:答案|answer)\s*[:：]\s*([A-Da-d])", re.IGNORECASE)


def original_math_answer(prompt: str, response: str) -> str | None:
    """The last ``\\boxed{}`` of ``prompt + response`` (the original graded question + output)."""
    return last_boxed(prompt + response)


def original_ceval_choice(response: str) -> str | None:
    """The letter of the FIRST ``答案：X`` / ``answer: X`` anywhere in the response, upper-case, or None."""
    match = _ORIGINAL_CEVAL_RE.search(response)
    return match.group(1).upper() if match else None


def supports_original(task: Task) -> bool:
    return isinstance(task, (MathTask, CEval))


def grade_original(task: Task, responses: Sequence[str], examples: Sequence[Example]) -> tuple[list[Grade], list]:
    """``(grades, answer keys for voting)`` of ``responses`` under the original's rules for ``task``."""
    if isinstance(task, MathTask):
        answers = [original_math_answer(e.prompt, r) for r, e in zip(responses, examples)]
        extracted = [(a, "boxed" if a is not None else "no_boxed") for a in answers]
        grades = task.grader.grade_answers(extracted, [e.answer for e in examples])
        out = [Grade(g.correct, g.extracted, {"reason": g.reason, "grading": "original"}) for g in grades]
        return out, task.grader.canonical_batch(answers)
    if isinstance(task, CEval):
        choices = [original_ceval_choice(r) for r in responses]
        return [Grade(c == e.answer, c, {"grading": "original"}) for c, e in zip(choices, examples)], choices
    raise ValueError(f"--grading original is defined for aime24, aime25 (math data) and ceval, not {task.name}; "
                     "use --grading ours.")
