"""Code grading: run a program against its tests, each test in its own sandboxed process, in parallel.

Three kinds of test (``CodeTest.kind``):

- ``stdin`` (LiveCodeBench AtCoder/Codeforces style): the program reads the input on stdin; its
  stdout must match the expected output. Matching (as LiveCodeBench's harness does): both texts are
  stripped, split into lines and each line stripped; the line counts must agree; each line must be
  equal, or parse as the same list of ``Decimal`` numbers (``2.50`` equals ``2.5``; no float
  tolerance, so ``50000000000000001`` is not ``50000000000000000``);
- ``functional`` (LeetCode style): the input is one JSON value per line (the arguments), the output
  one JSON value; the driver calls ``Solution().<fn_name>(*args)`` (or a top-level ``fn_name``) and
  prints the JSON of the result (tuples become lists); the parent compares the decoded values. The
  expected output never enters the sandbox, and the program's own prints go to stderr;
- ``script`` (HumanEval): the program carries its own asserts; it passes iff it exits with 0.

Programs run under ``python -I -S`` with a prelude of the standard-library imports LeetCode-style
code assumes (``typing``, ``collections``, ``heapq``, ``bisect``, ``itertools``, ``functools``,
``math``, ...) and a recursion limit of 50000, as the official LiveCodeBench harness provides; the
code is compiled as its own unit, so ``from __future__`` imports still work.

pass@1 for a sample is "every test passed" (``CodeGrade.passed``). With ``stop_on_first_failure``
(default) the tests not yet started after a failure are reported as "skipped".

``CodeTask`` is the base of the code benchmarks' tasks (``LiveCodeBench``, ``HumanEval``): the last
python block of the answer region, graded by a lazily built ``CodeGrader``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Sequence

from metastone.eval.base import Example, Grade, Task
from metastone.eval.extract import answer_region, last_code_block
from metastone.sandbox.sandbox import RunResult, Sandbox, SandboxConfig

logger = logging.getLogger(__name__)

TEST_KINDS = ("stdin", "functional", "script")
TEST_STATUSES = ("passed", "wrong_answer", "timeout", "runtime_error", "output_limit", "sandbox_error", "skipped")

PRELUDE = """\
import bisect, collections, copy, datetime, functools, heapq, itertools, math, operator, random, re, string, sys
from bisect import *
from collections import *
from functools import *
from heapq import *
from itertools import *
from math import *
from typing import *
from builtins import *  # math's star import shadows pow and friends; builtins win
sys.setrecursionlimit(50000)
"""

_DRIVER_COMMON = """\
import json, os, sys
def _load(namespace):
    exec(compile(open("prelude.py", encoding="utf-8").read(), "prelude.py", "exec"), namespace)
    exec(compile(open("solution.py", encoding="utf-8").read(), "solution.py", "exec"), namespace)
"""

STDIN_DRIVER = _DRIVER_COMMON + """\
_load({"__name__": "__main__", "__builtins__": __builtins__})
"""

FUNCTIONAL_DRIVER = _DRIVER_COMMON + """\
_name = sys.argv[1]
_args = json.loads(sys.stdin.read())
_result_fd = os.dup(1)
os.dup2(2, 1)  # the solution's own prints go to stderr; fd _result_fd carries the result only
_ns = {"__name__": "solution", "__builtins__": __builtins__}
_load(_ns)
_cls = _ns.get("Solution")
if isinstance(_cls, type) and hasattr(_cls, _name):
    _fn = getattr(_cls(), _name)
else:
    _fn = _ns.get(_name)
if not callable(_fn):
    raise SystemExit(f"no method Solution.{_name} and no function {_name} in the solution")
_result = _fn(*_args)
if isinstance(_result, tuple):
    _result = list(_result)
_data = json.dumps(_result).encode()
sys.stdout.flush()
while _data:
    _data = _data[os.write(_result_fd, _data):]
