"""Compute-matched search comparison: accuracy vs generated tokens for Best-of-N, beam search and MCTS.

Same policy, same SPRM head, same questions, same seeds. For every token budget B (generated tokens
per question, all requests together):

- **BoN@B**: the question's drafts 0, 1, 2, ... (sampled once, ``--bon_max`` of them, each to the end of
  its trace) are taken in index order while their tokens add up to at most B; the SPRM picks among them
  (a draft the budget does not cover is never seen);
- **beam@B** / **MCTS@B**: one search per question with ``token_budget=B``.

The chosen trace is graded with the task's grader (reports only: no strategy sees the answer). Prints a
table (accuracy, mean generated tokens, nodes, share of chosen traces that finished, wall seconds per
question with ``--concurrency`` questions side by side) and writes ``search_bench.json`` (rows with
per-question outcomes, saved as each row is measured) and ``accuracy_vs_tokens.png`` under ``--out``.
A rerun with the same settings reuses the rows already measured: a killed run, or one given more
budgets or strategies, measures only what is missing. The demo task is a few-shot completion prompt (no chat
template); its steps are cut at the separators the head's ``sprm_config.json`` names.

    .venv/bin/python benchmarks/bench_search.py                                   # demo model + head, vLLM
    .venv/bin/python benchmarks/bench_search.py --questions 64 --budgets 64,128,256,512
    .venv/bin/python benchmarks/bench_search.py --model TINY_DIR --head TINY_DIR --backend hf --questions 4 --budgets 32,64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from metastone.cli.flags import add_config_flags
from metastone.sampling import Sampling


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="HF model folder (default: the demo model, SmolLM2-135M as Qwen2)")
    p.add_argument("--head", default=None, help="SPRM head folder/file (default: the demo model's fitted head)")
    p.add_argument("--task", default="demo")
    p.add_argument("--input_file", default=None, help="task data (default: data/demo/test.jsonl)")
    p.add_argument("--questions", type=int, default=32, help="first N questions of the task")
    p.add_argument("--budgets", default="64,128,256,512", help="generated tokens per question, comma-separated")
    p.add_argument("--strategies", default="bon,beam,mcts")
    p.add_argument("--backend", choices=["vllm", "hf"], default="vllm")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--seed", type=int, default=0)
    # the paper's sampling (metastone.sampling.Sampling), but 64-token traces: the demo task's short answers
    add_config_flags(p, Sampling, only=("max_tokens", "temperature", "top_p", "repetition_penalty"),
                     defaults={"max_tokens": 64}, helps={"max_tokens": "most tokens of one trace"})
    p.add_argument("--bon_max", type=int, default=48, help="drafts sampled per question for BoN (enough to fill the largest budget)")
    p.add_argument("--beam_width", type=int, default=2)
    p.add_argument("--expansions", type=int, default=4)
    p.add_argument("--max_step_tokens", type=int, default=32)
    p.add_argument("--max_depth", type=int, default=16)
    p.add_argument("--c_uct", type=float, default=None, help="MCTS exploration (default: MCTSConfig's)")
    p.add_argument("--concurrency", type=int, default=16,
                   help="questions searched side by side (their requests share engine batches; results do not depend on it)")
    p.add_argument("--prefix_cache_mib", type=float, default=512,
                   help="HF backend: LRU of prefix KV caches, so a node's scoring runs only its new step (0 = off)")
    p.add_argument("--out", default="results/bench_search", help="folder for search_bench.json and the plot")
    return p.parse_args(argv)


def engines(args, model: Path, head: Path):
    from metastone.engines import LocalGenerator, LocalScorer

    if args.backend == "hf":
        from metastone.serve.hf.scorer import HFScorer

        return LocalGenerator("hf", model, dtype=args.dtype, device="cpu"), \
            LocalScorer(HFScorer(model, head_path=head, dtype=args.dtype, prefix_cache_mib=args.prefix_cache_mib))
    import torch

    from metastone.serve.vllm.scorer import VLLMScorer

    kw = {"max_model_len": 2048}
    if torch.cuda.is_available():
        kw["gpu_memory_utilization"] = 0.3
    return LocalGenerator("vllm", model, dtype=args.dtype, enforce_eager=not torch.cuda.is_available(), **kw), \
        LocalScorer(VLLMScorer(model, head_path=head, dtype=args.dtype, **kw))


def bon_within(drafts, budget: int):
    """Drafts in index order while their tokens fit in ``budget``; the SPRM's pick among them (ties: lower index)."""
    from metastone.search.common import pick_best

    used, kept = 0, []
    for d in sorted(drafts, key=lambda n: n.path):
        if used + len(d.step_ids) > budget:
            break
        used += len(d.step_ids)
        kept.append(d)
    return pick_best(kept), used, len(kept)


