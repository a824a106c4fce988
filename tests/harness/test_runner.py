"""The runner: every key once, failing drafts retried alone, kill-and-resume equals an uninterrupted run."""

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metastone.eval.tasks import Example
from metastone.engines import GenResult
from metastone.records import RecordStore
from metastone.harness.runner import RunConfig, run
from metastone.serve.scoring import TraceScore


class FakeTask:
    def __init__(self, n):
        self.examples = [Example(f"q{i}", f"question {i}", i) for i in range(n)]

    def __iter__(self):
        return iter(self.examples)

    def prompt(self, ex):
        return ex.prompt


class FakeTokenizer:
    def encode(self, text, add_special_tokens=False):
        return [ord(c) % 50 for c in text]


class FlakyGenerator:
    """Fails the first attempt of every third draft; records each request."""

    def __init__(self):
        self.calls, self.seen = [], set()

    async def generate(self, requests, sampling):
        self.calls.append([r.key for r in requests])
        out = []
        for r in requests:
            if r.draft % 3 == 0 and r.key not in self.seen:
                self.seen.add(r.key)
                out.append(RuntimeError("connection reset"))
            else:
                out.append(GenResult(f"draft {r.key} seed {r.seed}", [r.seed % 7, 1, 2], "stop"))
        return out


class FakeScorer:
    def __init__(self):
        self.batches = []

    async def score(self, seqs, lens):
        self.batches.append(len(seqs))
        return [TraceScore(0.5, [0.5], [p]) for p in lens]


def cfg(tmp_path, **kw):
    return RunConfig(task="demo", output_file=str(tmp_path / "o.jsonl"), drafts_per_question=6, model="m",
                     chat_template=False, batch_size=5, workers=3, **kw)


def test_infer_loads_engines_only_for_missing_drafts_and_closes_them(tmp_path):
    from metastone.engines import Engines
    from metastone.harness.infer import infer

    made = []

    class Closing(FakeScorer):
        closed = False

        async def close(self):
            self.closed = True

    def engines():
        gen = FlakyGenerator()
        gen.close = Closing().close
        made.append(Engines("hf", gen, Closing()))
        return made[-1]

    stats = infer(cfg(tmp_path), FakeTask(2), FakeTokenizer(), engines)
    assert (stats.before, stats.total, stats.drafts_done) == (0, 12, 12) and made[0].scorer.closed
    again = infer(cfg(tmp_path), FakeTask(2), FakeTokenizer(), engines)  # finished: no engine is made
    assert (again.before, again.total, again.drafts_done, len(made)) == (12, 12, 0, 1)


def test_every_key_once_and_failures_retried_alone(tmp_path):
    gen, scorer = FlakyGenerator(), FakeScorer()
    with RecordStore(tmp_path / "o.jsonl") as store:
        stats = asyncio.run(run(cfg(tmp_path), FakeTask(4), FakeTokenizer(), gen, scorer, store))
    lines = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    keys = [r["key"] for r in lines]
    assert len(keys) == len(set(keys)) == 24 and not stats.failures
    # the failed drafts were asked for again, and nothing else was generated twice
    requested = [k for call in gen.calls for k in call]
    assert sorted(k for k in set(requested) if requested.count(k) > 1) == sorted(gen.seen)
    rec = lines[0]
    assert {"key", "seed", "prompt", "prompt_len", "response", "token_ids", "finish_reason", "score", "step_scores",
            "score_positions", "answer", "timings", "run_id"} <= set(rec)
    # a rerun has nothing left to do
    with RecordStore(tmp_path / "o.jsonl") as store:
        again = asyncio.run(run(cfg(tmp_path), FakeTask(4), FakeTokenizer(), FlakyGenerator(), FakeScorer(), store))
    assert again.drafts_done == 0


def test_part_1_of_3_runs_questions_1_4_7(tmp_path):
    with RecordStore(tmp_path / "o.jsonl") as store:
        asyncio.run(run(cfg(tmp_path, total_parts=3, part=1), FakeTask(10), FakeTokenizer(), FlakyGenerator(),
                        FakeScorer(), store))
    lines = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert sorted({r["question_id"] for r in lines}, key=lambda q: int(q[1:])) == ["q1", "q4", "q7"]


def test_permanent_failures_are_reported_not_recorded(tmp_path):
    class Broken:
        async def generate(self, requests, sampling):
            return [RuntimeError("down")] * len(requests)

    with RecordStore(tmp_path / "o.jsonl") as store:
        stats = asyncio.run(run(cfg(tmp_path, max_retries=1), FakeTask(1), FakeTokenizer(), Broken(), FakeScorer(), store))
        assert len(store) == 0
    assert len(stats.failures) == 6 and "down" in stats.failures[0]


