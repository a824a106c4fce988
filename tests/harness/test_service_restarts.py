"""A run outlives its services: the clients wait through an outage (backoff, one log line per outage), and
``test/inference.py`` finishes when the policy service and then the score service are killed and restarted
mid-run, every draft recorded once and equal to an uninterrupted run's (HF: the in-process run, so served
equals in-process too; the vLLM case is in ``tests/serve/test_vllm.py``)."""

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from metastone.engines import ServiceDown
from metastone.engines.http import ServerScorer, ServiceWaiter

ROOT = Path(__file__).resolve().parents[2]


def _client(handler) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url="http://127.0.0.1:9", transport=httpx.MockTransport(handler))


def test_waiter_retries_through_an_outage_and_logs_it_once(caplog):
    """Refused connections, then 503 (Retry-After 0), then answers: 8 concurrent requests all succeed; one
    'down' and one 'back' line, not one per request. A 500 or 4xx is the request's own answer, not an outage."""
    calls = {"n": 0}

    def handler(request):
        calls["n"] += 1
        if calls["n"] <= 12:
            raise httpx.ConnectError("connection refused", request=request)
        if calls["n"] <= 20:
            return httpx.Response(503, headers={"Retry-After": "0"}, json={"detail": "busy"})
        return httpx.Response(200, json={"ok": json.loads(request.content)["i"]})

    async def go():
        waiter = ServiceWaiter("score service", _client(handler), wait_s=30)
        return waiter, await asyncio.gather(*(waiter.post("/score_ids", {"i": i}) for i in range(8)))

    with caplog.at_level(logging.WARNING, logger="metastone.engines.http"):
        waiter, answers = asyncio.run(go())
    assert [a.json()["ok"] for a in answers] == list(range(8))
    assert waiter.outages == 1 and waiter.down_since is None
    lines = [r.getMessage() for r in caplog.records]
    assert sum("is down" in m for m in lines) == 1 and sum("is back after" in m for m in lines) == 1, lines

    for status in (500, 400):
        waiter = ServiceWaiter("score service", _client(lambda r, s=status: httpx.Response(s, text="no")), wait_s=30)
        assert asyncio.run(waiter.post("/score_ids", {})).status_code == status and waiter.outages == 0


def test_waiter_gives_up_after_its_deadline_with_a_message_that_says_what_to_do():
    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    scorer = ServerScorer("http://127.0.0.1:9/score", wait_s=1.0)
    scorer.client = _client(refuse)
    scorer.service.client = scorer.client
    t0 = time.monotonic()
    with pytest.raises(ServiceDown, match="rerun the same command"):
        asyncio.run(scorer.score([[1, 2, 3]], [1]))
    assert 0.9 <= time.monotonic() - t0 < 5
    with pytest.raises(ValueError, match="service_wait_s"):
        from metastone.engines import EngineConfig

        EngineConfig(model_dir="m", service_wait_s=-1)


def test_a_service_gone_past_the_wait_stops_the_run_with_finished_drafts_kept(tmp_path):
    """The runner stops at ``ServiceDown`` (no draft marked failed, no worker left running); a rerun resumes."""
    from metastone.harness.runner import run
    from metastone.records import RecordStore
    from tests.harness.test_runner import FakeScorer, FakeTask, FakeTokenizer, FlakyGenerator, cfg

    class DiesAfterTwoBatches(FlakyGenerator):
        async def generate(self, requests, sampling):
            if len(self.calls) >= 2:
                return [ServiceDown("policy service gone")] * len(requests)
            return await super().generate(requests, sampling)

    gen = DiesAfterTwoBatches()
    with RecordStore(tmp_path / "o.jsonl") as store, pytest.raises(ServiceDown):
        asyncio.run(run(cfg(tmp_path, max_retries=1), FakeTask(3), FakeTokenizer(), gen, FakeScorer(), store))
    done = len((tmp_path / "o.jsonl").read_text().splitlines())
    assert 0 < done < 18 and len(gen.calls) <= 2 + 3  # the other workers stopped with it
    with RecordStore(tmp_path / "o.jsonl") as store:
        stats = asyncio.run(run(cfg(tmp_path, max_retries=1), FakeTask(3), FakeTokenizer(), FlakyGenerator(), FakeScorer(), store))
        assert len(store) == 18 and stats.drafts_done == 18 - done and not stats.failures


