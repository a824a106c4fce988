"""Harness throughput: an original-style sequential loop vs our runner, same in-process vLLM engines, one run.

(a) original style: one question at a time, ``--branch`` drafts in flight (2 by default, what one
    original policy server gave), then one score call per draft on re-tokenized text;
(b) ours: ``metastone.harness.runner.run`` with all drafts of all questions in flight in batches,
    scored in batches by the token ids the policy returned;
(c) ours with ``score_while_generating``: the same runner, the policy applies the SPRM head as it
    decodes (``serve/step_scores.py``), no draft is run twice.
(a) and (b) use the same two engines (vLLM policy + vLLM SPRM scorer), (c) a policy engine with the
head attached; all use the same seeds. Prints wall time, the speed-ups and the share of time spent
scoring: for (c) the time it took beyond (b)'s generation of the same drafts (``--no-fused`` skips (c)).

    .venv/bin/python benchmarks/bench_harness.py                      # demo task, SmolLM2-135M-shaped Qwen2
    .venv/bin/python benchmarks/bench_harness.py --model DIR --questions 16 --drafts 8
"""

from __future__ import annotations

import argparse
import asyncio
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


async def main_async(args) -> None:
    from transformers import AutoTokenizer

    from metastone.eval.tasks import load_task
    from metastone.engines import LocalGenerator, LocalScorer
    from metastone.records import RecordStore
    from metastone.harness.runner import RunConfig, pending_requests, run
    from metastone.serve.vllm_scorer import VLLMScorer

    tmp = tempfile.TemporaryDirectory()
    if args.model:
        model_dir = Path(args.model)
    else:
        from bench_scorer import make_default_model

        model_dir = make_default_model(Path(tmp.name))
    task = load_task(args.task)
    task.examples = task.examples[: args.questions]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    max_len = 2048
    generator = LocalGenerator("vllm", str(model_dir), dtype=args.dtype, enforce_eager=True, max_model_len=max_len)
    scorer_a = TimedScorer(LocalScorer(VLLMScorer(model_dir, dtype=args.dtype, max_model_len=max_len)))
    scorer_b = TimedScorer(scorer_a.inner)
    cfg = RunConfig(task=args.task, output_file=str(Path(tmp.name) / "ours.jsonl"), drafts_per_question=args.drafts,
                    model=model_dir.name, max_tokens=args.max_tokens, temperature=0.7, top_p=0.95, repetition_penalty=1.0,
                    stop=tuple(task.stop), chat_template=getattr(task, "use_chat_template", True),
                    batch_size=args.questions * args.drafts, workers=1)
    with RecordStore(Path(tmp.name) / "warm.jsonl") as store:  # warm both engines up
        await run(RunConfig(**{**cfg.__dict__, "output_file": str(Path(tmp.name) / "warm.jsonl"), "drafts_per_question": 1}),
                  type(task)(task.examples[:1]), tokenizer, generator, scorer_b, store)
    scorer_b.seconds = 0.0
    vllm_scorer = scorer_a.inner.scorer
    vllm_scorer.reuse_prefix = False  # (a) scores every draft by a full prefill, as the original did
    vllm_scorer.reset_prefix_cache()
    with RecordStore(Path(tmp.name) / "plan.jsonl") as empty:
        requests = pending_requests(cfg, task, tokenizer, empty)

    computed = {}
    t = time.perf_counter()
    before = vllm_scorer.stats["computed_tokens"]
    await original_style(requests, generator, scorer_a, tokenizer, cfg.sampling, args.branch)
    a_secs = time.perf_counter() - t
    computed["a"] = vllm_scorer.stats["computed_tokens"] - before
    vllm_scorer.reuse_prefix = not args.no_prefix_reuse
    vllm_scorer.reset_prefix_cache()  # (a)'s drafts are (b)'s: nothing of them may be cached for (b)
    before = vllm_scorer.stats["computed_tokens"]
    t = time.perf_counter()
    with RecordStore(cfg.output_file) as store:
        stats = await run(cfg, task, tokenizer, generator, scorer_b, store)
    b_secs = time.perf_counter() - t
    computed["b"] = vllm_scorer.stats["computed_tokens"] - before
    n = len(requests)
    print(f"\n{args.questions} questions x {args.drafts} drafts, up to {args.max_tokens} tokens, model {model_dir.name}, "
          f"{os.cpu_count()} CPU threads, vLLM policy + vLLM SPRM scorer in one process")
    print(f"{'harness':<58} {'seconds':>8} {'drafts/s':>9} {'scoring share':>14} {'scoring s':>9} {'scored tok/draft':>17}")
    for key, name, secs, scorer in (("a", f"(a) original style: 1 question at a time, {args.branch} drafts in flight", a_secs, scorer_a),
                                    ("b", "(b) metastone runner: all drafts in flight, batched scores", b_secs, scorer_b)):
        print(f"{name:<58} {secs:>8.1f} {n / secs:>9.2f} {100 * scorer.seconds / secs:>13.1f}% {scorer.seconds:>9.1f} "
              f"{computed[key] / n:>17.1f}")
    print(f"speed-up (a)/(b): {a_secs / b_secs:.2f}x; generated {stats.tokens} tokens in (b)")
    if args.no_fused:
        return
    await generator.close()  # (c) runs its own policy engine: the head attached, the same weights
    fused = LocalGenerator("vllm", str(model_dir), dtype=args.dtype, enforce_eager=True, max_model_len=max_len,
                           score_while_generating=True)
    scorer_c = TimedScorer(scorer_a.inner)
    with RecordStore(Path(tmp.name) / "warm_c.jsonl") as store:
        await run(RunConfig(**{**cfg.__dict__, "output_file": str(Path(tmp.name) / "warm_c.jsonl"), "drafts_per_question": 1}),
                  type(task)(task.examples[:1]), tokenizer, fused, scorer_c, store)
    scorer_c.seconds = 0.0
    before = vllm_scorer.stats["computed_tokens"]
    t = time.perf_counter()
    with RecordStore(Path(tmp.name) / "fused.jsonl") as store:
        stats_c = await run(RunConfig(**{**cfg.__dict__, "output_file": str(Path(tmp.name) / "fused.jsonl")}),
                            task, tokenizer, fused, scorer_c, store)
    c_secs = time.perf_counter() - t
    await fused.close()
    b_gen = b_secs - scorer_b.seconds
    extra = c_secs - b_gen
    rerun = (vllm_scorer.stats["computed_tokens"] - before) / n
    name = "(c) runner, scored while generating (no second pass)"
    print(f"{name:<58} {c_secs:>8.1f} {n / c_secs:>9.2f} {100 * max(extra, 0) / c_secs:>13.1f}% {extra:>9.1f} {rerun:>17.1f}")
    print(f"speed-up (a)/(c): {a_secs / c_secs:.2f}x, (b)/(c): {b_secs / c_secs:.2f}x; (c)'s scoring = its time minus (b)'s "
          f"generation of the same drafts ({b_gen:.1f} s); generated {stats_c.tokens} tokens in (c)")
    same = _same_scores(Path(cfg.output_file), Path(tmp.name) / "fused.jsonl")
    print(f"(b) and (c) drafts: {same}")


def _same_scores(path_b: Path, path_c: Path) -> str:
    """How (c)'s records compare with (b)'s: the same tokens, and the largest step-score difference."""
    import json

    def load(path):
        return {r["key"]: r for r in map(json.loads, path.read_text().splitlines())}

    b, c = load(path_b), load(path_c)
    same_tokens = sum(b[k]["token_ids"] == c[k]["token_ids"] for k in b if k in c)
    diffs = [abs(x - y) for k in b if k in c and b[k]["token_ids"] == c[k]["token_ids"]
             for x, y in zip(b[k]["step_scores"], c[k]["step_scores"])]
    return (f"{same_tokens}/{len(b)} identical token for token; step scores of those differ by at most "
            f"{max(diffs, default=0.0):.2e} ({len(diffs)} steps)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model")
    parser.add_argument("--task", default="demo")
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--drafts", type=int, default=8)
    parser.add_argument("--branch", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--no-fused", action="store_true", help="skip (c), scoring while generating")
    parser.add_argument("--no-prefix-reuse", action="store_true",
                        help="(b) also scores every draft by a full prefill (the scorer before prefix reuse)")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
