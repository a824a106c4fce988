"""Clients of the policy service (``/v1/completions``, round-robin over URLs) and the scoring service (``/score_ids``).

Both wait for a service that is down: a request that cannot connect, loses its connection, or is
answered 502/503/504 is sent again with backoff (0.5 s doubling to 10 s, or the service's
``Retry-After``) until the service answers or ``wait_s`` (default 600 s) have passed since that
request's first failure; then ``ServiceDown`` is raised and the run stops, its records kept (rerun the
same command to resume). One warning when a service goes down and one line when it is back, whatever
the number of requests waiting on it. Requests are idempotent (a draft's seed fixes it), so sending
one again after a restart gives the same draft. Other answers (4xx, 500) are the request's own failure.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

from metastone.engines.types import DraftRequest, GenResult, Sampling, ServiceDown
from metastone.serve.scoring import TraceScore

logger = logging.getLogger(__name__)

# how long a request waits for its service to come back (``metastone infer --service_wait_s``)
SERVICE_WAIT_S = 600.0
OUTAGE_STATUS = (502, 503, 504)
_BACKOFF_FIRST_S, _BACKOFF_MAX_S = 0.5, 10.0


class ServiceWaiter:
    """Sends requests to one service, waiting through its outages (see the module docstring)."""

    def __init__(self, name: str, client, wait_s: float = SERVICE_WAIT_S):
        if not wait_s >= 0:
            raise ValueError(f"service wait must be >= 0 seconds (0: fail at once), got {wait_s}.")
        self.name, self.client, self.wait_s = name, client, wait_s
        self.down_since: float | None = None  # start of the current outage (None: up)
        self.outages = 0

    def _down(self, why: str) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.outages += 1
            logger.warning("%s %s is down (%s); waiting up to %.0f s for it to come back", self.name,
                           self.client.base_url, why, self.wait_s)

    def _up(self) -> None:
        if self.down_since is not None:
            logger.warning("%s %s is back after %.1f s", self.name, self.client.base_url, time.monotonic() - self.down_since)
            self.down_since = None

    async def post(self, path: str, body: dict):
        import httpx

        first_failure, delay = None, _BACKOFF_FIRST_S
        while True:
            retry_after = None
            try:
                resp = await self.client.post(path, json=body)
            except (httpx.TransportError, OSError) as exc:  # refused, reset, closed mid-answer, timed out
                why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                if resp.status_code not in OUTAGE_STATUS:
                    self._up()
                    return resp
                why = f"answered {resp.status_code}"
                retry_after = _seconds(resp.headers.get("retry-after"))
            now = time.monotonic()
            first_failure = first_failure if first_failure is not None else now
            self._down(why)
            left = self.wait_s - (now - first_failure)
            if left <= 0:
                raise ServiceDown(f"{self.name} {self.client.base_url} did not answer {path} for {self.wait_s:.0f} s "
                                  f"({why}). Finished drafts are recorded: restart the service, then rerun the same "
                                  "command to resume (--service_wait_s sets the wait).")
            await asyncio.sleep(min(retry_after if retry_after is not None else delay, left))
            delay = min(delay * 2, _BACKOFF_MAX_S)


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: use the backoff

def base_url(url: str) -> str:
    """Strip the endpoint path from a URL given in the original style (``http://h:p/score``, ``.../generate``)."""
    url = url.strip().rstrip("/")
    for suffix in ("/v1/completions", "/score_ids", "/score", "/generate", "/v1"):
        if url.endswith(suffix):
            return url[: -len(suffix)]
    return url


class ServerGenerator:
    """Drafts spread round-robin over one or more policy services (``/v1/completions``)."""

    def __init__(self, urls: list[str], model: str, *, timeout_s: float = 7200.0, api_key: str | None = None,
                 wait_s: float = SERVICE_WAIT_S):
        import httpx

        if not urls:
            raise ValueError("--response_api_url: give at least one policy URL.")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        by_url: dict[str, ServiceWaiter] = {}  # URLs naming the same service share its client (and its outages)
        for u in map(base_url, urls):
            if u not in by_url:
                by_url[u] = ServiceWaiter("policy service", httpx.AsyncClient(base_url=u, timeout=timeout_s, headers=headers),
                                          wait_s)
        self.services = [by_url[base_url(u)] for u in urls]  # round-robin over the URLs as given
        self.clients = [w.client for w in by_url.values()]
        self._next = itertools.cycle(range(len(self.services)))
        self.model = model

    async def _one(self, req: DraftRequest, sampling: Sampling) -> GenResult:
        service = self.services[next(self._next)]
        client = service.client
        body = {"model": self.model, "prompt": req.prompt_ids, "n": 1, "seed": req.seed, "max_tokens": sampling.max_tokens,
                "temperature": sampling.temperature, "top_p": sampling.top_p, "stop": list(sampling.stop) or None,
                "repetition_penalty": sampling.repetition_penalty, "return_token_ids": True, "skip_special_tokens": False}
        if sampling.stop_token_ids:
            body["stop_token_ids"] = list(sampling.stop_token_ids)
        resp = await service.post("/v1/completions", body)
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

    def __init__(self, url: str, *, timeout_s: float = 3600.0, api_key: str | None = None, wait_s: float = SERVICE_WAIT_S):
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(base_url=base_url(url), timeout=timeout_s, headers=headers)
        self.service = ServiceWaiter("score service", self.client, wait_s)

    async def score(self, sequences: list[list[int]], prompt_lens: list[int]) -> list[TraceScore]:
        resp = await self.service.post("/score_ids", {"sequences": sequences, "prompt_lens": prompt_lens})
        if resp.status_code != 200:
            raise RuntimeError(f"scorer {self.client.base_url} answered {resp.status_code}: {resp.text[:300]}")
        return [TraceScore(r["value"], r["all_scores"], r["score_positions"]) for r in resp.json()["results"]]

    async def close(self) -> None:
        await self.client.aclose()
