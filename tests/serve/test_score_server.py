"""The scoring service over real HTTP on loopback (HF backend), plus batching/OOM/auth units."""

import asyncio

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from metastone.serve.hf.scorer import HFScorer
from metastone.serve.http.common import MicroBatcher
from metastone.serve.http.score_server import create_score_app
from metastone.serve.scoring import TraceScore
from tests.serve.test_hf_backend import PROMPT, RESPONSE


@pytest.fixture(scope="module")
def score_server(tiny_model_dir):
    from tests.serve.conftest import Server

    server = Server(["serve-score", "--model_path", str(tiny_model_dir), "--backend", "hf", "--dtype", "float32",
                     "--score_model_dim", "64"])
    yield server
    server.stop()


def test_original_contract_and_token_id_endpoint(score_server, tiny_model_dir):
    ref = HFScorer(tiny_model_dir).score_text(PROMPT + RESPONSE)
    short = httpx.post(score_server.url + "/score", json={"text": PROMPT + RESPONSE}).json()
    assert set(short) == {"value"} and short["value"] == pytest.approx(ref["value"], abs=1e-6)
    full = httpx.post(score_server.url + "/score", json={"text": PROMPT + RESPONSE, "return_all_scores": True}).json()
    assert set(full) == {"value", "all_scores", "token_ids", "score_positions"}
    assert full["token_ids"] == ref["token_ids"] and full["score_positions"] == ref["score_positions"]
    assert full["all_scores"] == pytest.approx(ref["all_scores"], abs=1e-6)
    p_len = len(HFScorer(tiny_model_dir).encode(PROMPT))
    out = httpx.post(score_server.url + "/score_ids", json={"sequences": [ref["token_ids"], ref["token_ids"][:20]],
                                                              "prompt_lens": [p_len, 0]}).json()
    assert out["results"][0]["score_positions"] == ref["score_positions"]
    assert out["results"][0]["value"] == pytest.approx(ref["value"], abs=1e-6)


def test_traces_longer_than_the_context_are_scored_on_the_prefix_that_fits(score_server, tiny_model_dir):
    """A text whose tokens exceed the context (4,096 here) is scored on its first 4,096 tokens, and says so,
    on both endpoints; the ids the model can read go up to its embedding size, past the tokenizer's length."""
    hf = HFScorer(tiny_model_dir)
    text = (PROMPT + RESPONSE) * 100
    ids = hf.encode(text)
    assert len(ids) > hf.max_len == 4096
    ref = hf.score_ids([ids[: hf.max_len]])[0]
    out = httpx.post(score_server.url + "/score", json={"text": text, "return_all_scores": True}, timeout=120).json()
    assert out["truncated"] is True and out["scored_tokens"] == hf.max_len and out["token_ids"] == ids
    assert out["score_positions"] == ref.positions and max(ref.positions) < hf.max_len
    assert out["value"] == pytest.approx(ref.value, abs=1e-6)
    short = httpx.post(score_server.url + "/score", json={"text": text}, timeout=120).json()
    assert short["value"] == pytest.approx(ref.value, abs=1e-6) and short["truncated"] is True
    both = httpx.post(score_server.url + "/score_ids", json={"sequences": [ids, ids[:100]], "prompt_lens": [20, 20]},
                      timeout=120).json()["results"]
    assert both[0]["truncated"] is True and both[0]["scored_tokens"] == hf.max_len and "truncated" not in both[1]
    assert both[0]["value"] == pytest.approx(hf.score_ids([ids[: hf.max_len]], [20])[0].value, abs=1e-6)

    vocab = hf.model.get_input_embeddings().num_embeddings
    assert vocab > len(hf.tokenizer)  # padded, as Qwen2's real embedding is
    top = httpx.post(score_server.url + "/score_ids", json={"sequences": [ids[:50] + [vocab - 1]]})
    assert top.status_code == 200, top.text
    above = httpx.post(score_server.url + "/score_ids", json={"sequences": [ids[:50] + [vocab]]})
    assert above.status_code == 400 and f"[0, {vocab})" in above.text


def test_concurrent_requests_are_batched(score_server):
    async def many():
        async with httpx.AsyncClient(base_url=score_server.url, timeout=120) as client:
            before = (await client.get("/health")).json()["batches_run"]
            texts = [PROMPT + RESPONSE * (1 + i % 3) for i in range(16)]
            results = await asyncio.gather(*(client.post("/score", json={"text": t}) for t in texts))
            after = (await client.get("/health")).json()["batches_run"]
            return results, after - before

    results, batches = asyncio.run(many())
    assert all(r.status_code == 200 for r in results)
    assert batches < 16


@pytest.mark.parametrize(
    "body,status,field",
    [
        (b"{not json", 422, None),
        ({"text": 5}, 422, "text"),
        ({"text": ""}, 422, "text"),
        ({"text": "   "}, 400, "text"),
        ({"text": "hi", "extra": 1}, 422, "extra"),
        ({"text": "hi", "return_all_scores": "yes"}, 422, "return_all_scores"),
    ],
)
def test_bad_score_requests_name_the_field_and_server_keeps_serving(score_server, body, status, field):
    kwargs = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else {"json": body}
    resp = httpx.post(score_server.url + "/score", **kwargs)
    assert resp.status_code == status, resp.text
    if field is not None:
        assert field in resp.text
    assert httpx.get(score_server.url + "/health").status_code == 200


