"""The in-process engines merge concurrent calls into one engine batch and route every result back."""

from __future__ import annotations

import asyncio
import threading

import pytest

from metastone.engines import Coalescer, DraftRequest, GenResult, LocalGenerator, LocalScorer, Sampling


class Recorder:
    """A batch function that logs its batches; ``gate`` (if set) holds a batch until released."""

    def __init__(self, gate: threading.Event | None = None, fail_on=None):
        self.batches: list[list] = []
        self.gate = gate
        self.fail_on = fail_on

    def __call__(self, items):
        self.batches.append(list(items))
        if self.gate is not None:
            self.gate.wait(5)
        if self.fail_on is not None and self.fail_on in items:
            raise RuntimeError(f"engine failed on {self.fail_on}")
        return [x * 10 for x in items]

    async def running(self):
        """Wait until the first batch has started (and is held by the gate)."""
        while not self.batches:
            await asyncio.sleep(0.01)


def test_concurrent_calls_make_one_batch_and_get_their_own_results():
    rec = Recorder()
    batcher = Coalescer(rec)

    async def main():
        return await asyncio.gather(*(batcher.submit([i, i + 100]) for i in range(5)))

    out = asyncio.run(main())
    assert out == [[i * 10, (i + 100) * 10] for i in range(5)]
    assert len(rec.batches) == 1 and sorted(rec.batches[0]) == sorted(x for i in range(5) for x in (i, i + 100))


def test_calls_arriving_during_a_batch_form_the_next_batch():
    gate = threading.Event()
    rec = Recorder(gate)
    batcher = Coalescer(rec)

    async def main():
        first = asyncio.create_task(batcher.submit([1]))
        await rec.running()
        later = [asyncio.create_task(batcher.submit([k])) for k in (2, 3, 4)]
        await asyncio.sleep(0.05)
        gate.set()
        return await first, await asyncio.gather(*later)

    first, later = asyncio.run(main())
    assert first == [10] and later == [[20], [30], [40]]
    assert rec.batches == [[1], [2, 3, 4]]


def test_a_failed_batch_fails_its_callers_only():
    rec = Recorder(fail_on=7)
    batcher = Coalescer(rec)

    async def main():
        bad = await asyncio.gather(batcher.submit([7]), batcher.submit([8]), return_exceptions=True)
        good = await batcher.submit([9])
        return bad, good

    bad, good = asyncio.run(main())
    assert all(isinstance(b, RuntimeError) and "failed on 7" in str(b) for b in bad)
    assert good == [90]


def test_a_cancelled_caller_does_not_disturb_the_others():
    gate = threading.Event()
    rec = Recorder(gate)
    batcher = Coalescer(rec)

    async def main():
        a = asyncio.create_task(batcher.submit([1]))
        b = asyncio.create_task(batcher.submit([2]))
        await rec.running()
        a.cancel()
        gate.set()
        return await b, await asyncio.gather(a, return_exceptions=True)

    b, (a,) = asyncio.run(main())
    assert b == [20] and isinstance(a, asyncio.CancelledError)


def test_empty_call_returns_at_once():
    rec = Recorder()
    assert asyncio.run(Coalescer(rec).submit([])) == [] and rec.batches == []


class FakePolicy:
    def __init__(self):
        self.calls = []

    def generate(self, prompts, seeds, cfg):
        from types import SimpleNamespace

        self.calls.append((len(prompts), cfg.max_tokens))
        return [SimpleNamespace(text=f"s{s}:{cfg.max_tokens}", token_ids=[s], finish_reason="stop", stop_reason=None)
                for s in seeds]


def test_hf_generator_groups_merged_requests_by_sampling():
    gen = object.__new__(LocalGenerator)
    gen.backend, gen.policy, gen.step_scores = "hf", FakePolicy(), None
    gen._batcher = Coalescer(gen._run)

    def req(seed):
        return DraftRequest(f"k{seed}", "q", 0, seed, "", [1, 2])

    async def main():
        return await asyncio.gather(
            gen.generate([req(1), req(2)], Sampling(max_tokens=8)),
            gen.generate([req(3)], Sampling(max_tokens=4)),
            gen.generate([req(4)], Sampling(max_tokens=8)),
        )

    a, b, c = asyncio.run(main())
    assert [r.text for r in a] == ["s1:8", "s2:8"] and [r.text for r in b] == ["s3:4"] and [r.text for r in c] == ["s4:8"]
    assert all(isinstance(r, GenResult) for r in a + b + c)
    assert sorted(gen.policy.calls) == [(1, 4), (3, 8)]  # one engine batch, one policy call per sampling


class FakeScorer:
    def __init__(self):
        self.calls = 0

    def score_ids(self, sequences, prompt_lens):
        self.calls += 1
        return [(len(s), n) for s, n in zip(sequences, prompt_lens)]


