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

Loading (both input formats): ``load.py``; grading and the metrics: ``compute.py``; the printed
table: ``format.py`` (``format_report``). ``evaluate`` below loads, grades and computes.
"""

from __future__ import annotations

from typing import Sequence

from metastone.eval.tasks import Task
from metastone.metrics.compute import curve_ns, grade_questions, metrics_at, parse_ns
from metastone.metrics.load import Question, load_questions


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
