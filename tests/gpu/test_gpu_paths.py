"""The HF paths on the check device (CUDA; ``--check-device cpu`` runs the same on CPU): what a CUDA machine with
only PyTorch can prove without vLLM, verl or Ray (``scripts/gpu_check.sh``, docs/gpu.md).

- ``HFScorer`` in fp32 and bf16 gives the CPU fp32 reference's step scores on the same traces;
- the policy and score services (HF backend) started as the README starts them answer the original
  client's request bodies, with the reference's scores;
- scoring while generating on the HF backend: the same drafts as the plain policy, the scorer's scores;
- one joint policy + SPRM training step without verl (FSDP2 over one rank, gradient checkpointing,
  bf16) on 0.5B- and 1.5B-shaped random Qwen2s (a tiny one on CPU): finite, head overhead, tokens/s,
  peak memory; then the export of what it trained, scored by ``metastone score``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from metastone.serve.hf.scorer import HFScorer

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]
PROMPT = "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n<think>\n"
RESPONSES = ["We add two and three.\n\nCheck: five minus three is two.\n\nSo five.\n\n</think>\nThe answer is 5.",
             "Two plus three.\n\n" * 40 + "</think>\n5",
             "Short.\n\nThen.\n\n"]
TOL = {"float32": 1e-4, "bfloat16": 3e-2}  # step probabilities; bf16 kernels round differently from fp32 CPU


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    return HFScorer(tiny_model_dir)  # CPU, fp32


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_hf_scorer_matches_the_cpu_fp32_reference(check_device, tiny_model_dir, reference, dtype, record_property):
    scorer = HFScorer(tiny_model_dir, device=check_device, dtype=dtype)
    seqs = [reference.encode(PROMPT + r) for r in RESPONSES]
    lens = [len(reference.encode(PROMPT))] * len(seqs)
    got, want = scorer.score_ids(seqs, lens), reference.score_ids(seqs, lens)
    assert sum(len(w.positions) for w in want) >= 10
    worst = 0.0
    for g, w in zip(got, want):
        assert g.positions == w.positions
        worst = max([worst, abs(g.value - w.value), *(abs(a - b) for a, b in zip(g.step_scores, w.step_scores))])
    record_property("max_abs_diff", worst)
    assert worst <= TOL[dtype], (dtype, worst)


def test_services_answer_the_original_clients_bodies(check_device, tiny_model_dir, reference, server_factory):
    """``metastone serve-policy`` / ``serve-score --backend hf`` as the README starts them (no ``--device``: CUDA
    when there is one), the original ``test/task.py`` bodies: ``/generate`` then ``/score`` of prompt + draft."""
    device = [] if check_device.startswith("cuda") else ["--device", check_device]
    common = ["--model_path", str(tiny_model_dir), "--backend", "hf", "--dtype", "float32", *device]
    policy = server_factory(["serve-policy", *common], wait=False)
    scorer = server_factory(["serve-score", *common], wait=False)
    policy.ready()
    scorer.ready()
    body = {"prefix_prompt": PROMPT, "max_tokens": 48, "response_num": 3, "stop": [], "temperature": 0.7, "seed": 7}
    resp = httpx.post(policy.url + "/generate", json=body, timeout=300)
    assert resp.status_code == 200, resp.text
    drafts = resp.json()["results"]
    assert len(drafts) == 3 and all(isinstance(d, str) and d for d in drafts)
    for text in [PROMPT + d for d in drafts] + [PROMPT + RESPONSES[0]]:
        got = httpx.post(scorer.url + "/score", json={"text": text}, timeout=300)
        assert got.status_code == 200, got.text
        want = reference.score_text(text)
        assert got.json()["value"] == pytest.approx(want["value"], abs=TOL["float32"])
    for server in (policy, scorer):  # each service runs on the check device
        assert f"HF backend on device {check_device}" in server.tail(), server.tail()


def test_scoring_while_generating_on_hf(check_device, peaky_model):
    import asyncio

    from metastone.engines import DraftRequest, LocalGenerator, Sampling
    from metastone.eval.tasks import load_task

    model_dir, _ = peaky_model
    scorer = HFScorer(model_dir)
    task = load_task("demo")
    prompts = [scorer.encode(task.prompt(task[i])) for i in range(4)]
    reqs = [DraftRequest(key=f"k{i}", question_id="q", draft=i, seed=i, prompt="", prompt_ids=p) for i, p in enumerate(prompts)]
    sampling = Sampling(max_tokens=32, temperature=0.8, top_p=0.9, repetition_penalty=1.05)
    drafts = {}
    for fused in (True, False):
        gen = LocalGenerator("hf", str(model_dir), dtype="float32", device=check_device, score_while_generating=fused)
        try:
            drafts[fused] = asyncio.run(gen.generate(reqs, sampling))
        finally:
            asyncio.run(gen.close())
    assert [d.token_ids for d in drafts[True]] == [d.token_ids for d in drafts[False]]
    want = scorer.score_ids([q.prompt_ids + d.token_ids for q, d in zip(reqs, drafts[True])], [len(p) for p in prompts])
    assert sum(len(w.positions) for w in want) >= 3
    for d, w in zip(drafts[True], want):
        assert d.score.positions == w.positions
        assert d.score.step_scores == pytest.approx(w.step_scores, abs=TOL["float32"])


def test_one_joint_training_step_without_verl_then_export_and_score(check_device, tmp_path, record_property):
    """``benchmarks/bench_sprm_step.py`` per shape (its own process each: one FSDP2 group, memory freed)."""
    cuda = check_device.startswith("cuda")
    shapes = ("0.5b", "1.5b") if cuda else ("tiny",)
    for shape in shapes:
        out = tmp_path / shape
        cmd = [sys.executable, "benchmarks/bench_sprm_step.py", "--shape", shape, "--device", check_device,
               "--dtype", "bf16", "--json", str(tmp_path / f"{shape}.json"), "--save", str(out)]
        if not cuda:
            cmd += ["--seq-len", "128", "--steps", "1"]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads((tmp_path / f"{shape}.json").read_text())
        assert report["finite"] and report["export_steps"] >= 3
        assert (out / "score_module.pt").is_file() and (out / "config.json").is_file()
        for key in ("head_overhead_pct", "tokens_per_s", "peak_memory_gib", "params", "seq_len", "export_max_abs_diff"):
            record_property(f"{shape}_{key}", report[key])
