"""In-process engines: a policy (``HFPolicy`` or vLLM's ``LLM``) and a scorer (``HFScorer`` or ``VLLMScorer``),
each in a worker thread behind a ``Coalescer``."""

from __future__ import annotations

import logging

from metastone.devices import default_device

from metastone.engines.coalescer import Coalescer
from metastone.engines.types import DraftRequest, GenResult, Sampling, ServiceDown
from metastone.serve.scoring import TraceScore, check_batch
from metastone.serve.step_scores import StepScoreCollector

logger = logging.getLogger(__name__)


def engine_died(exc: BaseException, what: str) -> ServiceDown | None:
    """A ``ServiceDown`` naming the engine when ``exc`` says its process is gone (vLLM's ``EngineDeadError``,
    unrecoverable: every later call fails the same way), else None (a failure of this call only)."""
    if not any(t.__name__ == "EngineDeadError" for t in type(exc).__mro__):
        return None
    return ServiceDown(f"the in-process vLLM {what} engine died ({type(exc).__name__}: {exc}); its log above names the "
                       "cause. Finished drafts are recorded: rerun the same command to resume.")


class LocalGenerator:
    """An in-process policy (``HFPolicy`` or vLLM's ``LLM``) in a worker thread; concurrent calls are merged
    into one engine batch (``Coalescer``), each request keeping its own seed and sampling options.

    ``score_while_generating``: the policy applies the SPRM head (from ``head_path``, default the model folder)
    as it decodes and each ``GenResult`` carries its ``score``, the same step scores the separate scorer
    gives, without running the draft again (vLLM on CPU: ``serve/step_scores.py``; HF: ``HFPolicy.attach_head``)."""

    def __init__(self, backend: str, model_dir: str, *, dtype: str = "bfloat16", device: str | None = None,
                 kv_cache_gib: float | None = None, cpu_sampling: bool = True, score_while_generating: bool = False,
                 head_path: str | None = None, **engine_kwargs):
        self.backend = backend
        self.step_scores = None
        if head_path is not None and not score_while_generating:
            raise ValueError("head_path only applies with score_while_generating=True.")
        if backend == "hf":
            from metastone.serve.hf.policy import HFPolicy

            self.policy = HFPolicy(model_dir, device=default_device(device), dtype=dtype)
            if score_while_generating:
                self.step_scores = StepScoreCollector(model_dir, head_path, config=self.policy.attach_head(head_path))
        elif backend == "vllm":
            from metastone.serve.vllm.engine import build_llm, uses_cpu_sampling

            if score_while_generating:
                self.step_scores = StepScoreCollector(model_dir, head_path, vllm=True)
            self.llm, options = build_llm(model_dir, role="policy", dtype=dtype, kv_cache_gib=kv_cache_gib,
                                          cpu_sampling=cpu_sampling, step_scores=self.step_scores, **engine_kwargs)
            self.cpu_sampling = uses_cpu_sampling(options)
        else:
            raise ValueError(f"unknown local backend {backend!r}; expected 'hf' or 'vllm'.")
        self._batcher = Coalescer(self._run)

    def _run(self, items: list[tuple[DraftRequest, Sampling]]) -> list[GenResult]:
        if self.backend == "hf":
            return self._run_hf(items)
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from metastone.serve.vllm.cpu_sampling import split_sampling

        params, keys = [], []
        for r, s in items:
            fields, extra = (split_sampling(s.top_p, s.repetition_penalty) if self.cpu_sampling
                             else ({"top_p": s.top_p, "repetition_penalty": s.repetition_penalty}, None))
            if self.step_scores is not None:
                keys.append(self.step_scores.new_key())
                extra = {**(extra or {}), **self.step_scores.request_args(keys[-1])}
            params.append(SamplingParams(n=1, seed=r.seed, max_tokens=s.max_tokens, temperature=s.temperature,
                                         extra_args=extra, **fields, stop=list(s.stop) or None, skip_special_tokens=False,
                                         stop_token_ids=list(s.stop_token_ids) or None))
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=r.prompt_ids) for r, _ in items], params, use_tqdm=False)
        results = [GenResult(o.outputs[0].text, list(o.outputs[0].token_ids), o.outputs[0].finish_reason or "length",
                             o.outputs[0].stop_reason) for o in outs]
        for key, (r, _), res in zip(keys, items, results):
            res.score = self.step_scores.collect(key, r.prompt_ids, res.token_ids)
        return results

    def _run_hf(self, items: list[tuple[DraftRequest, Sampling]]) -> list[GenResult]:
        """``HFPolicy`` takes one ``Sampling`` per call: one call per distinct ``Sampling``, results in order."""
        groups: dict[Sampling, list[int]] = {}
        for i, (_, s) in enumerate(items):
            groups.setdefault(s, []).append(i)
        results: list[GenResult | None] = [None] * len(items)
        for s, rows in groups.items():
            drafts = self.policy.generate([items[i][0].prompt_ids for i in rows], [items[i][0].seed for i in rows], s)
            for i, d in zip(rows, drafts):
                results[i] = GenResult(d.text, d.token_ids, d.finish_reason, d.stop_reason)
                if self.step_scores is not None:
                    results[i].score = self.step_scores.trace_score(items[i][0].prompt_ids, d.token_ids, d.token_probs)
        return results

    async def generate(self, requests: list[DraftRequest], sampling: Sampling) -> list[GenResult | Exception]:
        try:
            return await self._batcher.submit([(r, sampling) for r in requests])
        except Exception as exc:  # noqa: BLE001 - reported per draft; the runner retries each alone
            dead = engine_died(exc, "policy")
            if dead is not None:  # nothing to retry: the run stops (ServiceDown)
                return [dead] * len(requests)
            logger.warning("local generation of %d drafts failed: %s", len(requests), exc)
            return [exc] * len(requests)

    async def close(self) -> None:
        """Stop vLLM's engine processes now (its idle engine core busy-polls a CPU core until exit)."""
        if self.backend == "vllm" and getattr(self, "llm", None) is not None:
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None
        if self.step_scores is not None:
            self.step_scores.cleanup()


class LocalScorer:
    """An in-process scorer (``HFScorer`` or ``VLLMScorer``); concurrent calls are merged into one batch."""

    def __init__(self, scorer):
        self.scorer = scorer
        self._batcher = Coalescer(self._run)

    def _run(self, items: list[tuple[list[int], int]]) -> list[TraceScore]:
        return self.scorer.score_ids([seq for seq, _ in items], [n for _, n in items])

    async def score(self, sequences: list[list[int]], prompt_lens: list[int]) -> list[TraceScore]:
        # checked per call, before merging: an error names this caller's sequence index, not the merged batch's
        lens = check_batch(sequences, prompt_lens, None)
        try:
            return await self._batcher.submit(list(zip(sequences, lens)))
        except Exception as exc:
            dead = engine_died(exc, "scorer")
            if dead is not None:
                raise dead from exc
            raise

    async def close(self) -> None:
        """Stop a vLLM scorer's engine processes now (idle, they busy-poll a CPU core until exit)."""
        close = getattr(self.scorer, "close", None)
        if close is not None:
            close()
