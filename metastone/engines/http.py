"""Clients of the policy service (``/v1/completions``, round-robin over URLs) and the scoring service (``/score_ids``)."""

from __future__ import annotations

import asyncio
import itertools

from metastone.engines.types import DraftRequest, GenResult, Sampling
from metastone.serve.scoring import TraceScore

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
        sprm = choice.get("sprm")  # a service that scores while generating (serve-policy --score_while_generating)
        score = TraceScore(sprm["value"], sprm["all_scores"], sprm["score_positions"]) if sprm else None
        return GenResult(choice["text"], list(ids), choice.get("finish_reason") or "length", choice.get("stop_reason"),
                         score=score)

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