# what a measured row depends on besides its strategy and budget: a rerun reuses rows whose settings match
SETTINGS = ("model", "head", "task", "input_file", "questions", "backend", "dtype", "seed", "max_tokens", "temperature",
            "top_p", "repetition_penalty", "bon_max", "beam_width", "expansions", "max_step_tokens", "max_depth", "c_uct")


def settings_of(args, model: Path, head: Path) -> dict:
    out = {k: getattr(args, k) for k in SETTINGS}
    out.update(model=str(model), head=str(head))
    return out


def load_done_rows(path: Path, settings: dict) -> list[dict]:
    """Rows of an earlier run with the same settings (a killed or extended benchmark redoes nothing)."""
    if not path.is_file():
        return []
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SystemExit(f"{path}: not valid JSON ({exc}); move it away to start the benchmark afresh.") from None
    if report.get("settings") != settings:
        changed = sorted(k for k in settings if report.get("settings", {}).get(k) != settings[k])
        print(f"note: {path} was measured with other settings ({', '.join(changed) or 'unknown'}); measuring afresh")
        return []
    return list(report.get("rows", []))


async def run_bench(args) -> dict:
    from transformers import AutoTokenizer

    from metastone.eval.tasks import load_task
    from metastone.harness.runner import build_prompt
    from metastone.search import BeamSearchConfig, BestOfNConfig, MCTSConfig, Question, run_search, step_spec_for, trace_text

    if args.model is None or args.head is None:
        from metastone.assets.smollm2 import demo_head_path, demo_model_dir

        model = Path(args.model) if args.model else demo_model_dir()
        head = Path(args.head) if args.head else demo_head_path()
    else:
        model, head = Path(args.model), Path(args.head)
    budgets = sorted({int(b) for b in args.budgets.split(",") if b.strip()})
    strategies = [s for s in args.strategies.split(",") if s]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = settings_of(args, model, head)
    rows = load_done_rows(out / "search_bench.json", settings)
    done = {(r["strategy"], r["budget"]) for r in rows}
    todo = [(s, b) for s in strategies for b in budgets if (s, b) not in done]
    tokenizer = AutoTokenizer.from_pretrained(model)
    spec = step_spec_for(tokenizer, head)
    task = load_task(args.task, args.input_file)
    chat = getattr(task, "use_chat_template", True)
    examples = list(task)[: args.questions]
    stop = tuple(getattr(task, "stop", ()) or ())
    common = dict(seed=args.seed, max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                  repetition_penalty=args.repetition_penalty, stop=stop, separator_ids=spec.separator_ids)
    report = {"task": args.task, "questions": len(examples), "model": str(model), "head": str(head),
              "separator_ids": list(spec.separator_ids), "settings": settings, "rows": rows}

    def save(row: dict) -> None:
        rows.append(row)
        rows.sort(key=lambda r: (strategies.index(r["strategy"]) if r["strategy"] in strategies else 99, r["budget"]))
        tmp = out / "search_bench.json.tmp"
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        tmp.replace(out / "search_bench.json")
        print(f"  {row['strategy']}@{row['budget']}: accuracy {row['accuracy']:.3f}, {row['tokens']:.0f} tokens/q, "
              f"{row['seconds']:.2f} s/q", flush=True)

    if not todo:
        task.close()
        return report
    generator, scorer = engines(args, model, head)

    def grade(ids, finish, stop_reason, ex) -> bool:
        return bool(task.grade(trace_text(tokenizer, ids, stop, finish, stop_reason), ex).correct)

    questions = []
    for ex in examples:
        prompt, ids = build_prompt(tokenizer, task.prompt(ex), chat)
        questions.append((ex, Question(ex.id, ids, prompt)))
    gate = asyncio.Semaphore(max(args.concurrency, 1))

    async def search_all(cfg):
        async def one(q):
            async with gate:
                return await run_search(q, generator, scorer, cfg)

        t0 = time.monotonic()
        results = await asyncio.gather(*(one(q) for _, q in questions))
        return results, (time.monotonic() - t0) / max(len(questions), 1)

    try:
        bon_budgets = [b for s, b in todo if s == "bon"]
        if bon_budgets:
            results, secs = await search_all(BestOfNConfig(n=args.bon_max, batch_size=8, **common))
            per_q = [(ex, res.root.children) for (ex, _), res in zip(questions, results)]
            sampled = sum(len(c.step_ids) for _, children in per_q for c in children)
            if sampled / max(len(per_q), 1) < max(bon_budgets):
                print(f"note: {args.bon_max} drafts average {sampled / len(per_q):.0f} tokens per question, less than "
                      f"the largest budget {max(bon_budgets)}; raise --bon_max to fill it")
            for b in bon_budgets:
                per_question, tokens = [], 0
                for ex, children in per_q:
                    best, used, k = bon_within(children, b)
                    ok = bool(best is not None and grade(best.response_ids(), best.finish_reason, best.stop_reason, ex))
                    per_question.append({"id": ex.id, "correct": ok, "tokens": used, "nodes": k,
                                         "node": best.key if best is not None else None})
                    tokens += used
                n = len(per_q)
                share = tokens / max(sampled, 1)  # the part of the sampling time this budget used
                save({"strategy": "bon", "budget": b, "accuracy": sum(q["correct"] for q in per_question) / n,
                      "tokens": tokens / n, "nodes": sum(q["nodes"] for q in per_question) / n, "seconds": secs * share,
                      "per_question": per_question})
        for name, b in [(s, b) for s, b in todo if s != "bon"]:
            scorer.scorer.reset_prefix_cache()  # each row's scored tokens are its own (no row reuses another's nodes)
            if name == "beam":
                cfg = BeamSearchConfig(beam_width=args.beam_width, expansions=args.expansions, max_depth=args.max_depth,
                                       max_step_tokens=args.max_step_tokens, token_budget=b, **common)
            else:
                extra = {"c_uct": args.c_uct} if args.c_uct is not None else {}
                cfg = MCTSConfig(expansions=args.expansions, max_depth=args.max_depth, max_step_tokens=args.max_step_tokens,
                                 token_budget=b, max_iterations=None, **extra, **common)
            results, secs = await search_all(cfg)
            per_question = []
            for (ex, _), res in zip(questions, results):
                ok = bool(res.token_ids and grade(res.token_ids, res.finish_reason, res.stop_reason, ex))
                per_question.append({"id": ex.id, "correct": ok, "tokens": res.stats.tokens_generated,
                                     "nodes": res.stats.nodes_expanded, "node": res.node, "finished": res.finished,
                                     "stopped_by": res.stats.stopped_by, "score_tokens": res.stats.score_tokens,
                                     "path_tokens": res.stats.score_path_tokens})
            n = len(questions)
            scored = max(1, sum(q["nodes"] for q in per_question))
            save({"strategy": name, "budget": b, "accuracy": sum(q["correct"] for q in per_question) / n,
                  "tokens": sum(q["tokens"] for q in per_question) / n,
                  "nodes": sum(q["nodes"] for q in per_question) / n, "seconds": secs,
                  "finished": sum(bool(q["finished"]) for q in per_question) / n,
                  "score_tokens_per_node": sum(q["score_tokens"] for q in per_question) / scored,
                  "path_tokens_per_node": sum(q["path_tokens"] for q in per_question) / scored,
                  "per_question": per_question})
    finally:
        await generator.close()
        await scorer.close()
        task.close()
    return report


