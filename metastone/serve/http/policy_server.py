"""Policy service: vLLM's OpenAI-compatible server plus the original ``POST /generate`` contract.

- ``POST /generate`` ``{"prefix_prompt": str, "max_tokens": int, "response_num": int, "stop": [str] | str | null,
  "temperature": float, "seed": int | null, "top_p": float}`` -> ``{"results": [str, ...]}`` (the original
  contract; ``"return_token_ids": true`` adds ``token_ids`` and ``finish_reasons``). Draft i uses seed
  ``seed + i``; seed 0 is a seed. Like the original (vLLM's offline ``generate``), a ``max_tokens`` beyond
  the context left after the prompt is clamped to it (the original client always sends 32768): drafts
  stop at the context with finish reason ``length``; the first clamp is logged. The OpenAI routes
  keep the engine's own validation (a request that does not fit is a 400 there).
- ``/v1/completions`` (OpenAI-compatible, with ``n``, ``seed``, ``return_token_ids``), ``/v1/models``,
  ``/tokenize``, ... : with ``--backend vllm`` these are vLLM's own server (continuous batching),
  started as a subprocess on a loopback port and reached through this app; with ``--backend hf``
  ``/v1/completions`` is answered here by ``HFPolicy`` (token-id or text prompts, ``n``, ``seed``).
- ``GET /health``; OpenAPI at ``/openapi.json`` and ``/docs``.
- Under load: at most ``max_in_flight`` requests held, more get 503 + ``Retry-After``; a request whose
  client left is cancelled (``serve/http/common.py`` ``LoadGuard``).
- Scoring while generating (``serve-policy --score_while_generating``): a ``/v1/completions`` choice also
  carries ``"sprm": {"value", "all_scores", "score_positions"}`` (the ``/score`` contract, positions in
  prompt + draft tokens), taken as the policy decoded (``serve/step_scores.py``): with ``--backend hf``
  for every choice, with ``--backend vllm`` for requests of one prompt and ``n`` = 1 (what
  ``ServerGenerator`` sends; others come back without it).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from typing import Any, Protocol

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from metastone.sampling import DEFAULT_SAMPLING
from metastone.serve.http.common import DEFAULT_MAX_IN_FLIGHT, add_load_guard, bad_request, make_auth_dependency
from metastone.serve.vllm.cpu_sampling import SETTINGS, split_sampling, valid_setting
from metastone.serve.worker_thread import WorkerThread

logger = logging.getLogger(__name__)


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prefix_prompt: str = Field(min_length=1, description="the prompt text, chat template already applied")
    # The /generate body's defaults are the original policy server's (a request that leaves them out gets what it
    # got there): 1024 tokens and no repetition penalty, unlike our engines' Sampling defaults; temperature and
    # top_p are the same as Sampling's. The original client sends all of them.
    max_tokens: int = Field(1024, gt=0)
    response_num: int = Field(1, gt=0, le=1024)
    stop: list[str] | str | None = None
    temperature: float = Field(DEFAULT_SAMPLING.temperature, ge=0)
    top_p: float = Field(DEFAULT_SAMPLING.top_p, gt=0, le=1)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # int64, as vLLM
    repetition_penalty: float = Field(1.0, gt=0)
    return_token_ids: bool = False

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(BaseModel):
    """The subset of OpenAI ``/v1/completions`` that the HF backend implements (with OpenAI's and vLLM's defaults
    for what a request leaves out: 16 tokens, temperature 1, top_p 1; our clients always send Sampling's)."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    prompt: str | list[int]
    n: int = Field(1, gt=0, le=1024)
    max_tokens: int = Field(16, gt=0)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stop: list[str] | str | None = None
    stop_token_ids: list[int] | None = None
    repetition_penalty: float = Field(1.0, gt=0)
    return_token_ids: bool = False

    @model_validator(mode="after")
    def _non_empty(self):
        if not self.prompt:
            raise ValueError("prompt is empty")
        return self


class PolicyBackend(Protocol):
    name: str

    async def completions(self, prompt: str | list[int], *, n: int, max_tokens: int, temperature: float, top_p: float,
                          seed: int | None, stop: list[str], return_token_ids: bool,
                          repetition_penalty: float = 1.0) -> dict[str, Any]: ...

    async def prompt_tokens_and_context(self, prompt: str) -> tuple[int, int | None]:
        """(tokens of ``prompt`` as completions will encode it, the model's context length or None)."""
        ...


class HFPolicyBackend:
    """Answers completions with ``HFPolicy`` in a worker thread (one batch at a time)."""

    name = "hf"

    def __init__(self, policy, model_name: str, step_scores=None):
        """``step_scores``: a ``StepScoreCollector`` when ``policy`` has the head attached (``attach_head``)."""
        self.policy, self.model_name, self.step_scores = policy, model_name, step_scores
        self._lock = asyncio.Lock()
        self._thread = WorkerThread("hf-policy")

    async def prompt_tokens_and_context(self, prompt: str) -> tuple[int, int | None]:
        return len(self.policy.encode(prompt)), self.policy.max_len

    async def completions(self, prompt, *, n, max_tokens, temperature, top_p, seed, stop, return_token_ids,
                          repetition_penalty=1.0, stop_token_ids=()):
        from metastone.sampling import Sampling

        ids = self.policy.encode(prompt) if isinstance(prompt, str) else list(prompt)
        vocab = self.policy.vocab_size
        if ids and (min(ids) < 0 or max(ids) >= vocab):
            raise ValueError(f"prompt token ids must be in [0, {vocab}) for this model")
        sampling = Sampling(max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=tuple(stop),
                            repetition_penalty=repetition_penalty, stop_token_ids=tuple(stop_token_ids or ())).check()
        seeds = [seed + i if seed is not None else None for i in range(n)]
        async with self._lock:  # one request at a time: a draft never depends on another request's
            drafts = await self._thread.run(self.policy.generate, [ids] * n, seeds, sampling)
        choices = []
        for i, d in enumerate(drafts):
            choice = {"index": i, "text": d.text, "finish_reason": d.finish_reason, "stop_reason": d.stop_reason, "logprobs": None}
            if return_token_ids:
                choice["token_ids"] = d.token_ids
                choice["prompt_token_ids"] = ids
            if self.step_scores is not None and d.token_probs is not None:
                choice["sprm"] = self.step_scores.trace_score(ids, d.token_ids, d.token_probs).as_dict()
            choices.append(choice)
        gen = sum(len(d.token_ids) for d in drafts)
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": self.model_name, "choices": choices,
                "usage": {"prompt_tokens": len(ids), "completion_tokens": gen, "total_tokens": len(ids) + gen}}


