"""Math answer grading on math-verify: the answer after ``</think>``, the last ``\\boxed{}``, verified by sympy.

What is graded (MetaStone-S1's AIME scoring without grading the prompt or the thinking; the original's
rule is ``original_grading``, docs/differences.md):

- only the answer region (``extract.answer_region``: text after the last ``</think>``; a thinking
  that never ended has no answer);
- the LAST ``\\boxed{}`` of that region is the answer (math-verify alone would merge several boxes
  into a set);
- ``require_boxed=True`` (default, the paper's rule: a result counts only if it is boxed) grades a
  response without a box as wrong; with ``require_boxed=False`` math-verify's own extraction
  runs on the region instead;
- the gold is wrapped as ``$...$`` unless it already has ``$`` or ``\\boxed`` (a bare ``\\frac34``
  does not parse); a gold that still does not parse raises ``ValueError`` (never a silent 0);
- ``verify(gold, prediction)`` in that order (math-verify is asymmetric).

Equivalences that hold (tested): ``0204``=204, ``\\frac12``=0.5, ``2\\sqrt2``=``\\sqrt8``, intervals,
sets in any order, ``x=3``=3, ``10\\%``=10, ``1,000``=``1{,}000``=``1\\,000``=1000, units and
``^\\circ`` dropped; rejected: 205 vs 204, (1,2) vs (2,1), 0.333 vs 1/3.

Timeouts: math-verify's timeouts use ``signal.alarm``, which raises off the main thread, so every
call here passes ``parsing_timeout=None, timeout_seconds=None``; ``MathGrader`` runs them in a
``TimeoutPool`` that kills a worker past ``timeout_s`` (a timed-out answer is graded wrong, with
``reason="timeout"``). The module-level functions run in-process without a time limit.

``canonical_answer`` gives a normal form for voting (``0.5`` and ``\\frac12`` both give ``"1/2"``);
equal canonical forms imply equivalence, not conversely (``10\\%`` and ``10`` verify as equal but
canonicalise apart), so ``group_answers`` merges groups with ``answers_equivalent``.

``MathTask`` (``AIME24``, ``AIME25``) reads the ``{"prompt", "answer"}`` JSONL rows and grades with ``MathGrader``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from math_verify import parse, verify

from metastone.eval.base import Example, Grade, Task
from metastone.eval.extract import answer_region, last_boxed
from metastone.records import read_jsonl
from metastone.sandbox.worker_pool import TimeoutPool

logger = logging.getLogger(__name__)

# "1\,000" / "1\ 000" / "1\!000": thin spaces inside digit groups (math-verify reads "1\,000" as 1*0).
_DIGIT_SPACE_RE = re.compile(r"(?<=\d)\\[,!;: ](?=\d{3}(?!\d))")


@dataclass(frozen=True)
class MathGrade:
    """``correct``; ``extracted``: the answer string graded (None if none); ``reason``: why.

    Reasons: "boxed" / "unboxed" (an answer was found and verified), "no_boxed" (required box
    missing), "no_answer" (nothing parseable), "unfinished_thinking", "timeout", "error".
    """

    correct: bool
    extracted: str | None
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def _parse(text: str) -> list:
    return parse(text, parsing_timeout=None)


def gold_latex(gold: Any) -> str:
    """The gold answer as text math-verify parses: ints and floats as ``$n$``, bare LaTeX wrapped."""
    if isinstance(gold, bool) or gold is None:
        raise ValueError(f"gold answer must be a number or a string, got {gold!r}.")
    text = str(gold).strip()
    if not text:
        raise ValueError("gold answer is empty; give a number or LaTeX such as '204' or '\\frac{3}{4}'.")
    if "\\boxed" in text or "$" in text:
        return text
    return f"${_DIGIT_SPACE_RE.sub('', text)}$"


def parse_gold(gold: Any) -> list:
    """math-verify's parse of the gold; ``ValueError`` if it yields nothing."""
    parsed = _parse(gold_latex(gold))
    if not parsed:
        raise ValueError(f"gold answer {gold!r} could not be parsed by math-verify; "
                         "give a number or LaTeX such as '204', '\\frac{3}{4}' or '$(1,2]$'.")
    return parsed


