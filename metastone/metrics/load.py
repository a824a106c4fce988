"""Loading result files for the metrics: both input formats -> ``Question`` objects with their drafts.

Inputs, detected per line (one run must not mix the two):

- draft records (``metastone.records``): one draft per line, ``{"task", "question_id",
  "draft", "response", "score", "step_scores"?, "answer"?}``; drafts are ordered by ``draft``;
- the original output: one line per (question, call), ``{"prompt" | "question" | "model_input",
  "answer", "output": {"content"?, "solution_lst": [...], "score_lst": [...]}}``, drafts in file
  and line order, lines of one question concatenated (as the original did). ``solution_lst``
  strings carry the chat-templated prompt (``output.content``) in front; it is cut off.

A question id (``question_id``; ``id`` / ``idx`` in the original format) is the task's example id,
else the question text is matched to the task's prompts, else a digit id is the 0-based position
in the task data; a question found nowhere is graded against the ``answer`` in the file (logged).
An ``answer`` in the file that differs from the task data is an error (results of another data
file). Duplicates: a record key (question, draft) seen again with the same response and score is
dropped (first kept, counted as ``duplicates``); with different contents it is an error naming
both places. The original format has no keys, so every line counts: pass each file once.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from metastone.eval.tasks import Example, Grade, Task
from metastone.records import expand_paths, read_jsonl

logger = logging.getLogger(__name__)

RECORD_FORM = ('{"task", "question_id": str, "draft": int, "response": str, "score": number, '
               '"step_scores"?: [number]} (metastone.records)')
ORIGINAL_FORM = ('{"prompt" (or "question"/"model_input"), "answer", '
                 '"output": {"solution_lst": [str], "score_lst": [number]}} (the original test/inference.py)')
TEXT_FIELDS = ("prompt", "question", "problem", "model_input")


@dataclass
class Draft:
    index: int
    response: str
    score: float
    step_scores: list[float] | None
    where: str  # "file:line" it came from


@dataclass
class Question:
    """One question's example and drafts; ``grades`` / ``correct`` / ``extracted`` / ``answers`` are filled by grading."""

    example: Example
    from_task: bool  # the example is from the task data (else built from the file's answer)
    drafts: list[Draft] = field(default_factory=list)
    grades: list[Grade] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)
    extracted: list[str | None] = field(default_factory=list)
    answers: list[str | None] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.example.id

    @property
    def k(self) -> int:
        return len(self.drafts)

    @property
    def scores(self) -> list[float]:
        return [d.score for d in self.drafts]


def _number(value: Any, what: str, where: str, form: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: {what} is {value!r}; expected a finite number. Expected form: {form}.")
    return float(value)


def _gold(row: dict) -> Any:
    gold = row.get("answer")
    return gold.get("target") if isinstance(gold, dict) else gold


def _text(row: dict) -> str | None:
    return next((row[f] for f in TEXT_FIELDS if isinstance(row.get(f), str)), None)


def _parse_record(row: dict, where: str) -> tuple[str, str | None, Any, list[tuple[int | None, Draft]]]:
    for name in ("question_id", "draft", "response", "score"):
        if name not in row:
            raise ValueError(f"{where}: draft record has no {name!r}. Expected form: {RECORD_FORM}.")
    qid, index, response = row["question_id"], row["draft"], row["response"]
    if isinstance(qid, bool) or not isinstance(qid, (str, int)):
        raise ValueError(f"{where}: 'question_id' is {qid!r}; expected a string. Expected form: {RECORD_FORM}.")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"{where}: 'draft' is {index!r}; expected an integer >= 0. Expected form: {RECORD_FORM}.")
    if not isinstance(response, str):
        raise ValueError(f"{where}: 'response' is {type(response).__name__}; expected a string. Expected form: {RECORD_FORM}.")
    steps = row.get("step_scores")
    if steps is not None:
        if not isinstance(steps, list):
            raise ValueError(f"{where}: 'step_scores' must be a list of numbers. Expected form: {RECORD_FORM}.")
        steps = [_number(s, "a step score", where, RECORD_FORM) for s in steps]
    draft = Draft(index, response, _number(row["score"], "'score'", where, RECORD_FORM), steps, where)
    return str(qid), _text(row), _gold(row), [(index, draft)]


def _parse_original(row: dict, where: str) -> tuple[str | None, str | None, Any, list[tuple[int | None, Draft]]]:
    out = row["output"]
    if not isinstance(out, dict) or not isinstance(out.get("solution_lst"), list) or not isinstance(out.get("score_lst"), list):
        raise ValueError(f"{where}: 'output' must hold the lists 'solution_lst' and 'score_lst'. Expected form: {ORIGINAL_FORM}.")
    solutions, scores = out["solution_lst"], out["score_lst"]
    if len(solutions) != len(scores):
        raise ValueError(f"{where}: output.solution_lst has {len(solutions)} entries but output.score_lst {len(scores)}; "
                         "they must be parallel (one score per solution).")
    qid = next((row[f] for f in ("id", "idx") if f in row), None)
    text = _text(row)
    if qid is None and text is None:
        raise ValueError(f"{where}: no question id ('id'/'idx') and no question text ({', '.join(TEXT_FIELDS)}). "
                         f"Expected form: {ORIGINAL_FORM}.")
    content = out.get("content")
    drafts = []
    for solution, score in zip(solutions, scores):
        if not isinstance(solution, str):
            raise ValueError(f"{where}: output.solution_lst holds a {type(solution).__name__}; expected strings.")
        if isinstance(content, str) and content and solution.startswith(content):
            solution = solution[len(content):]  # the original prepended the templated prompt: never grade it
        drafts.append((None, Draft(-1, solution, _number(score, "an output.score_lst entry", where, ORIGINAL_FORM), None, where)))
    return (None if qid is None else str(qid)), text, _gold(row), drafts