# vLLM's request fields -> ours on /generate, to name the field of an error the engine reports
_ENGINE_FIELDS = {"max_tokens": "max_tokens", "n": "response_num", "seed": "seed", "temperature": "temperature",
                  "top_p": "top_p", "stop": "stop", "repetition_penalty": "repetition_penalty", "prompt": "prefix_prompt"}


def engine_error(resp) -> Exception:
    """A 4xx naming our field for an error answer of the vLLM server (502 if the engine itself failed)."""
    try:
        err = resp.json().get("error") or {}
        message, param = str(err.get("message", resp.text)), err.get("param")
    except (ValueError, AttributeError):
        message, param = resp.text, None
    field = _ENGINE_FIELDS.get(param) or next(
        (ours for theirs, ours in _ENGINE_FIELDS.items() if re.search(rf"\b{theirs}\b", message)), "body")
    status = resp.status_code if resp.status_code < 500 else 502
    return bad_request(field, f"policy engine answered {resp.status_code}: {message[:500]}", status)


class VLLMProxyBackend:
    """Forwards to a vLLM OpenAI-compatible server (ours, started as a subprocess, or any URL)."""

    name = "vllm"

    def __init__(self, base_url: str, model_name: str, timeout_s: float = 3600.0, cpu_sampling: bool = False,
                 step_scores=None):
        """``cpu_sampling``: the server runs our CPU sampling processors (``serve/vllm/cpu_sampling.py``); top-p and
        the repetition penalty then travel in ``vllm_xargs``. ``step_scores``: a ``StepScoreCollector`` whose
        directory and head the server was started with (scoring while generating)."""
        import httpx

        self.base_url, self.model_name, self.cpu_sampling = base_url.rstrip("/"), model_name, cpu_sampling
        self.step_scores = step_scores
        self.client = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s)

    async def prompt_tokens_and_context(self, prompt: str) -> tuple[int, int | None]:
        # vLLM's /tokenize encodes a completion prompt exactly as /v1/completions will (special tokens included)
        resp = await self.client.post("/tokenize", json={"model": self.model_name, "prompt": prompt})
        if resp.status_code >= 400:
            raise bad_request("prefix_prompt", f"policy engine could not tokenize it ({resp.status_code}): {resp.text[:300]}",
                              resp.status_code if resp.status_code < 500 else 502)
        out = resp.json()
        return int(out["count"]), out.get("max_model_len")

    async def completions(self, prompt, *, n, max_tokens, temperature, top_p, seed, stop, return_token_ids,
                          repetition_penalty=1.0):
        body = {"model": self.model_name, "prompt": prompt, "n": n, "max_tokens": max_tokens, "temperature": temperature,
                "top_p": top_p, "stop": stop or None, "skip_special_tokens": False, "return_token_ids": return_token_ids,
                "repetition_penalty": repetition_penalty}
        if seed is not None:
            body["seed"] = seed
        if self.cpu_sampling:
            fields, xargs = split_sampling(top_p, repetition_penalty)
            body.update(fields)
            if xargs:
                body["vllm_xargs"] = xargs
        copies = n if temperature == 0 and n > 1 else 1
        if copies > 1:  # vLLM refuses n > 1 with greedy sampling; greedy drafts are all the same draft
            body["n"] = 1
        resp = await self.client.post("/v1/completions", json=body)
        if resp.status_code >= 400:
            raise engine_error(resp)
        out = resp.json()
        if copies > 1:
            out["choices"] = [{**out["choices"][0], "index": i} for i in range(copies)]
        return out

    async def forward(self, request: Request, path: str) -> Response:
        content = await request.body()
        if self.cpu_sampling and request.method == "POST" and path in ("v1/completions", "v1/chat/completions"):
            content = _sampling_to_xargs(content)
        key = None
        if self.step_scores is not None and request.method == "POST" and path == "v1/completions":
            content, key, asked_ids = _ask_step_scores(content, self.step_scores)
        resp = await self.client.request(request.method, f"/{path}", content=content,
                                         headers={"content-type": request.headers.get("content-type", "application/json")},
                                         params=request.query_params)
        body = resp.content
        if key is not None:
            body = self._with_step_scores(resp, key, asked_ids)
        return Response(content=body, status_code=resp.status_code, media_type=resp.headers.get("content-type"))

    def _with_step_scores(self, resp, key: str, asked_ids: bool) -> bytes:
        """The engine's answer with the draft's ``"sprm"`` score added (token ids kept only if the client asked)."""
        import json

        try:
            out = resp.json() if resp.status_code == 200 else None
            choice = out["choices"][0] if out and len(out["choices"]) == 1 else None
        except (ValueError, KeyError, TypeError):
            choice = None
        if choice is None or choice.get("token_ids") is None or choice.get("prompt_token_ids") is None:
            self.step_scores.discard(key)
            return resp.content
        score = self.step_scores.collect(key, choice["prompt_token_ids"], choice["token_ids"])
        if score is not None:
            choice["sprm"] = score.as_dict()
        if not asked_ids:
            choice["token_ids"] = choice["prompt_token_ids"] = None
        return json.dumps(out).encode()