def print_table(report: dict) -> None:
    print(f"{report['task']}: {report['questions']} questions, model {report['model']}, separators {report['separator_ids']}")
    print(f"{'strategy':<8} {'budget':>7} {'accuracy':>9} {'tokens/q':>9} {'nodes/q':>8} {'finished':>9} {'s/q':>7} "
          f"{'scored tok/node':>15} {'path tok/node':>13}")
    for r in report["rows"]:
        done = f"{r['finished']:.2f}" if "finished" in r else "all"
        # scored tok/node: tokens the scorer ran per new node; path tok/node: prompt + path (a full prefill)
        st = f"{r['score_tokens_per_node']:.1f}" if "score_tokens_per_node" in r else "-"
        pt = f"{r['path_tokens_per_node']:.1f}" if "path_tokens_per_node" in r else "-"
        print(f"{r['strategy']:<8} {r['budget']:>7} {r['accuracy']:>9.3f} {r['tokens']:>9.1f} {r['nodes']:>8.1f} "
              f"{done:>9} {r['seconds']:>7.2f} {st:>15} {pt:>13}")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["strategy"] for r in report["rows"]):
        rows = sorted((r for r in report["rows"] if r["strategy"] == name), key=lambda r: r["budget"])
        ax.plot([r["tokens"] for r in rows], [r["accuracy"] for r in rows], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("generated tokens per question (mean)")
    ax.set_ylabel("accuracy of the chosen answer")
    ax.set_title(f"SPRM-guided search, {report['task']} ({report['questions']} questions)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    args = parse_args(argv)
    report = asyncio.run(run_bench(args))
    out = Path(args.out)
    plot(report, out / "accuracy_vs_tokens.png")
    print_table(report)
    print(f"wrote {out / 'search_bench.json'} and {out / 'accuracy_vs_tokens.png'}")


if __name__ == "__main__":
    main()