@pytest.mark.parametrize(
    "body,field",
    [
        ({"sequences": []}, "sequences"),
        ({"sequences": [[]]}, "sequences[0]"),
        ({"sequences": [[1, 2]], "prompt_lens": [3]}, "prompt_lens[0]"),
        ({"sequences": [[1, 2]], "prompt_lens": [0, 0]}, "prompt_lens"),
        ({"sequences": [[1, -2]]}, "sequences[0]"),
        ({"sequences": [[1, 10**9]]}, "sequences[0]"),
        ({"sequences": [["a"]]}, "sequences"),
    ],
)
def test_bad_score_ids_requests(score_server, body, field):
    resp = httpx.post(score_server.url + "/score_ids", json=body)
    assert 400 <= resp.status_code < 500 and field in resp.text, resp.text


def test_openapi_lists_the_endpoints(score_server):
    spec = httpx.get(score_server.url + "/openapi.json").json()
    assert {"/score", "/score_ids", "/health"} <= set(spec["paths"])


class StubScorer:
    """Scores 0.5 per sequence; raises out-of-memory for batches larger than ``oom_above``."""

    def __init__(self, oom_above=10**9):
        self.oom_above, self.calls = oom_above, []

    def score_ids(self, sequences, prompt_lens=None):
        self.calls.append(len(sequences))
        if len(sequences) > self.oom_above or any(len(s) > 50 for s in sequences):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return [TraceScore(0.5, [0.5], [0]) for _ in sequences]


def test_out_of_memory_retries_alone_then_413():
    stub = StubScorer(oom_above=1)
    app = create_score_app(stub, lambda t: [1] * len(t), max_len=1000, max_wait_s=0.05)
    with TestClient(app) as client:
        ok = client.post("/score_ids", json={"sequences": [[1, 2], [3, 4], [5]]})
        assert ok.status_code == 200 and [r["value"] for r in ok.json()["results"]] == [0.5] * 3
        assert stub.calls[0] == 3 and stub.calls[1:] == [1, 1, 1]
        too_big = client.post("/score", json={"text": "x" * 60})
        assert too_big.status_code == 413 and "out of memory" in too_big.text
        assert client.post("/score", json={"text": "fine"}).status_code == 200


def test_api_key():
    app = create_score_app(StubScorer(), lambda t: [1, 2], max_len=100, api_key="s3cret")
    with TestClient(app) as client:
        assert client.post("/score", json={"text": "a"}).status_code == 401
        assert client.post("/score", json={"text": "a"}, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert client.post("/score", json={"text": "a"}, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/health").status_code == 200


def test_micro_batcher_groups_concurrent_items():
    seen = []

    def fn(items):
        seen.append(list(items))
        return [i * 2 for i in items]

    async def run():
        b = MicroBatcher(fn, max_batch=4, max_wait_s=0.05)
        out = await asyncio.gather(*(b.submit(i) for i in range(10)))
        await b.close()
        return out

    assert asyncio.run(run()) == [i * 2 for i in range(10)]
    assert [len(x) for x in seen] == [4, 4, 2]


def test_score_model_dim_mismatch_is_an_error(tiny_model_dir, capsys):
    from metastone.cli import main

    assert main(["serve-score", "--model_path", str(tiny_model_dir), "--score_model_dim", "1536", "--backend", "hf"]) == 2
    err = capsys.readouterr().err
    assert "1536" in err and "hidden_size 64" in err


class SlowScorer(StubScorer):
    """Takes ``delay_s`` per batch and counts the sequences it scored."""

    def __init__(self, delay_s):
        super().__init__()
        self.delay_s, self.scored = delay_s, 0

    def score_ids(self, sequences, prompt_lens=None):
        import time

        time.sleep(self.delay_s)
        self.scored += len(sequences)
        return super().score_ids(sequences, prompt_lens)


def _serve_in_thread(app):
    import threading

    import uvicorn

    from metastone.devices import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            import time

            time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}"


def test_load_guard_refuses_past_max_in_flight_and_drops_requests_whose_client_left():
    """Back-pressure: with ``max_in_flight`` 4 and a slow model, 8 concurrent requests give 4 answers and 4
    503s with ``Retry-After`` (at once, not after a wait). Cancellation: clients that time out and hang up
    while their requests wait are never scored; ``/health`` counts both."""
    import time

    scorer = SlowScorer(delay_s=0.6)
    server, thread, url = _serve_in_thread(create_score_app(scorer, lambda t: [1, 2], max_len=100, max_batch=1,
                                                            max_in_flight=4))
    try:
        async def burst():
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                return await asyncio.gather(*(client.post("/score_ids", json={"sequences": [[1, 2, i]]}) for i in range(8)))

        t0 = time.monotonic()
        answers = asyncio.run(burst())
        codes = sorted(a.status_code for a in answers)
        assert codes == [200] * 4 + [503] * 4, codes
        busy = next(a for a in answers if a.status_code == 503)
        assert busy.headers["retry-after"] == "1" and "max_in_flight" in busy.text
        assert time.monotonic() - t0 < 4 * 0.6 + 1.5  # the four accepted, one batch each; refusals did not wait
        assert httpx.get(url + "/health").json()["refused_busy"] == 4

        scored_before = scorer.scored

        async def leave():
            async with httpx.AsyncClient(base_url=url, timeout=0.3) as client:
                return await asyncio.gather(*(client.post("/score_ids", json={"sequences": [[3, i]]}) for i in range(4)),
                                            return_exceptions=True)

        assert all(isinstance(r, httpx.TimeoutException) for r in asyncio.run(leave()))
        time.sleep(4 * 0.6 + 0.5)  # long enough for all four to have been scored had they stayed
        health = httpx.get(url + "/health").json()
        assert health["abandoned"] == 4 and health["in_flight"] == 0
        assert scorer.scored - scored_before <= 1 and health["dropped_unscored"] >= 3  # only the one already running
    finally:
        server.should_exit = True
        thread.join(timeout=10)
