"""The policy service over real HTTP on loopback with the HF backend, and HFPolicy sampling."""

import httpx
import pytest

from metastone.sampling import Sampling
from metastone.serve.hf.policy import HFPolicy

PROMPT = "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n<think>\n"


@pytest.fixture(scope="module")
def policy_server(tiny_model_dir):
    from tests.serve.conftest import Server

    server = Server(["serve-policy", "--model_path", str(tiny_model_dir), "--backend", "hf", "--dtype", "float32"])
    yield server
    server.stop()


def test_generate_contract_and_seeds(policy_server):
    body = {"prefix_prompt": PROMPT, "max_tokens": 12, "response_num": 3, "temperature": 1.0, "seed": 0}
    a = httpx.post(policy_server.url + "/generate", json=body, timeout=120).json()
    b = httpx.post(policy_server.url + "/generate", json=body, timeout=120).json()
    assert set(a) == {"results"} and len(a["results"]) == 3 and all(isinstance(t, str) for t in a["results"])
    assert a == b  # seed 0 is a seed: same request, same drafts
    assert len(set(a["results"])) == 3  # each draft has its own seed
    other = httpx.post(policy_server.url + "/generate", json={**body, "seed": 1}, timeout=120).json()
    assert other["results"][0] == a["results"][1]  # draft i uses seed + i
    ids = httpx.post(policy_server.url + "/generate", json={**body, "return_token_ids": True}, timeout=120).json()
    assert ids["results"] == a["results"] and len(ids["token_ids"]) == 3 and ids["finish_reasons"][0] in ("stop", "length")


def test_openai_completions_with_token_ids(policy_server, tiny_model_dir):
    policy = HFPolicy(tiny_model_dir)
    prompt_ids = policy.encode(PROMPT)
    out = httpx.post(policy_server.url + "/v1/completions", json={
        "prompt": prompt_ids, "n": 2, "max_tokens": 8, "temperature": 0.8, "seed": 5, "return_token_ids": True}, timeout=120).json()
    assert [c["index"] for c in out["choices"]] == [0, 1]
    assert out["usage"]["prompt_tokens"] == len(prompt_ids)
    local = policy.generate([prompt_ids] * 2, [5, 6], Sampling(max_tokens=8, temperature=0.8, top_p=1.0, repetition_penalty=1.0))
    assert [c["token_ids"] for c in out["choices"]] == [d.token_ids for d in local]
    assert httpx.get(policy_server.url + "/v1/models").json()["data"][0]["id"] == str(tiny_model_dir)


@pytest.mark.parametrize(
    "body,status,field",
    [
        ({"prefix_prompt": ""}, 422, "prefix_prompt"),
        ({"prefix_prompt": "hi", "response_num": 0}, 422, "response_num"),
        ({"prefix_prompt": "hi", "max_tokens": "many"}, 422, "max_tokens"),
        ({"prefix_prompt": "hi", "temperature": -1}, 422, "temperature"),
        ({"prefix_prompt": "hi", "bogus": 1}, 422, "bogus"),
        ({"prefix_prompt": "hi", "seed": 2**64}, 422, "seed"),
        ({"prefix_prompt": "hi", "max_tokens": 0}, 422, "max_tokens"),
    ],
)
def test_bad_generate_requests(policy_server, body, status, field):
    resp = httpx.post(policy_server.url + "/generate", json=body, timeout=60)
    assert resp.status_code == status and field in resp.text, resp.text
    assert httpx.get(policy_server.url + "/health").status_code == 200


