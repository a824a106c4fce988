"""Formatting a metrics report: the printed table (metrics x N, accuracy in %, CIs), then the task summary."""

from __future__ import annotations

from metastone.metrics.compute import RULES


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