"""


@dataclass(frozen=True)
class CodeTest:
    """One test. ``input``/``output`` are text as in LiveCodeBench; ``fn_name`` for functional tests."""

    kind: str
    input: str = ""
    output: str = ""
    fn_name: str | None = None

    def __post_init__(self):
        if self.kind not in TEST_KINDS:
            raise ValueError(f"CodeTest.kind must be one of {TEST_KINDS}, got {self.kind!r}.")
        if self.kind == "functional":
            if not self.fn_name:
                raise ValueError("a functional CodeTest needs fn_name (LiveCodeBench: metadata.func_name).")
            self.arguments()
            self.expected_value()

    def arguments(self) -> list:
        """Functional input: one JSON value per line -> the argument list."""
        try:
            return [json.loads(line) for line in self.input.split("\n") if line.strip()]
        except json.JSONDecodeError as exc:
            raise ValueError(f"functional test input must be one JSON value per line; {exc}: {self.input[:200]!r}") from None

    def expected_value(self):
        try:
            return json.loads(self.output)
        except json.JSONDecodeError as exc:
            raise ValueError(f"functional test output must be one JSON value; {exc}: {self.output[:200]!r}") from None


@dataclass
class TestResult:
    """Outcome of one test; ``status`` is one of ``TEST_STATUSES``."""

    index: int
    status: str
    wall_s: float = 0.0
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass
class CodeGrade:
    """``passed``: every test passed (pass@1 for this sample); ``code``: the program graded."""

    passed: bool
    results: list[TestResult] = field(default_factory=list)
    code: str | None = None
    reason: str = ""

    def to_dict(self) -> dict:
        return {"passed": self.passed, "reason": self.reason, "tests": [asdict(r) for r in self.results]}


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().split("\n")]


def _decimals(line: str) -> list[Decimal] | None:
    try:
        return [Decimal(token) for token in line.split()]
    except InvalidOperation:
        return None


def stdout_matches(actual: str, expected: str) -> bool:
    """LiveCodeBench's stdout rule (see module doc)."""
    got, want = _lines(actual), _lines(expected)
    if len(got) != len(want):
        return False
    for a, b in zip(got, want):
        if a == b:
            continue
        da, db = _decimals(a), _decimals(b)
        if da is None or db is None or da != db:
            return False
    return True


def _shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit // 2] + " ... " + text[-limit // 2:]


def judge(test: CodeTest, run: RunResult) -> tuple[str, str]:
    """(status, detail) of one test from its sandbox run."""
    if run.status == "timeout":
        return "timeout", run.detail
    if run.status == "output_limit":
        return "output_limit", run.detail
    if run.status == "sandbox_error":
        return "sandbox_error", run.detail
    if run.status != "ok":
        return "runtime_error", run.detail
    if test.kind == "script":
        return "passed", ""
    stdout = run.stdout.decode("utf-8", "replace")
    if test.kind == "stdin":
        if stdout_matches(stdout, test.output):
            return "passed", ""
        return "wrong_answer", f"expected {_shorten(test.output.strip())!r}, got {_shorten(stdout.strip())!r}"
    try:
        value = json.loads(stdout)
    except json.JSONDecodeError:
        return "runtime_error", f"the result was not JSON: {_shorten(stdout)!r}"
    if value == test.expected_value():
        return "passed", ""
    return "wrong_answer", f"expected {_shorten(test.output.strip())!r}, got {_shorten(json.dumps(value))!r}"


def program_files(code: str, test: CodeTest) -> tuple[dict[str, str], list[str], str]:
    """(files, argv, stdin) of the sandbox run for one test."""
    if test.kind == "script":
        return {"main.py": code}, ["main.py"], test.input
    files = {"prelude.py": PRELUDE, "solution.py": code}
    if test.kind == "stdin":
        files["run.py"] = STDIN_DRIVER
        return files, ["run.py"], test.input
    files["run.py"] = FUNCTIONAL_DRIVER
    return files, ["run.py", test.fn_name], json.dumps(test.arguments())