def _records(path: Path) -> dict:
    out = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        assert r["key"] not in out, f"{r['key']} recorded twice"
        out[r["key"]] = r
    return out


def _wait_for_records(path: Path, n: int, proc, timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        have = len(path.read_text().splitlines()) if path.exists() else 0
        if have >= n:
            return have
        assert proc.poll() is None, "the run ended before the service was killed"
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} records after {timeout} s")


@pytest.mark.slow
@pytest.mark.serve  # once per CI run (the HTTP clients are the same code in both environments)
def test_inference_py_survives_both_services_killed_and_restarted(tiny_model_dir, demo4, tmp_path, server_factory):
    """HF services (the vLLM ones: ``tests/serve/test_vllm.py``, on the services its other tests share)."""
    common = ["--model_path", str(tiny_model_dir), "--backend", "hf", "--dtype", "float32"]
    policy = server_factory(["serve-policy", *common], wait=False)
    scorer = server_factory(["serve-score", *common], wait=False)
    policy.ready()
    scorer.ready()
    run_through_restarts(policy, scorer, tiny_model_dir, demo4, tmp_path, in_process_reference=True)


def _wait_for_log(path: Path, text: str, proc, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text():
            return
        assert proc.poll() is None, f"the run ended before logging {text!r}:\n{path.read_text()[-3000:]}"
        time.sleep(0.05)
    raise AssertionError(f"no {text!r} in the run's log after {timeout} s")


def run_through_restarts(policy, scorer, model_dir, data, tmp_path, *, in_process_reference: bool) -> None:
    """``test/inference.py`` against ``policy`` and ``scorer`` (running): the policy service is ``kill -9``'d after
    4 records; once the run logs it down, the score service is killed too and the policy service restarted on
    its port; once the run logs the score service down, it is restarted. The run must exit 0 with every
    draft once, equal to the reference run (``in_process_reference``: HF in this process, else the same services
    undisturbed), and log one "down" line per service. Both services are running again afterwards."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def cmd(out, served=True):
        run = [sys.executable, "test/inference.py", "--task", "demo", "--input_file", str(data), "--output_file",
               str(out), "--n_samples", "2", "--branch", "4", "--model_dir", str(model_dir), "--max_tokens", "24",
               "--temperature", "1.0", "--no_progress"]
        if not served:
            return [*run, "--backend", "hf", "--dtype", "float32"]
        # two policy URLs in the original style (drafts round-robin over them; here one service behind both)
        return [*run, "--batch_size", "2", "--workers", "4", "--response_api_url", f"{policy.url}/generate,{policy.url}",
                "--score_api_url", scorer.url + "/score"]

    ref = tmp_path / "ref.jsonl"
    subprocess.run(cmd(ref, served=not in_process_reference), cwd=ROOT, env=env, check=True, capture_output=True,
                   timeout=900)
    out, log = tmp_path / "faulted.jsonl", tmp_path / "faulted.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd(out), cwd=ROOT, env=env, stdout=err, stderr=subprocess.STDOUT)
        try:
            # Each step waits for an event, never for time: the run cannot finish before the second kill
            # (it is stalled on the dead policy service), and each service comes back only after the
            # run has noticed it gone.
            _wait_for_records(out, 4, proc)
            policy.kill()
            _wait_for_log(log, f"policy service {policy.url} is down", proc)
            scorer.kill()
            policy.restart()
            _wait_for_log(log, f"score service {scorer.url} is down", proc)
            scorer.restart()
            assert proc.wait(timeout=900) == 0, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    for name, service in (("policy service", policy), ("score service", scorer)):  # one line per outage
        assert text.count(f"{name} {service.url} is down") == 1, text[-3000:]
        assert f"{name} {service.url} is back after" in text
    got, want = _records(out), _records(ref)
    assert len(got) == len(want) == 4 * 8 and set(got) == set(want)
    for key, w in want.items():
        g = got[key]
        assert (g["token_ids"], g["response"], g["score_positions"]) == (w["token_ids"], w["response"], w["score_positions"]), key
        assert g["score"] == pytest.approx(w["score"], abs=1e-6) and g["step_scores"] == pytest.approx(w["step_scores"], abs=1e-6)