def test_sampling_is_per_draft_and_stops(tiny_model_dir):
    policy = HFPolicy(tiny_model_dir, max_batch=4)
    ids = policy.encode(PROMPT)
    cfg = Sampling(max_tokens=10, temperature=1.0, top_p=0.9, repetition_penalty=1.0)
    together = policy.generate([ids, ids, ids], [7, 8, 9], cfg)
    alone = policy.generate([ids], [8], cfg)
    assert together[1].token_ids == alone[0].token_ids  # a draft does not depend on its batch-mates
    greedy = policy.generate([ids, ids], [1, 2], Sampling(max_tokens=6, temperature=0, repetition_penalty=1.0))
    assert greedy[0].token_ids == greedy[1].token_ids
    first = together[0].text
    if len(first) > 3:
        stop = first[2:4]
        cut = policy.generate([ids], [7], Sampling(max_tokens=10, temperature=1.0, top_p=0.9, stop=(stop,), repetition_penalty=1.0))[0]
        assert cut.finish_reason == "stop" and stop not in cut.text and first.startswith(cut.text)
    with pytest.raises(ValueError, match="top_p"):
        Sampling(top_p=0).check()


def test_engine_errors_name_our_field():
    from metastone.serve.http.policy_server import engine_error

    greedy = httpx.Response(400, json={"error": {"message": "n must be 1 when using greedy sampling, got 2.", "param": None}})
    assert engine_error(greedy).status_code == 400 and engine_error(greedy).detail["field"] == "response_num"
    assert engine_error(httpx.Response(400, json={"error": {"message": "bad", "param": "max_tokens"}})).detail["field"] == "max_tokens"
    assert engine_error(httpx.Response(500, text="boom")).status_code == 502


def test_openai_bodies_carry_sampling_to_the_cpu_processors():
    """serve-policy on CPU moves an OpenAI request's top-p and repetition penalty into vllm_xargs (our
    processors, serve/vllm/cpu_sampling.py); values and bodies it does not understand reach vLLM unchanged, so
    vLLM's own validation answers them."""
    import json

    from metastone.serve.vllm.cpu_sampling import REPETITION_ARG, TOP_P_ARG
    from metastone.serve.http.policy_server import _sampling_to_xargs

    def moved(body):
        return json.loads(_sampling_to_xargs(json.dumps(body).encode()))

    out = moved({"prompt": "x", "top_p": 0.9, "repetition_penalty": 1.05, "vllm_xargs": {"a": 1}})
    assert out["top_p"] == 1.0 and out["repetition_penalty"] == 1.0
    assert out["vllm_xargs"] == {"a": 1, TOP_P_ARG: 0.9, REPETITION_ARG: 1.05}
    out = moved({"top_p": "0.5", "repetition_penalty": 1.1})  # a bad top-p stays for vLLM to refuse
    assert out["top_p"] == "0.5" and out["vllm_xargs"] == {REPETITION_ARG: 1.1}
    for body in (b"not json", b"[1]", json.dumps({"top_p": 1.0, "repetition_penalty": 1}).encode(),
                 json.dumps({"top_p": 0}).encode(), json.dumps({"repetition_penalty": -1}).encode(),
                 json.dumps({"prompt": "x"}).encode(), json.dumps({"top_p": 0.5, "vllm_xargs": {TOP_P_ARG: 0.2}}).encode(),
                 json.dumps({"top_p": 0.5, "vllm_xargs": "bad"}).encode(), json.dumps({"top_p": True}).encode()):
        assert _sampling_to_xargs(body) == body


def _requests(model_dir, n=4):
    from transformers import AutoTokenizer

    from metastone.engines import DraftRequest
    from metastone.eval.tasks import load_task

    tok, task = AutoTokenizer.from_pretrained(model_dir), load_task("demo")
    prompts = [tok.encode(task.prompt(task[i]), add_special_tokens=False) for i in range(n)]
    return [DraftRequest(f"k{i}", "q", i, i, "", p) for i, p in enumerate(prompts)]