class CodeGrader:
    """Run programs against tests in a ``Sandbox``, ``workers`` runs at a time.

    ``grade(code, tests)`` for one program; ``grade_many([(code, tests), ...])`` for many, sharing
    one worker pool (the tests of all programs interleave, so a batch keeps every worker busy).
    """

    def __init__(self, config: SandboxConfig | None = None, workers: int | None = None,
                 stop_on_first_failure: bool = True):
        self.sandbox = Sandbox(config)
        self.workers = workers or os.cpu_count() or 1
        if self.workers < 1:
            raise ValueError(f"CodeGrader: workers must be >= 1, got {workers}.")
        self.stop_on_first_failure = stop_on_first_failure

    def grade(self, code: str | None, tests: Sequence[CodeTest]) -> CodeGrade:
        return self.grade_many([(code, tests)])[0]

    def grade_many(self, jobs: Sequence[tuple[str | None, Sequence[CodeTest]]]) -> list[CodeGrade]:
        grades: list[CodeGrade] = []
        work = []  # (job index, test index, test)
        for j, (code, tests) in enumerate(jobs):
            if not tests:
                raise ValueError(f"job {j}: no tests to run; a problem needs at least one test.")
            if code is None or not code.strip():
                grades.append(CodeGrade(False, [TestResult(i, "skipped", detail="no code") for i in range(len(tests))],
                                        code, reason="no_code"))
                continue
            grades.append(CodeGrade(False, [TestResult(i, "skipped") for i in range(len(tests))], code))
            work += [(j, i, t) for i, t in enumerate(tests)]
        if work:
            self.sandbox.resolved  # resolve the backend once, before the threads start
        failed = [False] * len(jobs)
        lock = threading.Lock()

        def run_one(entry):
            j, i, test = entry
            if self.stop_on_first_failure and failed[j]:
                return
            files, argv, stdin = program_files(jobs[j][0], test)
            run = self.sandbox.run(files, argv, stdin)
            status, detail = judge(test, run)
            with lock:
                grades[j].results[i] = TestResult(i, status, round(run.wall_s, 4), detail)
                if status != "passed":
                    failed[j] = True

        if self.workers == 1 or len(work) == 1:
            for entry in work:
                run_one(entry)
        else:
            with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="sandbox") as pool:
                list(pool.map(run_one, work))
        for grade in grades:
            if grade.reason == "no_code":
                continue
            grade.passed = all(r.passed for r in grade.results)
            first_bad = next((r for r in grade.results if not r.passed and r.status != "skipped"), None)
            grade.reason = "passed" if grade.passed else (first_bad.status if first_bad else "skipped")
        return grades


class CodeTask(Task):
    """Shared by the code tasks: a ``CodeGrader`` (sandbox) built lazily from ``sandbox`` options."""

    def __init__(self, examples, source="", sandbox: SandboxConfig | None = None, workers: int | None = None):
        super().__init__(examples, source)
        self.sandbox_config, self.workers = sandbox, workers
        self._grader: CodeGrader | None = None

    @property
    def grader(self) -> CodeGrader:
        if self._grader is None:
            self._grader = CodeGrader(self.sandbox_config, self.workers)
        return self._grader

    def code_of(self, response: str) -> str | None:
        region = answer_region(response)
        return None if region is None else last_code_block(region)

    def grade(self, response: str, example: Example) -> Grade:
        return self.grade_batch([response], [example])[0]

    def _jobs(self, responses, examples) -> list[tuple]:
        raise NotImplementedError

    def grade_batch(self, responses, examples) -> list[Grade]:
        if len(responses) != len(examples):
            raise ValueError(f"{self.name}: {len(responses)} responses but {len(examples)} examples.")
        jobs = self._jobs(responses, examples)
        return [Grade(g.passed, g.code, g.to_dict()) for g in self.grader.grade_many(jobs)]
