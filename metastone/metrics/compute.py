"""Computing the metrics: grade every draft once, then each rule's value per question at each N, averaged
over questions with a bootstrap interval (``selection.py``, ``intervals.py``; rules in docs/metrics.md)."""

from __future__ import annotations

from typing import Sequence

from metastone.eval.tasks import Task
from metastone.metrics.intervals import bootstrap_ci
from metastone.metrics.load import Question
from metastone.metrics.selection import best_of_n_exact, best_of_n_groups, pass_at_k, vote_at_n
from metastone.sampling import stable_hash

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
    return stable_hash(f"{seed}/{qid}/{n}")


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