def _infer_cmd(model_dir, data, out, extra=()):
    return [sys.executable, "test/inference.py", "--task", "demo", "--input_file", str(data), "--output_file", str(out),
            "--n_samples", "2", "--branch", "2", "--model_dir", str(model_dir), "--backend", "hf", "--dtype", "float32",
            "--max_tokens", "10", "--temperature", "1.0", "--no_progress", *extra]


def _contents(path):
    recs = [json.loads(x) for x in Path(path).read_text().splitlines()]
    for r in recs:
        r.pop("timings")
    return recs


@pytest.fixture(scope="module")
def demo_file(tmp_path_factory):
    from metastone.eval.tasks import DATA_DIR

    path = tmp_path_factory.mktemp("demo") / "demo4.jsonl"
    path.write_text("".join((DATA_DIR / "demo" / "test.jsonl").read_text().splitlines(keepends=True)[:4]))
    return path


@pytest.mark.slow
def test_killed_runs_resume_to_the_uninterrupted_result(tiny_model_dir, demo_file, tmp_path):
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ref = tmp_path / "ref.jsonl"
    subprocess.run(_infer_cmd(tiny_model_dir, demo_file, ref), cwd=root, env=env, check=True, capture_output=True, timeout=600)
    out = tmp_path / "killed.jsonl"
    rng = random.Random(0)
    kills = 0
    for _ in range(3):
        proc = subprocess.Popen(_infer_cmd(tiny_model_dir, demo_file, out), cwd=root, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(rng.uniform(4.0, 9.0))
        if proc.poll() is not None:
            break
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
    subprocess.run(_infer_cmd(tiny_model_dir, demo_file, out), cwd=root, env=env, check=True, capture_output=True, timeout=600)
    assert kills >= 1
    got, want = _contents(out), _contents(ref)
    assert len(got) == len({r["key"] for r in got}) == 16
    assert sorted(got, key=lambda r: r["key"]) == sorted(want, key=lambda r: r["key"])


def test_drafts_scored_while_generating_skip_the_scorer(tmp_path):
    """A generator that returns a draft's score (``score_while_generating``) has it recorded as is; only the
    drafts that come back without one go to the scorer."""

    class HalfScoring:
        async def generate(self, requests, sampling):
            return [GenResult(f"d{r.key}", [1, 2, 3], "stop",
                              score=TraceScore(0.25, [0.25], [7]) if r.draft % 2 else None) for r in requests]

    class CountingScorer(FakeScorer):
        async def score(self, seqs, lens):
            self.batches.append(len(seqs))
            return [TraceScore(0.75, [0.75], [p]) for p in lens]

    scorer = CountingScorer()
    with RecordStore(tmp_path / "o.jsonl") as store:
        stats = asyncio.run(run(cfg(tmp_path), FakeTask(2), FakeTokenizer(), HalfScoring(), scorer, store))
    records = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert stats.drafts_done == 12 and sum(scorer.batches) == 6
    for r in records:
        assert (r["score"], r["score_positions"]) == ((0.25, [7]) if r["draft"] % 2 else (0.75, [r["prompt_len"]]))


@pytest.mark.slow
def test_inference_py_hf_scoring_while_generating_records_the_scorers_step_scores(peaky_model, demo_file, tmp_path):
    """``test/inference.py --backend hf --score_while_generating``, as the README runs it: the same drafts and
    step scores (1e-5, same positions) as the run scored by the separate HF scorer, with steps to score."""
    model_dir, _ = peaky_model
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    runs, scoring_s = {}, {}
    for name, extra in (("fused", ["--score_while_generating"]), ("scored", [])):
        cmd = _infer_cmd(model_dir, demo_file, tmp_path / f"{name}.jsonl", ["--max_tokens", "24", *extra])
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        scoring_s[name] = [json.loads(x)["timings"]["score_s"] for x in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        runs[name] = {r["key"]: r for r in _contents(tmp_path / f"{name}.jsonl")}
    assert set(scoring_s["fused"]) == {0.0} and min(scoring_s["scored"]) > 0  # the scorer never ran for the fused run
    fused, scored = runs["fused"], runs["scored"]
    assert sorted(fused) == sorted(scored) and len(fused) == 16
    for key, a in fused.items():
        b = scored[key]
        assert a["token_ids"] == b["token_ids"] and a["score_positions"] == b["score_positions"]
        assert a["step_scores"] == pytest.approx(b["step_scores"], abs=1e-5)
    assert sum(len(r["step_scores"]) for r in fused.values()) >= 6