def check_service_scores(url, model_dir, reqs, sampling):
    """``ServerGenerator`` against a service started with ``--score_while_generating``: every draft comes back
    with the separate HF scorer's step scores (1e-5, same positions); returns the drafts."""
    import asyncio

    from metastone.engines.http import ServerGenerator
    from metastone.serve.hf.scorer import HFScorer

    async def main():
        gen = ServerGenerator([url], str(model_dir))
        try:
            return await gen.generate(reqs, sampling)
        finally:
            await gen.close()

    results = asyncio.run(main())
    assert not [r for r in results if isinstance(r, Exception)], results
    ref = HFScorer(model_dir).score_ids([q.prompt_ids + r.token_ids for q, r in zip(reqs, results)],
                                        [len(q.prompt_ids) for q in reqs])
    assert sum(len(r.positions) for r in ref) >= 2
    for got, want in zip((r.score for r in results), ref):
        assert got is not None and got.positions == want.positions
        assert got.step_scores == pytest.approx(want.step_scores, abs=1e-5)
        assert got.value == pytest.approx(want.value, abs=1e-5)
    return results


def test_hf_service_scoring_while_generating(peaky_model, server_factory):
    """``serve-policy --backend hf --score_while_generating``, as the README starts it: the drafts
    ``ServerGenerator`` gets are the plain policy's, each with the scorer's step scores; OpenAI choices
    of any ``n`` carry ``sprm``."""
    from metastone.serve.hf.policy import HFPolicy

    model_dir, _ = peaky_model
    server = server_factory(["serve-policy", "--model_path", str(model_dir), "--backend", "hf", "--dtype", "float32",
                             "--score_while_generating"])
    reqs = _requests(model_dir)
    sampling = Sampling(max_tokens=24, temperature=1.0, top_p=0.9, repetition_penalty=1.05)
    results = check_service_scores(server.url, model_dir, reqs, sampling)
    plain = HFPolicy(model_dir)
    assert [r.token_ids for r in results] == [plain.generate([q.prompt_ids], [q.seed], sampling)[0].token_ids for q in reqs]
    body = {"model": str(model_dir), "prompt": "Q: 1+1?\nA:", "n": 2, "max_tokens": 8, "seed": 0}
    out = httpx.post(server.url + "/v1/completions", json=body, timeout=120).json()
    assert all(set(c["sprm"]) == {"value", "all_scores", "score_positions"} for c in out["choices"])


def test_only_single_draft_openai_bodies_are_keyed_for_step_scores():
    """The vLLM proxy keys a ``/v1/completions`` body for step scores (a key in ``vllm_xargs``, token ids asked
    for) only when the engine writes one record for it: one prompt, n = 1, not streamed, no beam search or echo."""
    import json

    from metastone.serve.http.policy_server import _ask_step_scores
    from metastone.serve.step_scores import STEP_SCORES_ARG, StepScoreCollector, valid_key

    class Keys:
        new_key, request_args = staticmethod(StepScoreCollector.new_key), staticmethod(StepScoreCollector.request_args)

    for body, asked in (({"prompt": "x", "vllm_xargs": {"a": 1}}, False), ({"prompt": [1, 2], "n": 1, "return_token_ids": True}, True)):
        content, key, asked_ids = _ask_step_scores(json.dumps(body).encode(), Keys)
        out = json.loads(content)
        assert valid_key(key) and asked_ids is asked and out["return_token_ids"] is True
        assert out["vllm_xargs"] == {**body.get("vllm_xargs", {}), STEP_SCORES_ARG: key}
    for body in (b"not json", b"[1]", json.dumps({"prompt": "x", "n": 2}).encode(), json.dumps({"prompt": ["a", "b"]}).encode(),
                 json.dumps({"prompt": [[1], [2]]}).encode(), json.dumps({"prompt": "x", "stream": True}).encode(),
                 json.dumps({"prompt": "x", "echo": True}).encode(), json.dumps({"prompt": "x", "vllm_xargs": "bad"}).encode(),
                 json.dumps({"prompt": []}).encode()):
        assert _ask_step_scores(body, Keys) == (body, None, False)
