"""SPRM scoring service: the original ``/score`` contract, a batched token-id endpoint, health, OpenAPI.

- ``POST /score`` ``{"text": str, "return_all_scores": bool = false}`` -> ``{"value"}``, or with
  ``return_all_scores`` ``{"value", "all_scores", "token_ids", "score_positions"}``: the original
  server's contract (the text is tokenized as written and scored within its think span).
- ``POST /score_ids`` ``{"sequences": [[int]], "prompt_lens": [int] | null}`` -> ``{"results": [{"value",
  "all_scores", "score_positions"}]}``: scores the policy's own token ids, no re-tokenization.
- ``GET /health``; OpenAPI at ``/openapi.json`` and ``/docs`` (importable into API tools).

A trace longer than the model's context is not refused: its first ``max_len`` tokens are scored (the
steps after them are not) and the answer says so with ``truncated: true`` and ``scored_tokens``. A
draft the policy produced always fits as token ids, but its text, tokenized again, may not (the
original client sends text; see docs/serving.md "Traces longer than the context").

Concurrent requests are scored together (``MicroBatcher``); at most ``max_in_flight`` are held, more
get 503 + ``Retry-After``, and a request whose client left is never scored (``serve/http/common.py``
``LoadGuard``). Bad input is a 4xx JSON error naming the field; out of memory is retried request by
request, then a 413 (that input alone does not fit).
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from metastone.serve.http.common import (DEFAULT_MAX_IN_FLIGHT, MicroBatcher, ServiceUnavailable, add_load_guard, bad_request,
                                  make_auth_dependency)
from metastone.serve.scoring import Scorer, TraceScore

logger = logging.getLogger(__name__)


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    text: str = Field(min_length=1, description="the whole trace (prompt + response) as text")
    return_all_scores: bool = Field(False, description="also return step scores, token ids and positions")


class ScoreResponse(BaseModel):
    value: float
    all_scores: list[float] | None = None
    token_ids: list[int] | None = None
    score_positions: list[int] | None = None
    truncated: bool | None = Field(None, description="present (true) when only the first scored_tokens tokens fit the context")
    scored_tokens: int | None = None


class ScoreIdsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    sequences: list[list[int]] = Field(min_length=1, description="token ids of each trace (prompt + response)")
    prompt_lens: list[int] | None = Field(None, description="number of prompt tokens of each trace (default 0)")


class TraceResult(BaseModel):
    value: float
    all_scores: list[float]
    score_positions: list[int]
    truncated: bool | None = None
    scored_tokens: int | None = None


class ScoreIdsResponse(BaseModel):
    results: list[TraceResult]


def create_score_app(
    scorer: Scorer,
    encode,
    *,
    max_len: int | None,
    vocab_size: int | None = None,
    api_key: str | None = None,
    max_batch: int = 64,
    max_wait_s: float = 0.005,
    model_name: str = "sprm",
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
) -> FastAPI:
    """Build the app around any backend with ``score_ids`` and a text encoder ``encode(text) -> ids``.

    ``max_len``: the backend's context (longer traces are scored on their first ``max_len`` tokens);
    ``vocab_size``: the model's embedding size, the range of token ids it can read and emit (a padded
    embedding is larger than the tokenizer: Qwen2's 152,064 rows for 151,665 tokenizer entries).
    """
    app = FastAPI(title="MetaStone SPRM scorer", version="1", description=__doc__)
    auth = make_auth_dependency(api_key)
    batcher = MicroBatcher(lambda items: scorer.score_ids([i[0] for i in items], [i[1] for i in items]),
                           max_batch=max_batch, max_wait_s=max_wait_s)
    app.state.batcher = batcher
    load = add_load_guard(app, max_in_flight)

    @app.exception_handler(ValueError)
    async def _bad_value(_request, exc):
        return JSONResponse(status_code=400, content={"detail": {"field": None, "message": str(exc)}})

    @app.exception_handler(ServiceUnavailable)
    async def _oom(_request, exc):
        return JSONResponse(status_code=413, content={"detail": {"field": None, "message": str(exc)}})

    async def score_one(ids: list[int], prompt_len: int) -> TraceScore:
        return await batcher.submit((ids, prompt_len))

    def fit(ids: list[int]) -> tuple[list[int], dict]:
        """The part of a trace that fits the context, and the fields that say a part was left out."""
        if max_len is None or len(ids) <= max_len:
            return ids, {}
        return ids[:max_len], {"truncated": True, "scored_tokens": max_len}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "batches_run": batcher.batches_run,
                "dropped_unscored": batcher.dropped, **load.as_dict()}

    @app.post("/score", response_model=ScoreResponse, response_model_exclude_none=True, dependencies=[Depends(auth)])
    async def score(req: ScoreRequest):
        if not req.text.strip():
            raise bad_request("text", "text is blank; nothing to score")
        ids = encode(req.text)
        scored, cut = fit(ids)
        result = await score_one(scored, 0)
        if not req.return_all_scores:
            return ScoreResponse(value=result.value, **cut)
        return ScoreResponse(value=result.value, all_scores=result.step_scores, token_ids=ids,
                             score_positions=result.positions, **cut)

    @app.post("/score_ids", response_model=ScoreIdsResponse, response_model_exclude_none=True, dependencies=[Depends(auth)])
    async def score_ids(req: ScoreIdsRequest):
        lens = req.prompt_lens if req.prompt_lens is not None else [0] * len(req.sequences)
        if len(lens) != len(req.sequences):
            raise bad_request("prompt_lens", f"{len(lens)} prompt lengths for {len(req.sequences)} sequences")
        for i, (seq, plen) in enumerate(zip(req.sequences, lens)):
            if not seq:
                raise bad_request(f"sequences[{i}]", "empty sequence")
            if not 0 <= plen <= len(seq):
                raise bad_request(f"prompt_lens[{i}]", f"{plen} outside [0, {len(seq)}]")
            if min(seq) < 0 or (vocab_size is not None and max(seq) >= vocab_size):
                raise bad_request(f"sequences[{i}]", f"token ids must be in [0, {vocab_size}) for this model "
                                  "(its embedding size)")
        fitted = [fit(seq) for seq in req.sequences]
        results = await asyncio.gather(*(score_one(seq, min(plen, len(seq))) for (seq, _), plen in zip(fitted, lens)))
        return ScoreIdsResponse(results=[TraceResult(value=r.value, all_scores=r.step_scores, score_positions=r.positions, **cut)
                                         for r, (_, cut) in zip(results, fitted)])

    return app