def test_local_scorer_merges_and_checks_lengths():
    inner = FakeScorer()
    scorer = LocalScorer(inner)

    async def main():
        return await asyncio.gather(scorer.score([[1, 2, 3]], [1]), scorer.score([[1], [1, 2]], [0, 1]))

    assert asyncio.run(main()) == [[(3, 1)], [(1, 0), (2, 1)]]
    assert inner.calls == 1
    with pytest.raises(ValueError, match="1 sequences but 2 prompt lengths"):
        asyncio.run(scorer.score([[1]], [1, 2]))


def test_scoring_while_generating_is_refused_where_it_cannot_run():
    """Only an in-process policy (vLLM or HF) scores while generating: the flag with services is an error that
    names what to use, not a silently separate scoring pass; a head path without it is refused too."""
    from metastone.engines import EngineConfig, LocalGenerator, make_engines

    with pytest.raises(ValueError, match="head_path only applies with score_while_generating=True"):
        LocalGenerator("hf", "no/such/model", head_path="head")
    with pytest.raises(ValueError, match="--score_while_generating needs --backend vllm or hf"):
        make_engines(EngineConfig(model_dir="m", backend="server", score_while_generating=True))


def test_a_dead_vllm_engine_is_named_and_stops_the_run_other_failures_are_per_draft():
    """vLLM's ``EngineDeadError`` (matched by name: no vLLM import) becomes ``ServiceDown`` from both local
    engines; any other exception stays the call's own (retried per draft by the runner)."""
    import asyncio

    from metastone.engines import LocalScorer, ServiceDown
    from metastone.engines.local import engine_died

    class EngineDeadError(RuntimeError):
        pass

    assert engine_died(ValueError("bad"), "policy") is None
    assert "scorer engine died" in str(engine_died(EngineDeadError("gone"), "scorer"))

    class Dead:
        def score_ids(self, sequences, prompt_lens):
            raise EngineDeadError("EngineCore encountered an issue")

    with pytest.raises(ServiceDown, match="rerun the same command"):
        asyncio.run(LocalScorer(Dead()).score([[1, 2, 3]], [1]))

    class Flaky:
        def score_ids(self, sequences, prompt_lens):
            raise RuntimeError("transient")

    with pytest.raises(RuntimeError, match="transient"):
        asyncio.run(LocalScorer(Flaky()).score([[1, 2, 3]], [1]))


def test_lazy_scorer_starts_its_engine_on_first_use_only():
    """With scoring while generating the separate scorer is made only if a request needs it (one engine start)."""
    from metastone.engines.factory import LazyScorer

    made, closed = [], []

    class Inner:
        async def score(self, seqs, lens):
            return [len(s) - n for s, n in zip(seqs, lens)]

        async def close(self):
            closed.append(True)

    def make():
        made.append(True)
        return Inner()

    async def main():
        unused = LazyScorer(make)
        await unused.close()
        used = LazyScorer(make)
        first = await asyncio.gather(*(used.score([[1, 2, 3]], [1]) for _ in range(4)))
        await used.close()
        return first

    assert asyncio.run(main()) == [[2]] * 4
    assert made == [True] and closed == [True]  # the concurrent first calls made one engine; the unused one none


def test_run_config_puts_drafts_in_flight_by_backend():
    """vLLM in-process: large batches, two in flight, not grouped by question; HF: one question per batch (no
    padding across prompts, so a resumed run equals an uninterrupted one); services: per policy URL."""
    from metastone.eval.tasks import load_task
    from metastone.harness.infer import IN_FLIGHT, run_config

    with load_task("demo") as task:
        vllm = run_config(task, "x.jsonl", "m", 8, backend="vllm")
        hf = run_config(task, "x.jsonl", "m", 8, backend="hf")
        server = run_config(task, "x.jsonl", "m", 8, backend="server", n_urls=3)
        given = run_config(task, "x.jsonl", "m", 8, backend="vllm", batch_size=5, workers=7)
        with pytest.raises(ValueError, match="backend must be one of server, vllm, hf"):
            run_config(task, "x.jsonl", "m", 8, backend="local")
    assert (vllm.batch_size, vllm.workers, vllm.group_by_question) == (IN_FLIGHT["vllm"][0], IN_FLIGHT["vllm"][1], False)
    assert vllm.batch_size * vllm.workers >= 128
    assert (hf.batch_size, hf.workers, hf.group_by_question) == (16, 1, True)
    assert (server.batch_size, server.workers, server.group_by_question) == (8, 6, False)
    assert (given.batch_size, given.workers) == (5, 7)
    assert vllm.content() == hf.content()  # how drafts are put in flight is not part of what a run contains
