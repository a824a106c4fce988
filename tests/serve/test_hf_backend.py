"""The HF scorer against an independent step-by-step computation on a tiny Qwen2 with the real tokenizer."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from metastone.serve.hf.scorer import HFScorer

PROMPT = "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n<think>\n"
RESPONSE = "We add two and three.\n\nCheck: five minus three is two.\n\nSo five.\n\n</think>\nThe answer is \\boxed{5}.\n\n"


def independent_score(model_dir, prompt, response):
    """Recompute from scratch: full HF forward, hidden_states[-2], manual MLP, manual geometric mean."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    state = torch.load(model_dir / "score_module.pt", weights_only=True)
    p_ids = tok.encode(prompt, add_special_tokens=False)
    ids = p_ids + tok.encode(response, add_special_tokens=False)
    with torch.no_grad():
        hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-2][0]
    think, end = tok.convert_tokens_to_ids(["<think>", "</think>"])
    sep = tok.encode(".\n\n", add_special_tokens=False)[0]
    first = ids.index(think)
    last = len(ids) - 1 - ids[::-1].index(end)
    positions, scores = [], []
    for s in range(len(p_ids) + 1, len(ids)):
        if ids[s] == sep and first < s < last and ids[s - 1] not in (sep, think):
            h = hidden[s - 1]
            z = torch.relu(state["0.weight"] @ h + state["0.bias"])
            logit = (state["3.weight"] @ z + state["3.bias"]).item()
            positions.append(s - 1)
            scores.append(1 / (1 + math.exp(-logit)))
    value = math.exp(sum(math.log(max(x, 1e-10)) for x in scores) / len(scores)) if scores else 0.0
    return ids, positions, scores, value


def test_score_text_equals_independent_computation(tiny_model_dir):
    ids, positions, scores, value = independent_score(tiny_model_dir, PROMPT, RESPONSE)
    assert len(positions) == 3
    out = HFScorer(tiny_model_dir).score_text(RESPONSE, prompt=PROMPT)
    assert out["token_ids"] == ids and out["score_positions"] == positions
    assert out["all_scores"] == pytest.approx(scores, abs=1e-6)
    assert out["value"] == pytest.approx(value, abs=1e-6)
    # without a prompt split the think span alone decides (the original server's behaviour)
    whole = HFScorer(tiny_model_dir).score_text(PROMPT + RESPONSE)
    assert whole["score_positions"] == positions and whole["value"] == pytest.approx(value, abs=1e-6)


def test_batch_equals_one_by_one(tiny_model_dir):
    scorer = HFScorer(tiny_model_dir, max_batch_tokens=64)
    texts = [PROMPT + RESPONSE, PROMPT + "A.\n\nB.\n\n", PROMPT + RESPONSE * 2, "no think span. at all.\n\nhere.\n\n"]
    seqs = [scorer.encode(t) for t in texts]
    batched = scorer.score_ids(seqs, [0] * len(seqs))
    alone = [HFScorer(tiny_model_dir, max_batch_tokens=10**6).score_ids([s])[0] for s in seqs]
    for b, a in zip(batched, alone):
        assert b.positions == a.positions
        assert b.step_scores == pytest.approx(a.step_scores, abs=1e-5)
        assert b.value == pytest.approx(a.value, abs=1e-5)


def test_bfloat16_close_to_float32(tiny_model_dir):
    a = HFScorer(tiny_model_dir).score_text(PROMPT + RESPONSE)
    b = HFScorer(tiny_model_dir, dtype="bfloat16").score_text(PROMPT + RESPONSE)
    assert b["score_positions"] == a["score_positions"]
    assert b["all_scores"] == pytest.approx(a["all_scores"], abs=0.05)


