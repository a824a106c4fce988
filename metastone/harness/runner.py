"""Best-of-N sampling run: every missing draft of every question generated, scored and recorded once.

(With ``strategy`` beam or mcts, ``run_search_questions`` below searches each missing question
instead and records its chosen trace once; the same resume and config rules apply per question.)

The run is a set of keys (task, question id, draft index), each with its own seed derived from the
run seed, the question id and the draft index. The runner generates only the keys missing from the
output file, so a run killed at any point and restarted with the same command finishes the missing
drafts only: every key exactly once, no finished work redone, and on a deterministic backend the
same contents as an uninterrupted run. Many drafts are in flight at once (``batch_size`` per
worker, ``workers`` workers); a draft whose generation fails is retried alone, up to ``max_retries``.
The resolved configuration is saved beside the output (``<output>.config.json``); restarting with a
configuration that would change the drafts is refused with the differing fields named.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from metastone.engines import DraftRequest, ServiceDown
from metastone.records import DraftRecord, RecordStore, record_key
from metastone.records import check_or_save_config as save_config
from metastone.sampling import DEFAULT_SAMPLING as SAMPLING
from metastone.sampling import Sampling, request_seed

logger = logging.getLogger(__name__)

# Fields that change what a draft contains: a resumed run must agree on all of them.
CONTENT_FIELDS = ("task", "input_sha256", "model", "seed", "max_tokens", "temperature", "top_p", "repetition_penalty",
                  "stop", "chat_template")


@dataclass(frozen=True)
class RunConfig:
    task: str
    output_file: str
    drafts_per_question: int
    model: str
    input_file: str | None = None
    input_sha256: str = ""
    seed: int = 0
    # sampling (metastone.sampling.Sampling's fields and defaults; flat: the saved, resume-compared form)
    max_tokens: int = SAMPLING.max_tokens
    temperature: float = SAMPLING.temperature
    top_p: float = SAMPLING.top_p
    repetition_penalty: float = SAMPLING.repetition_penalty
    stop: tuple[str, ...] = ()
    chat_template: bool = True
    total_parts: int = field(default=1, metadata={"help": "split the questions into this many parts (one per process)"})
    part: int = field(default=0, metadata={"help": "the part this process runs, in [0, total_parts)"})
    batch_size: int = field(default=16, metadata={"help": "drafts per batch"})
    workers: int = field(default=4, metadata={"help": "batches in flight"})
    max_retries: int = field(default=3, metadata={"help": "a failed draft is retried alone this many times"})
    # Local engines batch the drafts of one question together: same prompt, no padding, so a draft's
    # numbers do not depend on which questions happened to share its batch (resume = same contents).
    group_by_question: bool = False
    # "bon": the per-draft Best-of-N run above (records and config file exactly as before). "beam" /
    # "mcts": one searched trace per question (metastone.search); ``search`` holds the strategy's
    # resolved options (SearchConfig.options()), which are compared on resume like the sampling fields.
    strategy: str = "bon"
    search: dict | None = None

    def __post_init__(self):
        if self.drafts_per_question < 1:
            raise ValueError(f"drafts per question (n_samples x branch) must be >= 1, got {self.drafts_per_question}.")
        if not 0 <= self.part < self.total_parts:
            raise ValueError(f"--part {self.part} must be in [0, --total_parts {self.total_parts}).")
        Sampling.of(self).check()  # the one range check of the sampling options
        if self.batch_size < 1 or self.workers < 1 or self.max_retries < 0:
            raise ValueError("batch_size and workers must be >= 1 and max_retries >= 0.")
        if self.strategy != "bon" and not self.search:
            raise ValueError(f"strategy {self.strategy!r} needs its resolved options in RunConfig.search "
                             "(metastone.search.make_config(...).options()).")

    @property
    def sampling(self) -> Sampling:
        return Sampling.of(self)

    def content(self) -> dict:
        data = asdict(self)
        out = {k: list(data[k]) if isinstance(data[k], tuple) else data[k] for k in CONTENT_FIELDS}
        if self.strategy != "bon":
            out.update(strategy=self.strategy, search=self.search)
        return out

    def as_dict(self) -> dict:
        """The resolved config as saved; a Best-of-N run's is exactly what it was before search existed."""
        data = asdict(self)
        if self.strategy == "bon":
            data.pop("strategy")
            data.pop("search")
        return data

    @property
    def run_id(self) -> str:
        return hashlib.sha256(json.dumps(self.content(), sort_keys=True).encode()).hexdigest()[:16]


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def draft_seed(run_seed: int, question_id: str, draft: int) -> int:
    """A 31-bit seed per draft, stable across runs, machines and shards (``request_seed`` of the path ``(draft,)``)."""
    return request_seed(run_seed, question_id, (draft,))


