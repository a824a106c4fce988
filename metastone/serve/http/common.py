"""Pieces shared by the two HTTP services: bearer-token auth, request batching, load limits, error mapping, running.

Servers bind 127.0.0.1 unless told otherwise. With an API key (``--api-key`` or the environment
variable ``METASTONE_API_KEY``), every endpoint but ``/health`` requires ``Authorization: Bearer KEY``.

Under load: a service holds at most ``--max_in_flight`` requests (waiting for the model or running);
one more is answered ``503`` with ``Retry-After`` at once (back-pressure, never unbounded memory), which the
project's clients wait out (``metastone.engines.http``). A request whose client disconnects is
cancelled: if it is still waiting, the model never runs it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from fastapi import HTTPException, Request

from metastone.serve.worker_thread import WorkerThread

logger = logging.getLogger(__name__)

API_KEY_ENV = "METASTONE_API_KEY"
DEFAULT_HOST = "127.0.0.1"


def resolve_api_key(cli_value: str | None) -> str | None:
    return cli_value or os.environ.get(API_KEY_ENV) or None


def make_auth_dependency(api_key: str | None):
    """A FastAPI dependency that checks the bearer token when a key is set."""

    async def check(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), api_key.encode()):
            raise HTTPException(status_code=401, detail={"field": "Authorization", "message": "missing or wrong bearer token"})

    return check


def bad_request(field_name: str, message: str, status: int = 400) -> HTTPException:
    return HTTPException(status_code=status, detail={"field": field_name, "message": message})


def is_out_of_memory(exc: BaseException) -> bool:
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    return isinstance(exc, (MemoryError, RuntimeError)) and "out of memory" in str(exc).lower()


def free_accelerator_memory() -> None:
    from metastone.devices import has_cuda

    if has_cuda():
        import torch

        torch.cuda.empty_cache()


class ServiceUnavailable(Exception):
    """The backend ran out of memory even for a single request (answered 413: the input is too large here)."""


DEFAULT_MAX_IN_FLIGHT = 1024  # requests a service holds at once (``--max_in_flight``); more get 503 + Retry-After
RETRY_AFTER_S = 1
# paths never refused or counted: health checks and the API description must answer under any load
_UNLIMITED_PATHS = ("/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")


class LoadGuard:
    """ASGI middleware for both services: back-pressure and cancellation.

    - At most ``max_in_flight`` requests are held at once (waiting for the model or running); one more
      is answered ``503`` with ``Retry-After: 1`` at once, so a burst costs a retry, not unbounded memory.
    - When a client goes away before its answer, its request's handler is cancelled: one still waiting
      for the model is never run (``MicroBatcher`` drops it; the policy's lock waiter leaves; a request
      forwarded to vLLM is closed, which vLLM aborts). Uvicorn reports the disconnect on ``receive``;
      the handler reads the request through a queue while this watches for it.
    """

    def __init__(self, app, max_in_flight: int, stats: "LoadStats"):
        self.app, self.max_in_flight, self.stats = app, max_in_flight, stats

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") in _UNLIMITED_PATHS:
            return await self.app(scope, receive, send)
        stats = self.stats
        if stats.in_flight >= self.max_in_flight:
            stats.refused += 1
            return await _send_json(send, 503, {"detail": {"field": None, "message": (
                f"{stats.in_flight} requests in flight (--max_in_flight {self.max_in_flight}); retry after "
                f"{RETRY_AFTER_S} s")}}, [(b"retry-after", str(RETRY_AFTER_S).encode())])
        stats.in_flight += 1
        try:
            await self._run(scope, receive, send)
        finally:
            stats.in_flight -= 1

    async def _run(self, scope, receive, send) -> None:
        inbox: asyncio.Queue = asyncio.Queue()

        async def listen() -> None:
            while True:
                message = await receive()
                await inbox.put(message)
                if message["type"] == "http.disconnect":
                    return

        handler = asyncio.ensure_future(self.app(scope, inbox.get, send))
        listener = asyncio.ensure_future(listen())
        try:
            await asyncio.wait({handler, listener}, return_when=asyncio.FIRST_COMPLETED)
            if not handler.done():  # the client left first
                self.stats.abandoned += 1
                handler.cancel()
            try:
                await handler
            except asyncio.CancelledError:
                if not listener.done():
                    raise  # cancelled from outside (shutdown)
        finally:
            listener.cancel()


@dataclass
class LoadStats:
    """What ``LoadGuard`` counts; ``/health`` reports it."""

    max_in_flight: int
    in_flight: int = 0
    refused: int = 0  # answered 503 + Retry-After
    abandoned: int = 0  # cancelled: the client left before its answer

    def as_dict(self) -> dict:
        return {"in_flight": self.in_flight, "max_in_flight": self.max_in_flight, "refused_busy": self.refused,
                "abandoned": self.abandoned}


def add_load_guard(app, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> LoadStats:
    """Put ``LoadGuard`` in front of ``app``; its counters are ``app.state.load`` (returned)."""
    if max_in_flight <= 0:
        raise ValueError(f"--max_in_flight must be positive, got {max_in_flight}.")
    app.state.load = LoadStats(max_in_flight)
    app.add_middleware(LoadGuard, max_in_flight=max_in_flight, stats=app.state.load)
    return app.state.load


async def _send_json(send, status: int, body: dict, headers: list) -> None:
    import json

    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *headers]})
    await send({"type": "http.response.body", "body": data})


@dataclass
class _Pending:
    item: Any
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Collects concurrent requests into batches for one blocking ``fn(items) -> results`` call.

    The first request waits at most ``max_wait_s`` for company; a batch holds at most ``max_batch``
    items. ``fn`` runs on one dedicated thread (``WorkerThread``; free heap pages go back to the OS at most
    once a second), one batch at a time. Out of memory on a batch: each item
    is retried alone; an item that still runs out of memory fails with ``ServiceUnavailable``
    (never a silent wrong result).
    """

    def __init__(self, fn: Callable[[Sequence[Any]], list[Any]], *, max_batch: int = 64, max_wait_s: float = 0.005):
        if max_batch <= 0:
            raise ValueError(f"max_batch must be positive, got {max_batch}.")
        self.fn, self.max_batch, self.max_wait_s = fn, max_batch, max_wait_s
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task | None = None
        self._thread = WorkerThread("micro-batcher", trim_every_s=1.0)
        self.batches_run = 0
        self.dropped = 0  # items never run: their callers were cancelled (clients that disconnected) while waiting

    async def submit(self, item: Any) -> Any:
        """The item's result. A caller cancelled while its item waits (its client left) takes the item out of
        the next batch."""
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.create_task(self._worker())
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(item, future))
        return await future

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._thread.shutdown()

    async def _worker(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            deadline = asyncio.get_running_loop().time() + self.max_wait_s
            while len(batch) < self.max_batch:
                timeout = deadline - asyncio.get_running_loop().time()
                try:
                    batch.append(self._queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(self._queue.get(), timeout))
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
            waiting = len(batch)
            batch = [p for p in batch if not p.future.done()]  # callers that left while waiting
            self.dropped += waiting - len(batch)
            if batch:
                await self._run(batch)

    async def _run(self, batch: list[_Pending]) -> None:
        self.batches_run += 1
        try:
            results = await self._thread.run(self.fn, [p.item for p in batch])
        except Exception as exc:  # noqa: BLE001 - mapped per item below
            if not is_out_of_memory(exc):
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                return
            logger.warning("out of memory on a batch of %d; retrying each request alone", len(batch))
            free_accelerator_memory()
            for p in batch:
                try:
                    result = (await self._thread.run(self.fn, [p.item]))[0]
                except Exception as single:  # noqa: BLE001
                    free_accelerator_memory()
                    err = ServiceUnavailable("out of memory scoring this request alone; send a shorter input") if is_out_of_memory(single) else single
                    if not p.future.done():
                        p.future.set_exception(err)
                else:
                    if not p.future.done():
                        p.future.set_result(result)
            return
        for p, r in zip(batch, results):
            if not p.future.done():
                p.future.set_result(r)


def run_app(app, host: str, port: int, log_level: str = "info") -> None:
    import uvicorn

    if host not in (DEFAULT_HOST, "localhost", "::1"):
        logger.warning("binding %s: the service is reachable from other machines; set an API key", host)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