class _Resolver:
    """Question id / text -> the task's ``Example`` (see the module docstring for the order)."""

    def __init__(self, task: Task):
        self.task = task
        self.by_id = {e.id: e for e in task}
        self.by_text: dict[str, Example] = {}
        for e in task:
            for text in (e.prompt, e.meta.get("question")):
                if isinstance(text, str):
                    self.by_text.setdefault(text.strip(), e)
        self.extra: dict[str, Example] = {}

    def resolve(self, qid: str | None, text: str | None, gold: Any, where: str) -> tuple[Example, bool]:
        ex = self.by_id.get(qid) if qid is not None else None
        if ex is None and text is not None:
            ex = self.by_text.get(text.strip())
        if ex is None and qid is not None and qid.isdigit() and int(qid) < len(self.task):
            ex = self.task[int(qid)]
        if ex is not None:
            if gold is not None and str(gold).strip() != str(ex.answer).strip():
                raise ValueError(f"{where}: answer {gold!r} but the {self.task.name} data ({self.task.source}) has "
                                 f"{ex.answer!r} for question {ex.id}; are these results of another task or data file? "
                                 "Pass --task / --input_file of the run that made them.")
            return ex, True
        name = qid if qid is not None else "text-" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]
        if gold is None:
            raise ValueError(f"{where}: question {qid if qid is not None else repr(text[:60])} is not in the "
                             f"{self.task.name} data ({self.task.source}) and the line has no 'answer' to grade "
                             "against; pass --input_file with the data the results were generated from.")
        if name not in self.extra:
            logger.warning("%s: question %s is not in the %s data; graded against the file's answer %r",
                           where, name, self.task.name, gold)
            self.extra[name] = Example(name, text or "", gold)
        elif str(self.extra[name].answer).strip() != str(gold).strip():
            raise ValueError(f"{where}: question {name} has answer {gold!r} here but {self.extra[name].answer!r} earlier.")
        return self.extra[name], False


def load_questions(paths: Sequence[str | Path], task: Task) -> tuple[list[Question], dict]:
    """Questions (task order, then unmatched ones by first appearance) with their drafts, and load stats."""
    files = expand_paths([str(p) for p in paths])
    resolver = _Resolver(task)
    questions: dict[str, Question] = {}
    seen: dict[tuple[str, int], Draft] = {}
    kinds: dict[str, str] = {}
    duplicates = 0
    for path in files:
        hint = f"; expected one result per line, either {RECORD_FORM} or {ORIGINAL_FORM}."
        for line, row in read_jsonl(path, hint=hint):
            where = f"{path}:{line}"
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object, either {RECORD_FORM} or {ORIGINAL_FORM}.")
            kind = "original" if "output" in row else "records" if ("response" in row or "key" in row) else None
            if kind is None:
                raise ValueError(f"{where}: neither a draft record {RECORD_FORM} nor an original result line {ORIGINAL_FORM}.")
            kinds.setdefault(kind, where)
            if len(kinds) > 1:
                raise ValueError(f"{where}: {kind} format, but {kinds['records' if kind == 'original' else 'original']} "
                                 "is in the other format; pass the files of one run format at a time.")
            if row.get("task") is not None and row["task"] != task.name:
                raise ValueError(f"{where}: a record of task {row['task']!r}; expected --task {task.name} records "
                                 f"(or pass --task {row['task']}).")
            parse = _parse_original if kind == "original" else _parse_record
            qid, text, gold, drafts = parse(row, where)
            example, from_task = resolver.resolve(qid, text, gold, where)
            q = questions.setdefault(example.id, Question(example, from_task))
            for index, draft in drafts:
                if index is None:  # original format: order of appearance
                    draft.index = len(q.drafts)
                elif (q.id, index) in seen:
                    first = seen[(q.id, index)]
                    if (first.response, first.score) != (draft.response, draft.score):
                        raise ValueError(f"{where}: draft {index} of question {q.id} is also at {first.where} with a "
                                         "different response or score; pass the files of one run only.")
                    duplicates += 1
                    continue
                else:
                    seen[(q.id, index)] = draft
                q.drafts.append(draft)
    if not questions:
        raise ValueError(f"no drafts in {', '.join(map(str, files))}; expected {RECORD_FORM} or {ORIGINAL_FORM} lines.")
    if duplicates:
        logger.warning("%d duplicate draft records ignored (first kept)", duplicates)
    order = {e.id: i for i, e in enumerate(task)}
    ordered = sorted(questions.values(), key=lambda q: (0, order[q.id]) if q.from_task else (1, 0))  # stable
    for q in ordered:
        q.drafts.sort(key=lambda d: d.index)
    stats = {"files": [str(f) for f in files], "format": next(iter(kinds)), "duplicates": duplicates,
             "not_in_task_data": sum(not q.from_task for q in ordered)}
    return ordered, stats