def parse_answer(answer: str) -> list:
    """math-verify's parse of an extracted answer (``$...$``-wrapped first, then as written)."""
    text = _DIGIT_SPACE_RE.sub("", answer.strip()).strip("$ \n\t")
    if not text:
        return []
    return _parse(f"${text}$") or _parse(answer)


def extract_answer(response: str, require_boxed: bool = True) -> tuple[str | None, str]:
    """``(answer, reason)`` from a response: the last box of the answer region (see module doc)."""
    region = answer_region(response)
    if region is None:
        return None, "unfinished_thinking"
    boxed = last_boxed(region)
    if boxed is not None:
        return boxed, "boxed"
    if require_boxed:
        return None, "no_boxed"
    parsed = _parse(region)
    if not parsed:
        return None, "no_answer"
    return str(parsed[-1]), "unboxed"


def verify_answer(answer: str | None, gold: Any) -> bool:
    """True iff the extracted ``answer`` is equivalent to ``gold`` (raises ``ValueError`` on a bad gold)."""
    gold_parsed = parse_gold(gold)
    if answer is None:
        return False
    predicted = parse_answer(answer)
    if not predicted:
        return False
    return bool(verify(gold_parsed, predicted, timeout_seconds=None))


def grade_response(response: str, gold: Any, require_boxed: bool = True) -> MathGrade:
    """Grade one response in-process (no time limit; use ``MathGrader`` for untrusted batches)."""
    answer, reason = extract_answer(response, require_boxed)
    if answer is None:
        parse_gold(gold)  # a bad gold is an error even when the response has no answer
        return MathGrade(False, None, reason)
    correct = verify_answer(answer, gold)
    if not correct and not parse_answer(answer):
        reason = "no_answer"
    return MathGrade(correct, answer, reason)


def _canonical_expr(expr) -> str:
    import sympy

    if isinstance(expr, str):
        return expr.strip().lower()
    if isinstance(expr, sympy.MatrixBase):
        return "Matrix(" + str([[_canonical_expr(x) for x in row] for row in expr.tolist()]) + ")"
    if isinstance(expr, sympy.Equality) and isinstance(expr.lhs, sympy.Symbol):
        return _canonical_expr(expr.rhs)  # "x = 3" votes with "3"
    if isinstance(expr, sympy.FiniteSet):
        return "{" + ", ".join(sorted(_canonical_expr(x) for x in expr.args)) + "}"
    if isinstance(expr, sympy.Tuple):
        return "(" + ", ".join(_canonical_expr(x) for x in expr.args) + ")"
    if isinstance(expr, sympy.Interval):
        left, right = (_canonical_expr(x) for x in (expr.start, expr.end))
        return ("(" if expr.left_open else "[") + f"{left}, {right}" + (")" if expr.right_open else "]")
    if isinstance(expr, sympy.Symbol):
        return str(expr).lower()
    if isinstance(expr, sympy.Basic):
        if expr.has(sympy.Float):
            expr = sympy.nsimplify(expr, rational=True)
        expr = sympy.simplify(expr)
        if expr.free_symbols:
            expr = sympy.expand(expr)
        return sympy.sstr(expr)
    return str(expr)


def canonical_answer(text: str | None) -> str | None:
    """Normal form of an answer for voting (``"0.5"``, ``"\\frac12"`` -> ``"1/2"``), None if unparseable.

    ``text`` is an answer, not a whole response; if it contains ``\\boxed{}`` the last box is used.
    """
    if text is None:
        return None
    boxed = last_boxed(text)
    parsed = parse_answer(boxed if boxed is not None else text)
    if not parsed:
        return None
    return _canonical_expr(parsed[0])


def answers_equivalent(a: str | None, b: str | None) -> bool:
    """True iff two answers are the same (equal canonical forms, or math-verify either way)."""
    if a is None or b is None:
        return False
    ca, cb = canonical_answer(a), canonical_answer(b)
    if ca is not None and ca == cb:
        return True
    pa, pb = parse_answer(a), parse_answer(b)
    if not pa or not pb:
        return a.strip() == b.strip()
    return bool(verify(pa, pb, timeout_seconds=None) or verify(pb, pa, timeout_seconds=None))


