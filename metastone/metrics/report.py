"""The metrics pass: saved drafts -> graded per question -> SPRM Best-of-N, votes and pass@k with 95% CIs.

What: read result files (globs), group the drafts by question, grade every draft ONCE with the
task's grader (one ``grade_batch`` call, parallel inside; only the text after ``</think>`` is
graded), take the task's canonical answer keys (``0.5`` and ``\\frac12`` vote together), compute
per-question values at each N (``selection.py``) and average them over questions with a bootstrap
interval over questions (``intervals.py``). MetaStone-S1 (arXiv 2507.01951) reports low / medium /
high = Best-of-2/8/32 by SPRM trajectory score; this reports all three from one sampling run.

Why not the original ``test/compute_metric.py`` (MetaStone-S1): it took one arbitrary contiguous
group per question (with 32 drafts, "high" was one noisy draw), ties to the first maximum in glob
order, no baselines and no intervals, and graded ``question + output`` (a ``\\boxed{}`` in the AIME
prompt counted). Here: the exact expectation over all n-subsets AND the disjoint-group average, a
documented tie rule (lower draft index), maj@N, SPRM-weighted vote@N, pass@1, unbiased pass@N
(oracle), and the prompt is never graded. ``grading="original"`` (``--grading original``) grades with
the original's extraction rules instead (``metastone.eval.original_grading``), to compare with
published numbers from the same drafts; the metrics stay ours.

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
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from metastone.eval.tasks import Example, Grade, Task
from metastone.records import expand_paths, read_jsonl
from metastone.metrics.intervals import bootstrap_ci
from metastone.metrics.selection import best_of_n_exact, best_of_n_groups, pass_at_k, vote_at_n

logger = logging.getLogger(__name__)

DEFAULT_NS = (2, 8, 32)
MODES = {2: "low", 8: "medium", 32: "high"}
# metric key -> label in the printed table; docs/metrics.md defines each one
RULES = {
    "sprm_bon": "SPRM Best-of-N (exact)",
    "sprm_bon_groups": "SPRM Best-of-N (groups)",
    "pass@1": "pass@1 (mean accuracy)",
    "pass@n": "pass@N (oracle)",
    "maj_groups": "maj@N (groups)",
    "maj_sampled": "maj@N (random subsets)",
    "vote_groups": "SPRM vote@N (groups)",
    "vote_sampled": "SPRM vote@N (random subsets)",
}
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


def parse_ns(spec: str | Sequence[int] | None, max_k: int) -> list[int]:
    """``--N`` as sorted unique ints; default 2,8,32 clipped to ``max_k`` (the most drafts any question has)."""
    if spec is None:
        return sorted({min(n, max_k) for n in DEFAULT_NS})
    try:
        ns = [int(p) for p in spec.split(",") if p.strip()] if isinstance(spec, str) else [int(n) for n in spec]
    except ValueError:
        raise ValueError(f"--N {spec!r}: expected comma-separated positive integers such as 2,8,32.") from None
    if not ns or min(ns) < 1:
        raise ValueError(f"--N {spec!r}: expected comma-separated positive integers such as 2,8,32.")
    if max(ns) > max_k:
        raise ValueError(f"--N {max(ns)} is more than the most drafts any question has ({max_k}); "
                         f"pass --N up to {max_k}, or sample more drafts.")
    return sorted(set(ns))


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


def grade_questions(task: Task, questions: Sequence[Question], grading: str = "ours") -> None:
    """Grade every draft once (one ``grade_batch``), and take the answer keys for voting.

    ``grading="original"``: the original release's extraction rules (``original_grading``)."""
    responses = [d.response for q in questions for d in q.drafts]
    examples = [q.example for q in questions for _ in q.drafts]
    if grading == "original":
        from metastone.eval.original_grading import grade_original

        grades, keys = grade_original(task, responses, examples)
    else:
        grades = task.grade_batch(responses, examples)
        keys = task.answer_keys(responses)
    i = 0
    for q in questions:
        q.grades = list(grades[i:i + q.k])
        q.correct = [bool(g.correct) for g in q.grades]
        q.extracted = [g.extracted for g in q.grades]
        q.answers = list(keys[i:i + q.k])
        i += q.k


