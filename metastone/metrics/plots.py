"""``--plot DIR``: accuracy vs N per selection rule, and step scores of selected vs rejected drafts.

Two PNGs from a report of ``metastone.metrics.report.evaluate``:

- ``accuracy_vs_n.png``: every rule at N = 1, 2, 4, ... up to the most drafts per question (plus
  the asked N), mean over questions with its bootstrap 95% band (group averages as dotted lines);
- ``step_scores.png``: for a few questions (those with both right and wrong drafts first, in task
  order), the SPRM step scores of every draft along its steps; the draft Best-of-K picks (highest
  trajectory score, lower index on ties) is drawn thick, rejected drafts thin; green = correct,
  red = wrong. Needs ``step_scores`` in the records (the original output format has none).

Drawn on matplotlib's Agg canvas without pyplot, so no display and no global backend change.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from metastone.metrics.compute import RULES
from metastone.metrics.load import Question
from metastone.metrics.selection import rank_order

logger = logging.getLogger(__name__)

# rule -> (colour, line style); "groups" variants share the colour of their rule
STYLE = {
    "sprm_bon": ("tab:blue", "-"), "sprm_bon_groups": ("tab:blue", ":"),
    "vote_sampled": ("tab:green", "-"), "vote_groups": ("tab:green", ":"),
    "maj_sampled": ("tab:orange", "-"), "maj_groups": ("tab:orange", ":"),
    "pass@n": ("tab:gray", "--"), "pass@1": ("black", "-."),
}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def plot_accuracy_vs_n(report: dict, path: str | Path) -> Path:
    """Accuracy (%) vs N (log2 axis) for each rule in ``report["curve"]`` (or its rows)."""
    points = report.get("curve") or report["rows"]
    ns = [p["N"] for p in points]
    fig = _figure(9, 4.5)
    ax = fig.add_subplot()
    for rule, label in RULES.items():
        colour, style = STYLE[rule]
        means = [100 * p["metrics"][rule]["mean"] for p in points]
        ax.plot(ns, means, style, color=colour, marker="o" if style == "-" else None, ms=3, label=label)
        cis = [p["metrics"][rule]["ci"] for p in points]
        if style != ":" and all(cis):
            ax.fill_between(ns, [100 * c[0] for c in cis], [100 * c[1] for c in cis], color=colour, alpha=0.12, lw=0)
    if len(set(ns)) > 1:
        ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("N (drafts per question the rule sees)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{report['task']}: {report['questions']} questions, bands = bootstrap 95% CI")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def pick_questions(questions: Sequence[Question], count: int) -> list[Question]:
    """Up to ``count`` questions with step scores: mixed right/wrong drafts first, then task order."""
    usable = [q for q in questions if any(d.step_scores for d in q.drafts)]
    mixed = [q for q in usable if 0 < sum(q.correct) < q.k]
    picked = {q.id for q in mixed}
    return (mixed + [q for q in usable if q.id not in picked])[:count]


def plot_step_scores(questions: Sequence[Question], path: str | Path, count: int = 4) -> Path | None:
    """Step scores of every draft of a few questions; None (and a log line) when no record has step scores."""
    chosen = pick_questions(questions, count)
    if not chosen:
        logger.info("no step_scores in the results (original format?); step-score plot skipped")
        return None
    cols = min(2, len(chosen))
    rows = (len(chosen) + cols - 1) // cols
    from matplotlib.ticker import MaxNLocator

    fig = _figure(6 * cols, 3.6 * rows)
    for i, q in enumerate(chosen):
        ax = fig.add_subplot(rows, cols, i + 1)
        best = rank_order(q.scores)[0]
        for j, d in enumerate(q.drafts):
            if not d.step_scores or j == best:
                continue
            ax.plot(range(1, len(d.step_scores) + 1), d.step_scores, color="tab:green" if q.correct[j] else "tab:red",
                    lw=0.8, alpha=0.35)
        d = q.drafts[best]
        if d.step_scores:
            ax.plot(range(1, len(d.step_scores) + 1), d.step_scores, color="tab:green" if q.correct[best] else "tab:red",
                    lw=2.5, marker="o", ms=3)
        verdict = "right" if q.correct[best] else "wrong"
        ax.set_title(f"{q.id}: {sum(q.correct)}/{q.k} drafts right; selected draft {d.index} ({d.score:.2f}) {verdict}",
                     fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("step")
        ax.set_ylabel("SPRM step score")
        ax.grid(alpha=0.3)
    fig.suptitle("thick: selected (Best-of-K by SPRM); thin: rejected; green right, red wrong", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def write_plots(report: dict, questions: Sequence[Question], out_dir: str | Path) -> list[Path]:
    """Both plots into ``out_dir`` (created); returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [plot_accuracy_vs_n(report, out / "accuracy_vs_n.png")]
    steps = plot_step_scores(questions, out / "step_scores.png")
    return written + ([steps] if steps else [])
