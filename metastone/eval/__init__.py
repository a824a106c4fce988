"""Benchmarks and graders: AIME24/25 (math-verify), C-Eval, LiveCodeBench and HumanEval (sandboxed), demo.

One grader per benchmark serves both evaluation and RL reward. ``tasks.TASKS`` maps a task name to
its ``Task`` class (load, prompt, grade, answer keys for voting, summary); see docs/eval.md.
Programs run in ``metastone.sandbox`` (process isolation, standard library only). The names below
are imported lazily, so the grader worker processes start fast.
"""

from __future__ import annotations

import importlib

__all__ = ["TASKS", "Example", "Grade", "Task", "get_task", "load_task"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("metastone.eval.tasks"), name)
    raise AttributeError(f"module 'metastone.eval' has no attribute {name!r}")
