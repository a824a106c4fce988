"""``infer``: a whole Best-of-N run as one library call (what ``metastone infer``, ``metastone demo`` and
``metastone train-sprm`` call), and ``run_config``: the ``RunConfig`` those resolve from their options.

    from metastone.engines import EngineConfig, make_engines
    from metastone.harness.infer import infer, run_config
    cfg = run_config(task, "runs/x.jsonl", model_dir, 8, backend="hf", temperature=0.7)
    stats = infer(cfg, task, tokenizer, lambda: make_engines(EngineConfig(model_dir, backend="hf")))

The configuration is checked against the one saved beside the output (or saved), every missing draft
is generated, scored and recorded, and the engines are shut down; a finished run loads no engine.
Per-question search runs (``strategy`` beam | mcts) pass ``searcher``: the harness does not import
the search strategies (``metastone.search.record_searcher`` makes one from the engines).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from metastone.harness.runner import (RunConfig, RunStats, check_or_save_config, file_sha256, my_questions,
                                      pending_requests, run, run_search_questions)
from metastone.records import RecordStore, record_key


# backend -> (drafts per batch, batches in flight, batches in flight counted per policy URL), chosen by
# measurement (benchmarks/bench_harness.py, docs/benchmarks.md):
# - vllm: 128-draft batches, two in flight (one generating while the other's records are written or
#   scored; the Coalescer merges them into one engine batch): within a few % of the engine given every
#   draft in one call. A draft's tokens depend on its seed, not on which drafts share its batch, as far
#   as the engine's kernels are batch-invariant (tests/serve/test_vllm.py checks it on CPU).
# - hf: the drafts of one question per batch (same prompt, no padding: a draft's numbers do not depend
#   on the other questions, so a resumed run equals an uninterrupted one), one batch in flight.
# - server: 8-draft batches, two in flight per policy service (the services batch across clients).
IN_FLIGHT = {"server": (8, 2, True), "vllm": (128, 2, False), "hf": (16, 1, False)}


def run_config(task, output_file: str, model_dir: str, drafts_per_question: int, *, backend: str, n_urls: int = 1,
               chat_template: bool | None = None, batch_size: int | None = None, workers: int | None = None,
               **options) -> RunConfig:
    """A run of ``task`` (a loaded task) with the defaults of ``metastone infer``: the task decides the chat
    template and the stop strings, the model is named by its folder, the data by its sha256. ``backend``
    (server | vllm | hf, ``Engines.backend``) decides how drafts are put in flight (``IN_FLIGHT``).
    ``options``: any other field (these defaults included)."""
    if backend not in IN_FLIGHT:
        raise ValueError(f"backend must be one of {', '.join(IN_FLIGHT)}, got {backend!r}.")
    search = options.get("search")
    size, group, per_url = IN_FLIGHT[backend]
    if search is not None and backend != "server":
        group = 8  # searched questions side by side: their small requests merge into shared engine batches
    fields = dict(
        task=task.name, output_file=str(output_file), drafts_per_question=drafts_per_question,
        model=str(model_dir).rstrip("/").split("/")[-1], input_file=task.source,
        input_sha256=file_sha256(task.source) if task.source and Path(task.source).is_file() else "",
        stop=tuple(getattr(task, "stop", ()) or ()),
        chat_template=getattr(task, "use_chat_template", True) if chat_template is None else chat_template,
        batch_size=batch_size or size, workers=workers or (group * (n_urls if per_url else 1)),
        group_by_question=backend == "hf",
    )
    return RunConfig(**{**fields, **options})


def infer(cfg: RunConfig, task, tokenizer, engines, *, progress=None, searcher=None) -> RunStats:
    """Run ``cfg`` to the end (see the module docstring); ``stats.before`` / ``stats.total`` count the records.

    ``engines``: a function making the ``Engines`` (``metastone.engines.make_engines``), called only when
    something is missing and closed here at the end; or ready ``Engines``, which the caller closes.
    ``progress``: a tqdm-like bar, or a function making one (likewise only when something is missing,
    closed here). ``searcher(engines)``: the per-question searcher of a beam / MCTS run."""
    return asyncio.run(infer_async(cfg, task, tokenizer, engines, progress=progress, searcher=searcher))


async def infer_async(cfg: RunConfig, task, tokenizer, engines, *, progress=None, searcher=None) -> RunStats:
    check_or_save_config(cfg)
    with RecordStore(cfg.output_file) as store:
        before = len(store)
        if not callable(engines):
            stats = await _run(cfg, task, tokenizer, engines, store, progress, searcher)
        elif not missing(cfg, task, tokenizer, store):
            stats = RunStats()  # finished: no engine is loaded
        else:
            made = engines()
            bar = progress() if callable(progress) else progress
            try:
                stats = await _run(cfg, task, tokenizer, made, store, bar, searcher)
            finally:
                if bar is not progress:
                    bar.close()
                await made.close()
        stats.before, stats.total = before, len(store)
    return stats


async def _run(cfg: RunConfig, task, tokenizer, engines, store: RecordStore, progress, searcher) -> RunStats:
    if cfg.strategy == "bon":
        return await run(cfg, task, tokenizer, engines.generator, engines.scorer, store, progress)
    return await run_search_questions(cfg, task, tokenizer, searcher(engines), store, progress)


def missing(cfg: RunConfig, task, tokenizer, store: RecordStore) -> bool:
    """Whether the run has anything left to do."""
    if cfg.strategy == "bon":
        return bool(pending_requests(cfg, task, tokenizer, store))
    return any(record_key(cfg.task, ex.id, 0) not in store for ex in my_questions(list(task), cfg.total_parts, cfg.part))