def test_r1_folder_with_our_head_format(tiny_r1_dir):
    prompt = "<｜begin▁of▁sentence｜><｜User｜>2+3?<｜Assistant｜><think>\n"
    out = HFScorer(tiny_r1_dir).score_text("Add.\n\nDone.\n\n</think>\n5", prompt=prompt)
    assert len(out["score_positions"]) == 2 and 0 < out["value"] < 1


def test_bad_inputs(tiny_model_dir, tmp_path):
    scorer = HFScorer(tiny_model_dir)
    with pytest.raises(ValueError, match="empty"):
        scorer.score_text("")
    with pytest.raises(ValueError, match="prompt length"):
        scorer.score_ids([[1, 2]], [3])
    with pytest.raises(ValueError, match="context of 4096"):
        scorer.score_ids([[1] * 4097])
    with pytest.raises(FileNotFoundError, match="config.json"):
        HFScorer(tmp_path)
    with pytest.raises(ValueError, match=r"hidden size 8, but the model's hidden_size is 64"):
        torch.save({"0.weight": torch.zeros(16, 8), "0.bias": torch.zeros(16), "3.weight": torch.zeros(1, 16),
                    "3.bias": torch.zeros(1)}, tmp_path / "score_module.pt")
        HFScorer(tiny_model_dir, head_path=tmp_path)


def _close(a, b, tol=1e-5):
    assert [x.positions for x in a] == [y.positions for y in b]
    for x, y in zip(a, b):
        assert y.step_scores == pytest.approx(x.step_scores, abs=tol)
        assert y.value == pytest.approx(x.value, abs=tol)


def test_shared_prompt_equals_full_prefill(tiny_model_dir):
    """Best-of-N: drafts of one prompt run the prompt once; scores equal the full prefill's."""
    full = HFScorer(tiny_model_dir, share_prefix=False)
    p = full.encode(PROMPT)
    drafts = [RESPONSE, "A.\n\nB.\n\n</think>\n5", "We add.\n\n", "We add two and three.\n\nCheck.\n\n"]
    seqs = [p + full.encode(r) for r in drafts] + [full.encode("no think. x.\n\nhere.\n\n")]
    lens = [len(p)] * len(drafts) + [0]
    p2 = full.encode("<|im_start|>user\nAnd 7+8, a longer question?<|im_end|>\n<|im_start|>assistant\n<think>\n")
    seqs += [p2 + full.encode(r) for r in drafts[:2]]  # a second prompt of another length: bases padded in one batch
    lens += [len(p2)] * 2
    want = full.score_ids(seqs, lens)
    for kw in ({}, {"max_batch_tokens": 40}, {"prefix_cache_mib": 4}):
        shared = HFScorer(tiny_model_dir, **kw)
        got = shared.score_ids(seqs, lens)
        _close(want, got)
        # the prompt ran once: each draft computed only its own tokens
        own = [len(s) - n for s, n in zip(seqs, lens)]
        share = [len(p) / len(drafts)] * len(drafts) + [0] + [len(p2) / 2] * 2
        assert [g.computed_tokens for g in got] == pytest.approx([a + b for a, b in zip(own, share)])
        assert shared.stats["computed_tokens"] == sum(own) + len(p) + len(p2)


def test_prefix_cache_extends_a_parent(tiny_model_dir):
    """Search: a child path scored after its parent runs only its new step; scores equal the full prefill's."""
    full = HFScorer(tiny_model_dir, share_prefix=False)
    cached = HFScorer(tiny_model_dir, prefix_cache_mib=4)
    p = full.encode(PROMPT)
    steps = [full.encode(x) for x in ("We add two and three.\n\n", "Check: five.\n\n", "So five.\n\n", "</think>\n5")]
    path = list(p)
    for step in steps:
        path = path + step
        want = full.score_ids([path], [len(p)])
        got = cached.score_ids([path], [len(p)])
        _close(want, got)
        assert got[0].computed_tokens == (len(path) if step is steps[0] else len(step))
    again = cached.score_ids([path], [len(p)])  # all cached: nothing runs
    _close(want, again)
    assert again[0].computed_tokens == 0


