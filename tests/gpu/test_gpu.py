"""GPU checks (marker ``gpu``; ``bash scripts/gpu_check.sh`` runs them with the benchmarks).

Each needs CUDA and skips with the reason otherwise (none needs verl or vLLM). What they check:

- the SPRM features in bf16 with packed sequences (one row, position ids restarting per sequence,
  as verl's ``use_remove_padding``) give the padded batch's step scores, and the SPR gradient reaching
  the backbone is ``backbone_grad_scale`` of the head's (``scale_gradient``);
- ``HFScorer`` on CUDA gives the original-style scorer's step scores, and how much faster it is.
"""

from __future__ import annotations

import time

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False)"),
]

BF16_TOL = 3e-2  # step probabilities in bf16: padded vs packed kernels round differently


@pytest.fixture(scope="module")
def gpu_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from metastone.sprm import load_head, resolve_step_spec

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16, attn_implementation="sdpa")
    head, cfg = load_head(tiny_model_dir, dtype=torch.bfloat16)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return model.cuda(), head.cuda(), resolve_step_spec(tok, cfg.separators, cfg.think_tokens), tok


def traces(tok, n=4):
    steps = ["First, 2+3 is 5.\n\n", "Then 5*4 = 20.\n\n", "So the answer is 20.\n\n"]
    return [tok.encode("<think>" + "".join(steps[: 1 + i % 3]) * (1 + i), add_special_tokens=False) for i in range(n)]


def test_packed_bf16_step_scores_equal_the_padded_path(gpu_model):
    from metastone.sprm import step_positions
    from metastone.sprm.features import extract_features

    model, head, spec, tok = gpu_model
    ids = traces(tok)
    lens, width = [len(x) for x in ids], max(len(x) for x in ids)
    padded = torch.full((len(ids), width), tok.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros_like(padded)
    for i, x in enumerate(ids):  # right padding, as verl's padded batches
        padded[i, : len(x)], mask[i, : len(x)] = torch.tensor(x), 1
    packed = torch.tensor([t for x in ids for t in x]).unsqueeze(0)
    positions = torch.cat([torch.arange(n) for n in lens]).unsqueeze(0)
    with torch.no_grad():
        f_pad = extract_features(model, padded.cuda(), mask.cuda(), (mask.cumsum(-1) - 1).clamp(min=0).cuda())
        f_pack = extract_features(model, packed.cuda(), None, positions.cuda())[0]
    offset = 0
    for i, x in enumerate(ids):
        pos = step_positions(x, 0, spec)
        assert pos, "every trace has at least one step"
        p_pad = torch.sigmoid(head(f_pad[i, pos]).float())
        p_pack = torch.sigmoid(head(f_pack[[offset + p for p in pos]]).float())
        assert torch.allclose(p_pad, p_pack, atol=BF16_TOL), (i, (p_pad - p_pack).abs().max().item())
        offset += lens[i]


def test_backbone_gets_backbone_grad_scale_of_the_spr_gradient(gpu_model):
    from metastone.sprm import scale_gradient

    _, head, _, _ = gpu_model
    f = torch.randn(8, head[0].in_features, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    head(f.float().to(torch.bfloat16)).float().sum().backward()
    full = f.grad.clone()
    f.grad = None
    head(scale_gradient(f.float(), 1e-4).to(torch.bfloat16)).float().sum().backward()
    torch.testing.assert_close(f.grad.float(), full.float() * 1e-4, rtol=2e-2, atol=1e-8)


def test_hf_scorer_on_cuda_matches_and_outruns_the_original_style_scorer(tiny_model_dir, gpu_model, capsys):
    from metastone.serve.hf.scorer import HFScorer
    from metastone.sprm import step_positions

    model, head, spec, tok = gpu_model
    ids = traces(tok, 32)
    torch.cuda.synchronize()
    start = time.perf_counter()
    original = []
    with torch.no_grad():
        for x in ids:  # original style: one at a time, every hidden state + the logits
            hidden = model(torch.tensor([x], device="cuda"), output_hidden_states=True).hidden_states[-2][0]
            original.append(torch.sigmoid(head(hidden[step_positions(x, 0, spec)]).float()).tolist())
    torch.cuda.synchronize()
    t_original = time.perf_counter() - start
    scorer = HFScorer(tiny_model_dir, device="cuda", dtype="bfloat16")
    scorer.score_ids(ids[:2])  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    ours = [r.step_scores for r in scorer.score_ids(ids)]
    torch.cuda.synchronize()
    t_ours = time.perf_counter() - start
    for a, b in zip(original, ours):
        assert len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b)) < BF16_TOL
    with capsys.disabled():
        print(f"\nHF scorer on CUDA: original-style {t_original:.3f}s, HFScorer {t_ours:.3f}s, "
              f"ratio {t_original / t_ours:.2f}x ({len(ids)} traces, bf16, tiny model)")
