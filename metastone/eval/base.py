"""The task API every benchmark implements: ``Example``, ``Grade`` and the ``Task`` base class.

A task is a list of ``Example`` s plus one way to grade a response; the same grader serves as
evaluation metric and as RL reward. Each benchmark's ``Task`` subclass lives next to its loader and
grader (``math_grader.AIME24``, ``ceval_grader.CEval``, ``livecodebench.LiveCodeBench``,
``humaneval.HumanEval``, ``demo_task.Demo``); ``tasks.py`` is the registry that names them. This module
imports none of them (imports point one way: base <- benchmark modules <- tasks registry).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

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
