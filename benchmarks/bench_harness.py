"""Harness throughput against its own engine, in-process vLLM, the same drafts and seeds, one run.

(d) raw engine: every draft given to the policy engine in one call (``llm.generate`` of all of them),
    no records, no scores: the speed the engine itself reaches on these drafts;
(c) the runner (``metastone.harness.runner.run`` with ``run_config``'s vLLM defaults, what ``metastone
    infer --backend vllm`` and ``metastone demo`` use) with ``score_while_generating``: one engine, the
    policy applies the SPRM head as it decodes (``serve/step_scores.py``), records written per draft;
(b) the same runner with the separate scorer (a second vLLM engine scoring by the token ids the
    policy returned), what the original's two services do;
(a) original style, on the first ``--original-questions`` questions: one question at a time, ``--branch``
    drafts in flight (what one original policy server gave), one score call per draft on re-tokenized text.

The goal (docs/benchmarks.md): (c) within 1.25x of (d). Prints wall time, drafts/s, tokens/s, each
row's time over (d)'s, and whether (b), (c) and (d) produced the same tokens for each seed.

    .venv/bin/python benchmarks/bench_harness.py          # the demo model + its head, 64 demo questions x 8 drafts
    .venv/bin/python benchmarks/bench_harness.py --model DIR --questions 16 --drafts 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path


class TimedScorer:
    """Wraps a LocalScorer and adds up the time spent scoring."""

    def __init__(self, inner):
        self.inner, self.seconds = inner, 0.0

    async def score(self, seqs, lens):
        t = time.perf_counter()
        try:
            return await self.inner.score(seqs, lens)
        finally:
            self.seconds += time.perf_counter() - t

    async def close(self):
        return None


async def original_style(requests, generator, scorer, tokenizer, sampling, branch):
    """Question by question; ``branch`` drafts at a time; one score call per draft on re-encoded text."""
    by_q: dict[str, list] = {}
    for r in requests:
        by_q.setdefault(r.question_id, []).append(r)
    for reqs in by_q.values():
        for i in range(0, len(reqs), branch):
            chunk = reqs[i : i + branch]
            results = await generator.generate(chunk, sampling)
            for req, res in zip(chunk, results):
                ids = tokenizer.encode(req.prompt + res.text, add_special_tokens=False)  # the original re-tokenized
                await scorer.score([ids], [0])


def model_folder(args, root: Path) -> Path:
    if args.model == "demo":  # the demo's released-style folder: SmolLM2-135M-Instruct + its fitted head
        from metastone.assets.smollm2 import demo_head_path
        from metastone.cli.demo import prepare_model_folder

        return prepare_model_folder(root, demo_head_path())
    if args.model:
        return Path(args.model)
    from bench_scorer import make_default_model

    return make_default_model(root)


async def main_async(args) -> None:
    from transformers import AutoTokenizer

    from metastone.engines import LocalGenerator, LocalScorer
    from metastone.eval.tasks import load_task
    from metastone.harness.infer import run_config
    from metastone.harness.runner import pending_requests, run
    from metastone.records import RecordStore
    from metastone.sampling import DEMO_SAMPLING, sampling_kwargs
    from metastone.serve.vllm.cpu import cpu_dtype
    from metastone.serve.vllm.scorer import VLLMScorer

    tmp = tempfile.TemporaryDirectory()
    root = Path(tmp.name)
    model_dir = model_folder(args, root)
    dtype = cpu_dtype(args.dtype)
    task = load_task(args.task)
    task.examples = task.examples[: args.questions]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    engine = dict(dtype=dtype, enforce_eager=True, max_model_len=args.max_model_len)

    def config(name: str):
        given = {k: v for k, v in (("batch_size", args.batch_size), ("workers", args.workers),
                                   ("group_by_question", args.group_by_question or None)) if v is not None}
        return run_config(task, root / f"{name}.jsonl", model_dir, args.drafts, backend="vllm", seed=args.seed,
                          **{**sampling_kwargs(DEMO_SAMPLING), "max_tokens": args.max_tokens}, **given)

    cfg = config("plan")
    with RecordStore(root / "plan.jsonl") as empty:
        requests = pending_requests(cfg, task, tokenizer, empty)
    n = len(requests)
    rows: dict[str, tuple[str, float, dict]] = {}  # key -> (label, seconds, {key: token ids})

    async def warm(generator, scorer) -> None:
        one = type(task)(task.examples[:1])
        warm_cfg = run_config(one, root / f"warm-{time.monotonic_ns()}.jsonl", model_dir, 2, backend="vllm",
                              max_tokens=args.max_tokens)
        with RecordStore(warm_cfg.output_file) as store:
            await run(warm_cfg, one, tokenizer, generator, scorer, store)

    async def runner_row(key: str, label: str, generator, scorer) -> None:
        row_cfg = config(key)
        t = time.perf_counter()
        with RecordStore(row_cfg.output_file) as store:
            stats = await run(row_cfg, task, tokenizer, generator, scorer, store)
        secs = time.perf_counter() - t
        assert not stats.failures, stats.failures[:3]
        recs = [json.loads(line) for line in Path(row_cfg.output_file).read_text().splitlines()]
        grouped = ", one question per batch" if row_cfg.group_by_question else ""
        rows[key] = (f"{label} (batch {row_cfg.batch_size} x {row_cfg.workers} in flight{grouped})", secs,
                     {r["key"]: r["token_ids"] for r in recs})

    generator = LocalGenerator("vllm", str(model_dir), **engine)
    scorer = TimedScorer(LocalScorer(VLLMScorer(model_dir, dtype=dtype, max_model_len=args.max_model_len)))
    await warm(generator, scorer)

    generator.llm.reset_prefix_cache()
    t = time.perf_counter()
    results = await generator.generate(requests, cfg.sampling)
    d_secs = time.perf_counter() - t
    rows["d"] = ("(d) raw engine: all drafts in one call", d_secs, {r.key: g.token_ids for r, g in zip(requests, results)})

    generator.llm.reset_prefix_cache()
    scorer.inner.scorer.reset_prefix_cache()
    scorer.seconds = 0.0
    await runner_row("b", "(b) runner + separate vLLM scorer", generator, scorer)
    b_scoring = scorer.seconds

    if args.original_questions:
        sub = [r for r in requests if r.question_id in {ex.id for ex in task.examples[: args.original_questions]}]
        vllm_scorer = scorer.inner.scorer
        vllm_scorer.reuse_prefix = False  # the original scored every draft by a full prefill
        generator.llm.reset_prefix_cache()
        vllm_scorer.reset_prefix_cache()
        t = time.perf_counter()
        await original_style(sub, generator, scorer, tokenizer, cfg.sampling, args.branch)
        a_secs = time.perf_counter() - t
        a_row = (f"(a) original style on {len(sub)} drafts: 1 question at a time, {args.branch} in flight", a_secs, len(sub))
    await generator.close()
    await scorer.inner.close()

    fused = LocalGenerator("vllm", str(model_dir), score_while_generating=True, **engine)
    unused = TimedScorer(None)  # every draft comes back scored; a call to the scorer would fail
    await warm(fused, unused)
    fused.llm.reset_prefix_cache()
    await runner_row("c", "(c) runner, scored while generating", fused, unused)
    await fused.close()

    tokens = sum(len(ids) for ids in rows["d"][2].values())
    print(f"\n{args.questions} questions x {args.drafts} drafts = {n} drafts, <= {args.max_tokens} tokens, T {DEMO_SAMPLING.temperature}, "
          f"top-p {DEMO_SAMPLING.top_p}, seed {args.seed}; model {model_dir.name} ({dtype}), {os.cpu_count()} CPU threads; "
          f"(d) generated {tokens} tokens")
    print(f"{'row':<78} {'seconds':>8} {'drafts/s':>9} {'tokens/s':>9} {'x (d)':>7} {'same tokens as (d)':>19}")
    for key in ("d", "c", "b"):
        label, secs, ids = rows[key]
        same = sum(ids.get(k) == v for k, v in rows["d"][2].items())
        toks = sum(len(v) for v in ids.values())
        print(f"{label:<78} {secs:>8.1f} {n / secs:>9.2f} {toks / secs:>9.0f} {secs / d_secs:>6.2f}x {same:>12}/{n}")
    print(f"(b) spent {b_scoring:.1f} s in scoring calls (overlapping generation)")
    if args.original_questions:
        label, secs, m = a_row
        print(f"{label:<78} {secs:>8.1f} {m / secs:>9.2f} {'':>9} {(secs / m) / (d_secs / n):>6.2f}x  (per draft)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo", help="'demo' (the demo model + its head), a model folder with a "
                        "head, or '' for a SmolLM2-135M-shaped random Qwen2")
    parser.add_argument("--task", default="demo")
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--drafts", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--branch", type=int, default=2)
    parser.add_argument("--original-questions", type=int, default=8, help="questions for row (a); 0 skips it")
    parser.add_argument("--batch-size", type=int, default=None, help="the runner's batch (default: run_config's for vllm)")
    parser.add_argument("--workers", type=int, default=None, help="the runner's batches in flight (default: run_config's)")
    parser.add_argument("--group-by-question", action="store_true", help="batches hold one question's drafts")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 where the CPU has it natively, else float32")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
