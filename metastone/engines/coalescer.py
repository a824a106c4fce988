"""``Coalescer``: the calls that arrive while an in-process engine is busy, merged into its next batch."""

from __future__ import annotations

import asyncio

from metastone.serve.worker_thread import WorkerThread


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
        self._thread = WorkerThread("coalescer")

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
                results = await self._thread.run(self._run_batch, flat)
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