def check_or_save_config(cfg: RunConfig) -> None:
    """``<output>.config.json``: saved on the first start, compared on every resume (``records.check_or_save_config``)."""
    save_config(cfg.output_file + ".config.json", "content", cfg.content(),
                {"run_id": cfg.run_id, "content": cfg.content(), "config": cfg.as_dict()},
                mismatch=f"{cfg.output_file} was produced with another configuration",
                fix="Resume with the same settings, or write to a new --output_file.")


def my_questions(examples: list, total_parts: int, part: int) -> list:
    """Shard ``part`` of ``total_parts``, interleaved as the original ``test/inference.py`` splits its data
    (``data[part::total_parts]``): part 1 of 3 holds questions 1, 4, 7, ..."""
    return examples[part::total_parts]


def build_prompt(tokenizer, text: str, chat_template: bool) -> tuple[str, list[int]]:
    """The prompt text the policy sees and its token ids (ids of the text as written)."""
    if chat_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    return text, tokenizer.encode(text, add_special_tokens=False)


@dataclass
class RunStats:
    drafts_done: int = 0
    tokens: int = 0
    failures: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    before: int = 0  # records in the output when the run started (set by harness.infer)
    total: int = 0  # records in the output when it ended


def pending_requests(cfg: RunConfig, task, tokenizer, store: RecordStore) -> list[DraftRequest]:
    out = []
    for ex in my_questions(list(task), cfg.total_parts, cfg.part):
        keys = [record_key(cfg.task, ex.id, d) for d in range(cfg.drafts_per_question)]
        missing = [d for d, k in enumerate(keys) if k not in store]
        if not missing:
            continue
        prompt, ids = build_prompt(tokenizer, task.prompt(ex), cfg.chat_template)
        out += [DraftRequest(keys[d], ex.id, d, draft_seed(cfg.seed, ex.id, d), prompt, ids, ex.answer) for d in missing]
    return out


async def run(cfg: RunConfig, task, tokenizer, generator, scorer, store: RecordStore, progress=None) -> RunStats:
    """Generate, score and record every missing draft. Returns the stats; failures are listed there."""
    pending = pending_requests(cfg, task, tokenizer, store)
    stats = RunStats()
    queue: asyncio.Queue[DraftRequest] = asyncio.Queue()
    for req in pending:
        queue.put_nowait(req)
    if progress is not None:
        progress.reset(total=len(pending))
    run_id = cfg.run_id

    def take_batch() -> list[DraftRequest]:
        batch: list[DraftRequest] = []
        while not queue.empty() and len(batch) < cfg.batch_size:
            if cfg.group_by_question and batch and queue._queue[0].question_id != batch[0].question_id:  # noqa: SLF001
                break
            batch.append(queue.get_nowait())
        return batch

    async def score_with_retry(reqs, results):
        seqs = [r.prompt_ids + g.token_ids for r, g in zip(reqs, results)]
        lens = [len(r.prompt_ids) for r in reqs]
        for attempt in range(cfg.max_retries + 1):
            try:
                return await scorer.score(seqs, lens)
            except ServiceDown:
                raise
            except Exception as exc:  # noqa: BLE001
                if attempt == cfg.max_retries:
                    raise
                logger.warning("scoring %d drafts failed (%s); retrying the scoring only", len(reqs), exc)
                await asyncio.sleep(min(2**attempt, 30))

    async def worker() -> None:
        while not queue.empty():
            batch = take_batch()
            t0 = time.monotonic()
            results = await generator.generate(batch, cfg.sampling)
            gen_s = time.monotonic() - t0
            ok_reqs, ok_res = [], []
            for req, res in zip(batch, results):
                if isinstance(res, ServiceDown):
                    raise res
                if isinstance(res, Exception):
                    req.attempts += 1
                    if req.attempts <= cfg.max_retries:
                        logger.warning("draft %s failed (%s); retrying it alone (attempt %d)", req.key, res, req.attempts)
                        queue.put_nowait(req)
                    else:
                        stats.failures.append(f"{req.key}: {res}")
                    continue
                ok_reqs.append(req)
                ok_res.append(res)
            if not ok_reqs:
                await asyncio.sleep(0.5)
                continue
            t1 = time.monotonic()
            # drafts whose engine scored them while generating carry their score; the scorer runs on the rest
            todo = [i for i, res in enumerate(ok_res) if res.score is None]
            scores = [res.score for res in ok_res]
            try:
                if todo:
                    for i, sc in zip(todo, await score_with_retry([ok_reqs[i] for i in todo], [ok_res[i] for i in todo])):
                        scores[i] = sc
            except ServiceDown:
                raise
            except Exception as exc:  # noqa: BLE001 - nothing recorded: a rerun regenerates these seeds
                stats.failures += [f"{ok_reqs[i].key}: scoring failed: {exc}" for i in todo]
                continue
            score_s = time.monotonic() - t1
            for req, res, sc in zip(ok_reqs, ok_res, scores):
                store.append(DraftRecord(
                    req.key, cfg.task, req.question_id, req.draft, req.seed, req.prompt, len(req.prompt_ids), res.text,
                    res.token_ids, res.finish_reason, sc.value, sc.step_scores, sc.positions, req.answer, run_id=run_id,
                    timings={"generate_s": round(gen_s, 4), "score_s": round(score_s, 4), "batch": len(batch)},
                ))
                stats.drafts_done += 1
                stats.tokens += len(res.token_ids)
            if progress is not None:
                elapsed = max(time.monotonic() - stats.started, 1e-9)
                progress.update(len(ok_reqs))
                progress.set_postfix(drafts_s=f"{stats.drafts_done / elapsed:.2f}", tok_s=f"{stats.tokens / elapsed:.0f}",
                                     questions=_questions_done(cfg, task, store))

    await gather_or_stop(worker() for _ in range(cfg.workers))
    return stats