def _seed(seed: int, qid: str, n: int) -> int:
    """A per-(question, n) seed that depends on neither file order nor Python's hash salt."""
    return zlib.crc32(f"{seed}/{qid}/{n}".encode("utf-8"))


def question_values(q: Question, n: int, *, seed: int = 0, vote_samples: int = 256) -> dict[str, float]:
    """Every rule's value for one question at N = ``n`` (a question with fewer drafts uses its own K)."""
    n = min(n, q.k)
    s = _seed(seed, q.id, n)
    maj = vote_at_n(q.correct, q.answers, n, samples=vote_samples, seed=s)
    weighted = vote_at_n(q.correct, q.answers, n, weights=q.scores, samples=vote_samples, seed=s)
    return {
        "sprm_bon": best_of_n_exact(q.correct, q.scores, n),
        "sprm_bon_groups": best_of_n_groups(q.correct, q.scores, n),
        "pass@1": sum(q.correct) / q.k,
        "pass@n": pass_at_k(q.correct, n),
        "maj_groups": maj[0], "maj_sampled": maj[1],
        "vote_groups": weighted[0], "vote_sampled": weighted[1],
    }


def metrics_at(questions: Sequence[Question], ns: Sequence[int], *, bootstrap: int = 2000, seed: int = 0,
               vote_samples: int = 256) -> list[dict]:
    """One row per N: ``{"N", "mode", "short", "metrics": {rule: {"mean", "ci"}}, "per_question"}``."""
    cache: dict[tuple, list[float] | None] = {}

    def interval(values: list[float]):
        key = tuple(values)
        if key not in cache:
            cache[key] = list(bootstrap_ci(values, resamples=bootstrap, seed=seed)) if bootstrap > 0 else None
        return cache[key]

    rows = []
    for n in ns:
        values = [question_values(q, n, seed=seed, vote_samples=vote_samples) for q in questions]
        metrics = {}
        for rule in RULES:
            column = [v[rule] for v in values]
            metrics[rule] = {"mean": sum(column) / len(column), "ci": interval(column)}
        rows.append({"N": n, "mode": MODES.get(n), "short": sum(q.k < n for q in questions),
                     "metrics": metrics, "per_question": values})
    return rows


def curve_ns(ns: Sequence[int], max_k: int) -> list[int]:
    """N values for the accuracy-vs-N plot: powers of two up to ``max_k``, ``max_k`` and the asked N."""
    powers = [2 ** i for i in range(max_k.bit_length()) if 2 ** i <= max_k]
    return sorted(set(powers) | set(ns) | {max_k})