def _ask_step_scores(content: bytes, step_scores) -> tuple[bytes, str | None, bool]:
    """A ``/v1/completions`` body with a step-score key added to ``vllm_xargs`` (and token ids asked for),
    the key, and whether the client asked for token ids itself. Only a one-prompt, ``n`` = 1, non-streamed,
    non-beam request is keyed (the processor writes one file per request); anything else goes unchanged."""
    import json

    try:
        body = json.loads(content)
    except ValueError:
        return content, None, False
    if not isinstance(body, dict):
        return content, None, False
    prompt, xargs = body.get("prompt"), body.get("vllm_xargs")
    one_prompt = isinstance(prompt, str) or (isinstance(prompt, list) and bool(prompt)
                                             and all(isinstance(t, int) for t in prompt))
    if (not one_prompt or body.get("n", 1) != 1 or body.get("stream") or body.get("use_beam_search")
            or body.get("echo") or (xargs is not None and not isinstance(xargs, dict))):
        return content, None, False
    key = step_scores.new_key()
    asked_ids = bool(body.get("return_token_ids"))
    body["vllm_xargs"] = {**(xargs or {}), **step_scores.request_args(key)}
    body["return_token_ids"] = True
    return json.dumps(body).encode(), key, asked_ids


def _sampling_to_xargs(content: bytes) -> bytes:
    """An OpenAI request body with its top-p and repetition penalty moved to ``vllm_xargs`` for our CPU
    processors. A value this does not understand (missing, neutral, not a valid number, or its extra
    argument already set) stays where it is, and a body that is not a JSON object goes unchanged, so
    vLLM's own validation answers them."""
    import json

    try:
        body = json.loads(content)
    except ValueError:
        return content
    xargs = body.get("vllm_xargs") if isinstance(body, dict) else None
    if not isinstance(body, dict) or (xargs is not None and not isinstance(xargs, dict)):
        return content
    moved = dict(xargs or {})
    for field, (arg, _, _) in SETTINGS.items():
        value = body.get(field)
        if valid_setting(field, value) and value != 1 and arg not in moved:
            moved[arg], body[field] = float(value), 1.0
    if moved == (xargs or {}):
        return content
    body["vllm_xargs"] = moved
    return json.dumps(body).encode()


