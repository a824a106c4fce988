"""The original release's client against our services: its exact request bodies, both backends.

The original ``test/task.py`` applies the chat template to the question and posts to ``/generate``
``{"prefix_prompt", "max_tokens": 32768, "response_num", "stop": [], "temperature", "seed"}``, then
each draft to ``/score`` ``{"text": prompt + draft}``. ``max_tokens`` is far beyond the context left
after the prompt; the original service (vLLM's offline ``generate``) stopped at the context, so the
drafts must come back (200) and end there, with the length finish reason; their text, tokenized again,
may be longer than the context, and is still scored (on the prefix that fits).

The model here is shaped like a released one where it matters: its context is its
``max_position_embeddings`` (no ``--max_model_len``) and its embedding is padded past the tokenizer
(Qwen2's 152,064 rows), so the policy can emit ids the tokenizer does not know.
"""

import httpx
import pytest

CONTEXT = 192  # small, so drafts reach it quickly on the tiny model
QWEN2_VOCAB = 152064
QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"


@pytest.fixture(scope="module")
def context_model(tmp_path_factory, qwq_tokenizer):
    from metastone.assets.tiny import make_tiny_qwen2

    return make_tiny_qwen2(tmp_path_factory.mktemp("ctx_model"), qwq_tokenizer, head_format="released", seed=1,
                           max_position_embeddings=CONTEXT, vocab_size=QWEN2_VOCAB)


@pytest.fixture(scope="module", params=[pytest.param("hf", marks=pytest.mark.slow),
                                        pytest.param("vllm", marks=[pytest.mark.serve, pytest.mark.slow])])
def services(request, context_model):
    from tests.serve.conftest import Server

    tiny_model_dir = context_model

    backend = request.param
    if backend == "vllm":
        pytest.importorskip("vllm")
    eager = ["--enforce_eager"] if backend == "vllm" else []
    started = []
    try:
        started.append(Server(["serve-policy", "--model_path", str(tiny_model_dir), "--backend", backend, "--dtype", "float32",
                               *eager], ready_timeout=420, wait=False))
        started.append(Server(["serve-score", "--model_path", str(tiny_model_dir), "--score_model_dim", "64", "--lang", "en",
                               "--backend", backend, "--dtype", "float32"], ready_timeout=420, wait=False))
        for server in started:  # started side by side
            server.ready()
        yield backend, started[0], started[1]
    finally:
        for server in started:
            server.stop()


def test_original_generate_and_score_bodies(services, context_model):
    from transformers import AutoTokenizer

    tiny_model_dir = context_model
    backend, policy, scorer = services
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True)
    body = {"prefix_prompt": prompt, "max_tokens": 32768, "response_num": 2, "stop": [], "temperature": 0.6, "seed": 2**32 - 1}
    resp = httpx.post(policy.url + "/generate", json=body, timeout=600)
    assert resp.status_code == 200, resp.text
    drafts = resp.json()["results"]
    assert len(drafts) == 2 and all(isinstance(d, str) for d in drafts)
    for draft in drafts:  # the original scores each draft as prompt + draft text
        score = httpx.post(scorer.url + "/score", json={"text": prompt + draft}, timeout=300)
        assert score.status_code == 200, score.text
        assert 0.0 <= score.json()["value"] <= 1.0
        retokenized = len(tokenizer.encode(prompt + draft, add_special_tokens=False))
        assert score.json().get("truncated", False) == (retokenized > CONTEXT), (retokenized, score.json())

    detail = httpx.post(policy.url + "/generate", json={**body, "seed": 7, "return_token_ids": True}, timeout=600).json()
    prompt_len = len(tokenizer.encode(prompt, add_special_tokens=False))
    lengths = [prompt_len + len(ids) for ids in detail["token_ids"]]
    assert all(n <= CONTEXT for n in lengths)
    assert "length" in detail["finish_reasons"]
    assert all(n == CONTEXT for n, why in zip(lengths, detail["finish_reasons"]) if why == "length"), (lengths, detail["finish_reasons"])
    assert policy.tail().count("clamped to") == 1  # logged once, not per request
    # our client scores the policy's own ids; every id below the embedding size is one the model can emit
    ids = [[*tokenizer.encode(prompt, add_special_tokens=False), *d] for d in detail["token_ids"]]
    ids[0][-1] = QWEN2_VOCAB - 1  # past the tokenizer (151,665 entries), inside the padded embedding
    scored = httpx.post(scorer.url + "/score_ids", json={"sequences": ids, "prompt_lens": [prompt_len] * len(ids)}, timeout=300)
    assert scored.status_code == 200, scored.text
    assert all("truncated" not in r for r in scored.json()["results"])  # the policy's ids fit its context

    # the OpenAI route keeps the engine's validation: a request that does not fit is refused
    comp = httpx.post(policy.url + "/v1/completions", json={"model": str(tiny_model_dir), "prompt": prompt,
                                                             "max_tokens": 32768}, timeout=120)
    assert comp.status_code == 400, comp.text
    # a prompt that alone fills the context is refused on /generate too, naming the field
    full = httpx.post(policy.url + "/generate", json={**body, "prefix_prompt": prompt + " word" * (2 * CONTEXT)}, timeout=120)
    assert full.status_code == 413 and "prefix_prompt" in full.text