def group_answers(answers: Sequence[str | None]) -> list[int | None]:
    """Cluster ids for a list of answers (None stays None): equivalent answers share an id.

    Greedy: each answer joins the first earlier group whose representative is equivalent.
    """
    reps: list[str] = []
    ids: list[int | None] = []
    for answer in answers:
        if answer is None:
            ids.append(None)
            continue
        for gid, rep in enumerate(reps):
            if answers_equivalent(rep, answer):
                ids.append(gid)
                break
        else:
            reps.append(answer)
            ids.append(len(reps) - 1)
    return ids


# ---- pool-side entry points (module-level so they pickle) -------------------------------------

def _quiet_worker() -> None:
    """Worker initializer: import the parser stack once and silence math-verify's timeout notice."""
    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).setLevel(logging.ERROR)
    _parse("$1$")


def _verify_item(item: tuple[str | None, Any]) -> tuple[bool, bool]:
    """(correct, the answer parsed at all)."""
    answer, gold = item
    correct = verify_answer(answer, gold)
    return correct, bool(correct or (answer is not None and parse_answer(answer)))


def _canonical_item(text: str) -> str | None:
    return canonical_answer(text)


def _equivalent_item(pair: tuple[str, str]) -> bool:
    return answers_equivalent(pair[0], pair[1])


class MathGrader:
    """Batch math grading in a ``TimeoutPool``: ``grade_batch(responses, golds) -> list[MathGrade]``.

    Extraction runs in the caller; parse and verify run in worker processes, each answer under
    ``timeout_s`` of wall clock. A bad gold raises ``ValueError`` naming it. Close the grader (or
    use it as a context manager) to stop the workers.
    """

    def __init__(self, workers: int | None = None, timeout_s: float = 10.0, require_boxed: bool = True):
        self.require_boxed = require_boxed
        self.timeout_s = timeout_s
        self._pool = TimeoutPool(workers, timeout_s, initializer=_quiet_worker)

    def grade(self, response: str, gold: Any) -> MathGrade:
        return self.grade_batch([response], [gold])[0]

    def grade_batch(self, responses: Sequence[str], golds: Sequence[Any]) -> list[MathGrade]:
        if len(responses) != len(golds):
            raise ValueError(f"grade_batch: {len(responses)} responses but {len(golds)} golds; pass one gold per response.")
        return self.grade_answers([extract_answer(r, self.require_boxed) for r in responses], golds)

    def grade_answers(self, extracted: Sequence[tuple[str | None, str]], golds: Sequence[Any]) -> list[MathGrade]:
        """Verify already extracted ``(answer, reason)`` pairs against ``golds`` (another extraction rule)."""
        if len(extracted) != len(golds):
            raise ValueError(f"grade_answers: {len(extracted)} answers but {len(golds)} golds; pass one gold per answer.")
        items = [(answer, gold) for (answer, _), gold in zip(extracted, golds)]
        outcomes = self._pool.map(_verify_item, items)
        grades = []
        for (answer, reason), gold, outcome in zip(extracted, golds, outcomes):
            if outcome.status == "error":
                if outcome.error and outcome.error.startswith("ValueError"):
                    raise ValueError(outcome.error.split(": ", 1)[1])
                logger.warning("math grading failed for gold %r: %s", gold, outcome.error)
                grades.append(MathGrade(False, answer, "error"))
            elif outcome.status == "timeout":
                grades.append(MathGrade(False, answer, "timeout"))
            else:
                correct, parsed = outcome.value
                if answer is not None and not parsed:
                    reason = "no_answer"
                grades.append(MathGrade(bool(correct), answer, reason))
        return grades

    def canonical_batch(self, answers: Sequence[str | None]) -> list[str | None]:
        """``canonical_answer`` of each answer; None on timeout or error."""
        outcomes = self._pool.map(_canonical_item, list(answers))
        return [o.value if o.ok else None for o in outcomes]

    def equivalent_batch(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        """``answers_equivalent`` for each pair; False on timeout or error."""
        outcomes = self._pool.map(_equivalent_item, list(pairs))
        return [bool(o.value) if o.ok else False for o in outcomes]

    @property
    def timeouts(self) -> int:
        return self._pool.timeouts

    def close(self) -> None:
        self._pool.close()

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