def test_prefix_cache_is_bounded(tiny_model_dir):
    scorer = HFScorer(tiny_model_dir, prefix_cache_mib=0.1)
    seqs = [scorer.encode(PROMPT + "x" * k + RESPONSE) for k in range(1, 30)]
    scorer.score_ids(seqs)
    assert 0 < scorer.prefix_cache.bytes <= 0.1 * 2**20 and 0 < len(scorer.prefix_cache) < len(seqs)
    with pytest.raises(ValueError, match="prefix_cache_mib"):
        HFScorer(tiny_model_dir, prefix_cache_mib=-1)


@pytest.mark.slow
def test_scoring_while_generating_on_hf_gives_the_scorers_probabilities_and_the_same_drafts(peaky_model):
    """``HFPolicy.attach_head`` / ``LocalGenerator("hf", score_while_generating=True)``: the same drafts as the plain
    policy (sampled with the penalty, greedy, and stopped at the separator so rows end at different steps of a
    left-padded batch); every token probability the policy records is the head's on a full forward of prompt +
    draft (fp32, 1e-5; only a last token may lack one), and each draft's score is the scorer's."""
    import asyncio

    from metastone.engines import DraftRequest, LocalGenerator, Sampling
    from metastone.eval.tasks import load_task
    from metastone.serve.hf.policy import HFPolicy
    from metastone.sprm import load_head
    from metastone.sprm.features import extract_features

    model_dir, (sep,) = peaky_model
    task = load_task("demo")
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = [tok.encode(task.prompt(task[i]), add_special_tokens=False) for i in range(3)]
    prompts.append(prompts[0][:-7])  # shorter: padded on the left
    settings = [Sampling(max_tokens=24, temperature=0.8, top_p=0.9, repetition_penalty=1.05),
                Sampling(max_tokens=24, temperature=0.0),
                Sampling(max_tokens=24, temperature=1.0, stop_token_ids=(sep,))]
    plain, fused = HFPolicy(model_dir), HFPolicy(model_dir)
    fused.attach_head()
    head, cfg = load_head(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    seeds = list(range(len(prompts)))
    n_missing = 0
    for s in settings:
        a, b = fused.generate(prompts, seeds, s), plain.generate(prompts, seeds, s)
        assert [d.token_ids for d in a] == [d.token_ids for d in b]
        assert all(d.token_probs is None for d in b)
        for p, d in zip(prompts, a):
            assert len(d.token_probs) == len(d.token_ids)
            with torch.no_grad():
                ref = head.probs(extract_features(model, torch.tensor([p + d.token_ids]), feature_layer=cfg.feature_layer)[0])
            ref = ref[len(p):].tolist()
            n_missing += math.isnan(d.token_probs[-1])
            assert not any(math.isnan(x) for x in d.token_probs[:-1])
            got = [x for x in d.token_probs if not math.isnan(x)]
            assert got == pytest.approx(ref[: len(got)], abs=1e-5)
    assert n_missing  # the batch's longest drafts end with no forward over their last token
    reqs = [DraftRequest(key=f"k{i}", question_id="q", draft=i, seed=i, prompt="", prompt_ids=p) for i, p in enumerate(prompts)]
    gen = LocalGenerator("hf", str(model_dir), dtype="float32", device="cpu", score_while_generating=True)
    results = asyncio.run(gen.generate(reqs, settings[0]))
    asyncio.run(gen.close())
    ref = HFScorer(model_dir).score_ids([r.prompt_ids + g.token_ids for r, g in zip(reqs, results)], [len(p) for p in prompts])
    assert sum(len(r.positions) for r in ref) >= 3
    for got, want in zip((g.score for g in results), ref):
        assert got.positions == want.positions
        assert got.step_scores == pytest.approx(want.step_scores, abs=1e-5)
        assert got.value == pytest.approx(want.value, abs=1e-5)
