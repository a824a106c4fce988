"""Compute-matched search comparison: accuracy vs generated tokens for Best-of-N, beam search and MCTS.

Same policy, same SPRM head, same questions, same seeds. For every token budget B (generated tokens
per question, all requests together):

- **BoN@B**: the question's drafts 0, 1, 2, ... (sampled once, ``--bon_max`` of them, each to the end of
  its trace) are taken in index order while their tokens add up to at most B; the SPRM picks among them
  (a draft the budget does not cover is never seen);
- **beam@B** / **MCTS@B**: one search per question with ``token_budget=B``.

The chosen trace is graded with the task's grader (reports only: no strategy sees the answer). Prints a
table (accuracy, mean generated tokens, nodes, seconds per question) and writes ``search_bench.json``
and ``accuracy_vs_tokens.png`` under ``--out``. The demo task is a few-shot completion prompt (no chat
template); its steps are cut at the separators the head's ``sprm_config.json`` names.

    .venv/bin/python benchmarks/bench_search.py                                   # demo model + head, vLLM
    .venv/bin/python benchmarks/bench_search.py --questions 64 --budgets 64,128,256,512
    .venv/bin/python benchmarks/bench_search.py --model TINY_DIR --head TINY_DIR --backend hf --questions 4 --budgets 32,64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")


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
    p.add_argument("--max_tokens", type=int, default=64, help="most tokens of one trace")
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top_p", type=float, default=0.95)
    p.add_argument("--repetition_penalty", type=float, default=1.05)
    p.add_argument("--bon_max", type=int, default=48, help="drafts sampled per question for BoN (enough to fill the largest budget)")
    p.add_argument("--beam_width", type=int, default=2)
    p.add_argument("--expansions", type=int, default=4)
    p.add_argument("--max_step_tokens", type=int, default=32)
    p.add_argument("--max_depth", type=int, default=16)
    p.add_argument("--c_uct", type=float, default=None, help="MCTS exploration (default: MCTSConfig's)")
    p.add_argument("--concurrency", type=int, default=16,
                   help="questions searched side by side (their requests share engine batches; results do not depend on it)")
    p.add_argument("--out", default="results/bench_search", help="folder for search_bench.json and the plot")
    return p.parse_args(argv)


def engines(args, model: Path, head: Path):
    from metastone.harness.engines import LocalGenerator, LocalScorer

    if args.backend == "hf":
        from metastone.serve.hf_backend import HFScorer

        return LocalGenerator("hf", model, dtype=args.dtype, device="cpu"), \
            LocalScorer(HFScorer(model, head_path=head, dtype=args.dtype))
    import torch

    from metastone.serve.vllm_scorer import VLLMScorer

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
    tokenizer = AutoTokenizer.from_pretrained(model)
    spec = step_spec_for(tokenizer, head)
    task = load_task(args.task, args.input_file)
    chat = getattr(task, "use_chat_template", True)
    examples = list(task)[: args.questions]
    stop = tuple(getattr(task, "stop", ()) or ())
    common = dict(seed=args.seed, max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                  repetition_penalty=args.repetition_penalty, stop=stop, separator_ids=spec.separator_ids)
    generator, scorer = engines(args, model, head)
    rows = []

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

    if "bon" in strategies:
        results, secs = await search_all(BestOfNConfig(n=args.bon_max, batch_size=8, **common))
        per_q = [(ex, res.root.children) for (ex, _), res in zip(questions, results)]
        sampled = sum(len(c.step_ids) for _, children in per_q for c in children)
        if sampled / max(len(per_q), 1) < max(budgets):
            print(f"note: {args.bon_max} drafts average {sampled / len(per_q):.0f} tokens per question, less than the "
                  f"largest budget {max(budgets)}; raise --bon_max to fill it")
        for b in budgets:
            correct, tokens, drafts = 0, 0, 0
            for ex, children in per_q:
                best, used, k = bon_within(children, b)
                tokens, drafts = tokens + used, drafts + k
                if best is not None:
                    correct += grade(best.response_ids(), best.finish_reason, best.stop_reason, ex)
            n = len(per_q)
            share = tokens / max(sampled, 1)  # the part of the sampling time this budget used
            rows.append({"strategy": "bon", "budget": b, "accuracy": correct / n, "tokens": tokens / n,
                         "nodes": drafts / n, "seconds": secs * share})
    for name in [s for s in strategies if s != "bon"]:
        for b in budgets:
            if name == "beam":
                cfg = BeamSearchConfig(beam_width=args.beam_width, expansions=args.expansions, max_depth=args.max_depth,
                                       max_step_tokens=args.max_step_tokens, token_budget=b, **common)
            else:
                extra = {"c_uct": args.c_uct} if args.c_uct is not None else {}
                cfg = MCTSConfig(expansions=args.expansions, max_depth=args.max_depth, max_step_tokens=args.max_step_tokens,
                                 token_budget=b, max_iterations=None, **extra, **common)
            correct = tokens = nodes = 0
            results, secs = await search_all(cfg)
            for (ex, _), res in zip(questions, results):
                tokens += res.stats.tokens_generated
                nodes += res.stats.nodes_expanded
                correct += grade(res.token_ids, res.finish_reason, res.stop_reason, ex) if res.token_ids else 0
            n = len(questions)
            rows.append({"strategy": name, "budget": b, "accuracy": correct / n, "tokens": tokens / n, "nodes": nodes / n,
                         "seconds": secs})
            print(f"  {name}@{b}: accuracy {correct / n:.3f}, {tokens / n:.0f} tokens/q, {secs:.2f} s/q", flush=True)
    task.close()
    return {"model": str(model), "head": str(head), "task": args.task, "questions": len(questions),
            "separator_ids": list(spec.separator_ids), "args": vars(args), "rows": rows}


def print_table(report: dict) -> None:
    print(f"{report['task']}: {report['questions']} questions, model {report['model']}, separators {report['separator_ids']}")
    print(f"{'strategy':<8} {'budget':>7} {'accuracy':>9} {'tokens/q':>9} {'nodes/q':>8} {'s/q':>7}")
    for r in report["rows"]:
        print(f"{r['strategy']:<8} {r['budget']:>7} {r['accuracy']:>9.3f} {r['tokens']:>9.1f} {r['nodes']:>8.1f} {r['seconds']:>7.2f}")


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
    out.mkdir(parents=True, exist_ok=True)
    (out / "search_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out / "accuracy_vs_tokens.png")
    print_table(report)
    print(f"wrote {out / 'search_bench.json'} and {out / 'accuracy_vs_tokens.png'}")


if __name__ == "__main__":
    main()
