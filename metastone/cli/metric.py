"""``metastone metric``: Best-of-N by SPRM score, votes and pass@k from saved drafts (``test/compute_metric.py`` wraps it).

The original flags keep working (``--task --result_paths GLOB --N``); ``--N`` also takes a list
(``2,8,32`` = low/medium/high, the default, clipped to the drafts per question). Prints one table
(accuracy %, bootstrap 95% CI over questions); C-EVAL adds per-category and per-subject accuracy
over all drafts. See docs/metrics.md for every metric.

    metastone metric --task aime24 --result_paths 'results/aime24_*.jsonl' --json metrics.json --plot plots/
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def make_parser(subparsers):
    p = subparsers.add_parser("metric", help="Best-of-N / vote / pass@k metrics over saved drafts", description=__doc__)
    p.add_argument("--task", required=True, help="task name: aime24, aime25, ceval, livecodebench, humaneval, demo")
    p.add_argument("--result_paths", "--result-paths", dest="result_paths", nargs="+", required=True,
                   help="result files: globs, comma-separated or several (draft records or the original output format)")
    p.add_argument("--N", dest="N", default=None,
                   help="subset sizes, e.g. 2 or 2,8,32 (default 2,8,32 = low/medium/high, clipped to the drafts per question)")
    p.add_argument("--input_file", "--input-file", dest="input_file", default=None,
                   help="task data file, if not the bundled one (the file the results were generated from)")
    p.add_argument("--json", dest="json_out", default=None, help="write the full report (per question too) as JSON here")
    p.add_argument("--plot", default=None, help="folder for accuracy_vs_n.png and step_scores.png")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the 95%% intervals (0: none)")
    p.add_argument("--vote_samples", "--vote-samples", dest="vote_samples", type=int, default=256,
                   help="random n-subsets per question for the vote estimates")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and the vote subsets")
    p.add_argument("--grading", choices=["ours", "original"], default="ours",
                   help="ours (default): the answer after </think>, its last match; original: the original release's "
                        "rules (AIME: last \\boxed{} in prompt + response; C-EVAL: first 'answer: X' anywhere)")
    p.set_defaults(func=main)
    return p


def main(args) -> int:
    from metastone.eval.tasks import load_task
    from metastone.metrics.format import format_report
    from metastone.metrics.report import evaluate

    with load_task(args.task, args.input_file) as task:
        report, questions = evaluate(task, args.result_paths, args.N, bootstrap=args.bootstrap, seed=args.seed,
                                     vote_samples=args.vote_samples, curve=args.plot is not None,
                                     grading=args.grading)
    print(format_report(report))
    if args.json_out:
        out = Path(args.json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        logger.info("wrote %s", out)
    if args.plot:
        from metastone.metrics.plots import write_plots

        for path in write_plots(report, questions, args.plot):
            logger.info("wrote %s", path)
    return 0