async def gather_or_stop(coroutines) -> None:
    """Run the coroutines side by side; the first to raise cancels the others and its exception is raised
    (not an exception group): a run stops whole, never half-running behind an error."""
    try:
        async with asyncio.TaskGroup() as group:
            for coro in coroutines:
                group.create_task(coro)
    except BaseExceptionGroup as eg:
        first = next((e for e in eg.exceptions if isinstance(e, ServiceDown)), eg.exceptions[0])
        raise first from None


def _questions_done(cfg: RunConfig, task, store: RecordStore) -> str:
    qs = my_questions(list(task), cfg.total_parts, cfg.part)
    done = sum(all(record_key(cfg.task, ex.id, d) in store for d in range(cfg.drafts_per_question)) for ex in qs)
    return f"{done}/{len(qs)}"


async def run_search_questions(cfg: RunConfig, task, tokenizer, searcher, store: RecordStore, progress=None) -> RunStats:
    """SPRM-guided search (``cfg.strategy`` beam | mcts): one record per question, key ``(task, question, 0)``.

    A question is searched from scratch unless its record exists, and its record is written only when
    its search has finished, so a killed run redoes just the unfinished questions (a question's
    requests do not depend on other questions: same contents as an uninterrupted run). The record is a
    draft record (the metrics read ``response`` / ``score``: pass@1 is the chosen answer's accuracy)
    plus ``strategy``, ``node``, ``finished``, ``candidates`` and the tree statistics ``search``.

    ``await searcher(question_id, prompt, prompt_ids)`` searches one question and returns those fields
    (``metastone.search.record_searcher``: the harness does not import the search strategies).
    """
    stats = RunStats()
    todo = [ex for ex in my_questions(list(task), cfg.total_parts, cfg.part) if record_key(cfg.task, ex.id, 0) not in store]
    if progress is not None:
        progress.reset(total=len(todo))
    gate = asyncio.Semaphore(cfg.workers)
    run_id = cfg.run_id

    async def one(ex) -> None:
        async with gate:
            prompt, ids = build_prompt(tokenizer, task.prompt(ex), cfg.chat_template)
            try:
                found = await searcher(ex.id, prompt, ids)
            except ServiceDown:
                raise
            except Exception as exc:  # noqa: BLE001 - one question's failure is listed; a rerun retries it
                stats.failures.append(f"{record_key(cfg.task, ex.id, 0)}: {exc}")
                return
            store.append(DraftRecord(record_key(cfg.task, ex.id, 0), cfg.task, ex.id, 0, cfg.seed, prompt, len(ids),
                                     answer=ex.answer, run_id=run_id, **found))
            stats.drafts_done += 1
            stats.tokens += found["search"]["tokens_generated"]
            if progress is not None:
                elapsed = max(time.monotonic() - stats.started, 1e-9)
                progress.update(1)
                progress.set_postfix(tok_s=f"{stats.tokens / elapsed:.0f}", nodes=found["search"]["nodes_expanded"])

    await gather_or_stop(one(ex) for ex in todo)
    return stats