def create_policy_app(backend, *, api_key: str | None = None, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> FastAPI:
    app = FastAPI(title="MetaStone policy", version="1", description=__doc__)
    auth = make_auth_dependency(api_key)
    load = add_load_guard(app, max_in_flight)
    clamp_logged = False

    @app.exception_handler(ValueError)
    async def _bad_value(_request, exc):
        return JSONResponse(status_code=400, content={"detail": {"field": None, "message": str(exc)}})

    @app.get("/health")
    async def health():
        if isinstance(backend, VLLMProxyBackend):
            try:
                ok = (await backend.client.get("/health")).status_code == 200
            except Exception:  # noqa: BLE001 - engine not reachable
                ok = False
            if not ok:
                return JSONResponse(status_code=503, content={"status": "engine not ready"})
        return {"status": "ok", "backend": backend.name, "model": backend.model_name, **load.as_dict()}

    @app.post("/generate", dependencies=[Depends(auth)])
    async def generate(req: GenerateRequest):
        nonlocal clamp_logged
        max_tokens = req.max_tokens
        prompt_tokens, context = await backend.prompt_tokens_and_context(req.prefix_prompt)
        if context is not None:
            left = context - prompt_tokens
            if left <= 0:
                raise bad_request("prefix_prompt", f"{prompt_tokens} tokens fill the model's context of {context}; "
                                                   "no room left to generate", 413)
            if max_tokens > left:
                if not clamp_logged:
                    logger.warning("/generate: max_tokens=%d does not fit after a %d-token prompt in the context of %d; "
                                   "clamped to %d (drafts stop there with finish reason 'length'), as the original "
                                   "service did. Logged once.", max_tokens, prompt_tokens, context, left)
                    clamp_logged = True
                max_tokens = left
        # One request with n drafts; vLLM derives each draft's stream from the seed, HF uses seed + i.
        out = await backend.completions(req.prefix_prompt, n=req.response_num, max_tokens=max_tokens,
                                        temperature=req.temperature, top_p=req.top_p, seed=req.seed,
                                        stop=req.stop_list(), return_token_ids=req.return_token_ids,
                                        repetition_penalty=req.repetition_penalty)
        choices = sorted(out["choices"], key=lambda c: c["index"])
        body: dict[str, Any] = {"results": [c["text"] for c in choices]}
        if req.return_token_ids:
            body["token_ids"] = [c.get("token_ids") for c in choices]
            body["finish_reasons"] = [c.get("finish_reason") for c in choices]
        return body

    if isinstance(backend, VLLMProxyBackend):
        @app.api_route("/v1/{path:path}", methods=["GET", "POST"], dependencies=[Depends(auth)])
        async def openai_proxy(path: str, request: Request):
            return await backend.forward(request, f"v1/{path}")

        @app.api_route("/{path:path}", methods=["GET", "POST"], dependencies=[Depends(auth)], include_in_schema=False)
        async def engine_proxy(path: str, request: Request):
            if path in ("tokenize", "detokenize", "metrics", "version", "load"):
                return await backend.forward(request, path)
            return JSONResponse(status_code=404, content={"detail": f"no endpoint /{path}"})
    else:
        @app.post("/v1/completions", dependencies=[Depends(auth)])
        async def completions(req: CompletionRequest):
            try:
                return await backend.completions(req.prompt, n=req.n, max_tokens=req.max_tokens, temperature=req.temperature,
                                                 top_p=req.top_p, seed=req.seed,
                                                 stop=[req.stop] if isinstance(req.stop, str) else list(req.stop or []),
                                                 return_token_ids=req.return_token_ids,
                                                 repetition_penalty=req.repetition_penalty,
                                                 stop_token_ids=tuple(req.stop_token_ids or ()))
            except ValueError as exc:
                raise bad_request("prompt", str(exc)) from exc

        @app.get("/v1/models", dependencies=[Depends(auth)])
        async def models():
            return {"object": "list", "data": [{"id": backend.model_name, "object": "model", "owned_by": "metastone"}]}

    return app


def make_policy_backend(model_dir: str, *, backend: str = "vllm", dtype: str = "bfloat16", device: str | None = None,
                        max_model_len: int | None = None, score_while_generating: bool = False,
                        head_path: str | None = None, ready_timeout_s: float = 1800.0, **vllm_options):
    """The policy service's backend: ``HFPolicyBackend`` (in-process ``HFPolicy``) or ``VLLMProxyBackend`` (vLLM's
    OpenAI server started with ``serve.vllm.engine.start_server``); returns ``(backend, server process or None)``.
    ``score_while_generating``: the policy carries the SPRM head in ``head_path`` (default the model folder)."""
    from metastone.serve.step_scores import StepScoreCollector

    if head_path is not None and not score_while_generating:
        raise ValueError("--head only applies with --score_while_generating.")
    if backend == "hf":
        from metastone.devices import default_device
        from metastone.serve.hf.policy import HFPolicy

        device = default_device(device)
        logger.info("policy service: HF backend on device %s, %s", device, dtype)
        policy = HFPolicy(model_dir, device=device, dtype=dtype, max_len=max_model_len)
        step_scores = (StepScoreCollector(model_dir, head_path, config=policy.attach_head(head_path))
                       if score_while_generating else None)
        return HFPolicyBackend(policy, str(model_dir), step_scores=step_scores), None
    if backend != "vllm":
        raise ValueError(f"unknown policy backend {backend!r}; expected 'vllm' or 'hf'.")
    from metastone.serve.vllm.cpu_sampling import PROCESSORS
    from metastone.serve.vllm.engine import start_server

    step_scores = StepScoreCollector(model_dir, head_path, vllm=True) if score_while_generating else None
    try:
        url, proc = start_server(model_dir, dtype=dtype, step_scores=step_scores, ready_timeout_s=ready_timeout_s,
                                 max_model_len=max_model_len, **vllm_options)
    except BaseException:
        if step_scores is not None:
            step_scores.cleanup()
        raise
    return VLLMProxyBackend(url, str(model_dir), cpu_sampling=any(c in proc.args for c in PROCESSORS),
                            step_scores=step_scores), proc