def evaluate(task: Task, result_paths: Sequence[str], ns: str | Sequence[int] | None = None, *, bootstrap: int = 2000,
             seed: int = 0, vote_samples: int = 256, curve: bool = False,
             grading: str = "ours") -> tuple[dict, list[Question]]:
    """The whole pass on a loaded task; returns (report dict, graded questions). See the module docstring."""
    if bootstrap < 0 or vote_samples < 1:
        raise ValueError(f"--bootstrap must be >= 0 (0: no intervals) and --vote_samples >= 1; got {bootstrap}, {vote_samples}.")
    from metastone.eval.original_grading import GRADINGS, supports_original

    if grading not in GRADINGS:
        raise ValueError(f"--grading must be one of {', '.join(GRADINGS)}, got {grading!r}.")
    if grading == "original" and not supports_original(task):
        raise ValueError(f"--grading original is defined for aime24, aime25 (math data) and ceval, not {task.name}; "
                         "use --grading ours.")
    questions, stats = load_questions(result_paths, task)
    max_k = max(q.k for q in questions)
    ns = parse_ns(ns, max_k)
    grade_questions(task, questions, grading)
    rows = metrics_at(questions, ns, bootstrap=bootstrap, seed=seed, vote_samples=vote_samples)
    by_k: dict[int, int] = {}
    for q in questions:
        by_k[q.k] = by_k.get(q.k, 0) + 1
    matched = [q for q in questions if q.from_task]  # the task's summary needs its own examples (C-EVAL: subject)
    summary = task.summarize([q.example for q in matched for _ in q.drafts],
                             [g for q in matched for g in q.grades]) if matched else None
    report = {
        "task": task.name, "data": task.source, "grading": grading, **stats,
        "questions": len(questions), "drafts": sum(q.k for q in questions),
        "drafts_per_question": {str(k): by_k[k] for k in sorted(by_k)},
        "N": ns, "bootstrap": bootstrap, "seed": seed, "vote_samples": vote_samples,
        "rows": rows, "summary_over_drafts": summary,
        "per_question": [{"id": q.id, "k": q.k, "from_task": q.from_task, "correct": q.correct, "scores": q.scores,
                          "answers": q.answers, "extracted": q.extracted, "drafts": [d.index for d in q.drafts]}
                         for q in questions],
    }
    if curve:
        done = {row["N"]: row for row in rows}
        todo = [n for n in curve_ns(ns, max_k) if n not in done]
        extra = {row["N"]: row for row in metrics_at(questions, todo, bootstrap=bootstrap, seed=seed, vote_samples=vote_samples)}
        report["curve"] = [{k: v for k, v in (done.get(n) or extra[n]).items() if k != "per_question"}
                           for n in curve_ns(ns, max_k)]
    return report, questions


def _cell(metric: dict) -> str:
    ci = metric["ci"]
    return f"{100 * metric['mean']:.1f}" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def format_report(report: dict) -> str:
    """The printed table: metrics x N (accuracy in %, bootstrap 95% CI over questions), then the task summary."""
    by_k = ", ".join(f"{n} with K={k}" for k, n in report["drafts_per_question"].items())
    lines = [f"{report['task']}: {report['questions']} questions, {report['drafts']} drafts ({by_k}); "
             f"{len(report['files'])} file(s), {report['format']} format"
             + (", graded with the original's rules" if report.get("grading") == "original" else "")
             + (f", {report['duplicates']} duplicate(s) ignored" if report["duplicates"] else "")
             + (f", {report['not_in_task_data']} question(s) graded against the file's answer" if report["not_in_task_data"] else "")]
    heads = [f"N={r['N']}" + (f" ({r['mode']})" if r["mode"] else "") for r in report["rows"]]
    cells = [[_cell(r["metrics"][rule]) for r in report["rows"]] for rule in RULES]
    width = max(len(h) for h in heads + [c for row in cells for c in row]) + 2
    label = max(len(v) for v in RULES.values()) + 2
    lines.append("accuracy % over questions" + (f" [bootstrap 95% CI, {report['bootstrap']} resamples]" if report["bootstrap"] else ""))
    lines.append("metric".ljust(label) + "".join(h.rjust(width) for h in heads))
    for rule, row in zip(RULES.values(), cells):
        lines.append(rule.ljust(label) + "".join(c.rjust(width) for c in row))
    lines.append("questions with K < N".ljust(label) + "".join(str(r["short"]).rjust(width) for r in report["rows"]))
    summary = report.get("summary_over_drafts")
    if summary and "categories" in summary:
        lines.append(f"\n{report['task']} over all drafts: accuracy {100 * summary['accuracy']:.1f} (n={summary['n']})")
        parts = [(name, v) for name, v in summary["categories"].items()] + ([("Hard", summary["hard"])] if summary.get("hard") else [])
        parts += [(f"  {s} ({v['category']})", v) for s, v in summary.get("subjects", {}).items()]
        width = max(len(name) for name, _ in parts) + 2
        lines += [f"{name.ljust(width)}{100 * v['accuracy']:6.1f}  (n={v['n']})" for name, v in parts]
    return "\n".join(lines)
