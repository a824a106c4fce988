"""CPU sampling (serve/vllm/cpu_sampling.py): the sort-free top-p, checked against an exact float64 nucleus and
vLLM's sort-based function; the sparse repetition penalty, bit for bit against vLLM's; the processors'
per-request bookkeeping."""

import pytest
import torch

from metastone.serve.vllm.cpu_sampling import REPETITION_ARG, TOP_P_ARG, repetition_penalty_, split_sampling, top_p_filter_

VOCAB = 151_936  # Qwen2's: the size the CPU engines sample from


def exact_mass_above(logits: torch.Tensor) -> torch.Tensor:
    """[rows, vocab] float64: the probability mass ranked strictly above each token (descending order)."""
    probs = logits.double().softmax(-1)
    vals, idx = probs.sort(dim=-1, descending=True)
    above = vals.cumsum(-1) - vals
    return torch.empty_like(above).scatter_(1, idx, above)


def assert_nucleus(kept: torch.Tensor, logits: torch.Tensor, p: torch.Tensor, tol: float):
    """Every token is kept iff the mass above it is < p, except within ``tol`` of p (float rounding)."""
    above = exact_mass_above(logits)
    want = above < p.double()[:, None]
    wrong = kept != want
    assert kept.gather(1, logits.argmax(-1, keepdim=True)).all(), "the most likely token must always be kept"
    if wrong.any():
        gap = (above[wrong] - p.double()[:, None].expand_as(above)[wrong]).abs().max().item()
        assert gap < tol, f"{int(wrong.sum())} tokens decided differently, up to {gap:.2e} from p"


@pytest.mark.parametrize("scale", [0.05, 1.0, 8.0], ids=["near-uniform", "spread", "peaked"])
def test_matches_the_exact_nucleus(scale):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(12, VOCAB, generator=gen) * scale
    p = torch.tensor([0.95, 0.5, 0.1, 0.999, 0.01, 0.7, 0.95, 0.3, 0.9, 0.8, 0.6, 0.99])
    out = top_p_filter_(logits.clone(), p)
    kept = torch.isfinite(out)
    assert_nucleus(kept, logits, p, tol=1e-6)
    assert torch.equal(out[kept], logits[kept])  # kept logits are untouched


def test_rows_at_one_are_left_alone_and_rows_are_independent():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(20, 5000, generator=gen) * 2
    p = torch.ones(20)
    p[[3, 11, 17]] = torch.tensor([0.5, 0.9, 0.2])
    out = top_p_filter_(logits.clone(), p)
    untouched = [i for i in range(20) if p[i] == 1]
    assert torch.equal(out[untouched], logits[untouched])
    alone = top_p_filter_(logits[[11]].clone(), p[[11]])  # a row's nucleus does not depend on its batch
    assert torch.equal(out[11], alone[0])
    assert_nucleus(torch.isfinite(out[[3, 11, 17]]), logits[[3, 11, 17]], p[[3, 11, 17]], tol=1e-6)


def test_exact_ties_keep_as_many_tokens_as_the_rule_needs():
    # 10 higher tokens then 1,000 equal ones: a tied token is kept while the mass above it is < p, so the
    # count is fixed even though which tied tokens are kept is not (vLLM's sort breaks ties arbitrarily)
    logits = torch.cat([torch.full((1, 10), 3.0), torch.zeros(1, 1000)], dim=1)
    above = exact_mass_above(logits)[0]
    for p in (0.2, 0.5, 0.75, 0.9, 0.99):
        kept = torch.isfinite(top_p_filter_(logits.clone(), torch.tensor([p])))[0]
        assert int(kept.sum()) == int((above < p).sum()), p
        assert kept[:10].all() or int(kept.sum()) < 10


def test_bfloat16_logits_and_bad_shapes():
    gen = torch.Generator().manual_seed(2)
    logits = (torch.randn(4, VOCAB, generator=gen) * 0.5).bfloat16()  # many exact ties after rounding
    p = torch.tensor([0.9, 0.5, 0.95, 0.3])
    out = top_p_filter_(logits.clone(), p)
    assert out.dtype == torch.bfloat16
    above = exact_mass_above(logits.float())
    kept = torch.isfinite(out)
    for r in range(4):  # ties at the threshold may be chosen differently; the count may not
        want = int((above[r] < p[r].double()).sum())
        assert abs(int(kept[r].sum()) - want) <= 1
    with pytest.raises(ValueError, match="logits \\[rows, vocab\\]"):
        top_p_filter_(torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="top_p \\[rows\\]"):
        top_p_filter_(torch.zeros(2, 5), torch.ones(3))


def test_split_sampling():
    neutral = {"top_p": 1.0, "repetition_penalty": 1.0}
    assert split_sampling(0.95, 1.05) == (neutral, {TOP_P_ARG: 0.95, REPETITION_ARG: 1.05})
    assert split_sampling(0.95, 1.0) == (neutral, {TOP_P_ARG: 0.95})
    assert split_sampling(1.0, 1.0) == (neutral, None)
    with pytest.raises(ValueError, match="top_p must be in"):
        split_sampling(0.0, 1.0)
    with pytest.raises(ValueError, match="repetition_penalty must be > 0"):
        split_sampling(0.5, 0.0)


def test_repetition_penalty_is_vllms_bit_for_bit():
    pytest.importorskip("vllm")
    from vllm._custom_ops import apply_repetition_penalties_torch

    gen = torch.Generator().manual_seed(4)
    rows, vocab = 6, 5000
    logits = torch.randn(rows, vocab, generator=gen) * 4
    prompt = [torch.randint(0, vocab, (n,), generator=gen) for n in (30, 1, 0, 50, 7, 12)]
    output = [torch.randint(0, vocab, (n,), generator=gen) for n in (5, 0, 9, 40, 0, 3)]
    penalty = torch.tensor([1.05, 1.3, 0.8, 1.0, 2.0, 1.05])
    prompt_mask = torch.zeros(rows, vocab, dtype=torch.bool)
    output_mask = torch.zeros(rows, vocab, dtype=torch.bool)
    for r in range(rows):
        prompt_mask[r, prompt[r]] = True
        output_mask[r, output[r]] = True
    theirs = logits.clone()
    apply_repetition_penalties_torch(theirs, prompt_mask, output_mask, penalty)
    ours = repetition_penalty_(logits.clone(), [torch.cat([p, o, o[:2]]) for p, o in zip(prompt, output)], penalty)
    assert torch.equal(ours, theirs)  # repeats in `seen` are penalised once, as vLLM's masks do
    assert torch.equal(repetition_penalty_(logits.clone(), [None] * rows, penalty), logits)


def test_same_nucleus_as_vllms_sort():
    pytest.importorskip("vllm")
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch

    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(16, VOCAB, generator=gen) * torch.linspace(0.05, 6, 16)[:, None]
    p = torch.rand(16, generator=gen) * 0.98 + 0.01
    ours = torch.isfinite(top_p_filter_(logits.clone(), p))
    theirs = torch.isfinite(apply_top_k_top_p_pytorch(logits.clone(), None, p, allow_cpu_sync=True))
    # vLLM sums 152k probabilities in float32 over an ascending sort: its boundary drifts by a few 1e-6
    assert_nucleus(theirs, logits, p, tol=2e-5)
    assert_nucleus(ours, logits, p, tol=1e-6)
    assert (ours != theirs).sum() <= 16 * 8


def test_processor_follows_the_batch():
    pytest.importorskip("vllm")
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

    from metastone.serve.vllm.models import NucleusOnCPU

    def params(p=None):
        return SamplingParams(extra_args={TOP_P_ARG: p} if p is not None else None)

    proc = NucleusOnCPU(None, torch.device("cpu"), False)
    assert proc.is_argmax_invariant()
    logits = torch.randn(4, 300) * 3
    assert torch.equal(proc.apply(logits.clone()), logits)  # no request with a top-p: nothing to do
    proc.update_state(BatchUpdate(batch_size=3, removed=[], added=[(0, params(0.5), [1], []), (1, params(), [1], []),
                                                                      (2, params(0.9), [1], [])], moved=[]))
    assert proc.rows == {0: 0.5, 2: 0.9}
    proc.update_state(BatchUpdate(batch_size=3, removed=[], added=[], moved=[(0, 1, MoveDirectionality.SWAP)]))
    assert proc.rows == {1: 0.5, 2: 0.9}
    proc.update_state(BatchUpdate(batch_size=2, removed=[1], added=[(3, params(0.3), [1], [])],
                                  moved=[(2, 0, MoveDirectionality.UNIDIRECTIONAL)]))
    assert proc.rows == {0: 0.9, 3: 0.3}
    proc.update_state(None)
    out = proc.apply(logits.clone())
    assert torch.equal(out[[1, 2]], logits[[1, 2]])
    assert_nucleus(torch.isfinite(out[[0, 3]]), logits[[0, 3]], torch.tensor([0.9, 0.3]), tol=1e-6)

    NucleusOnCPU.validate_params(params(0.5))
    with pytest.raises(ValueError, match="not both"):
        NucleusOnCPU.validate_params(SamplingParams(top_p=0.9, extra_args={TOP_P_ARG: 0.5}))
    with pytest.raises(ValueError, match="must be a number in"):
        NucleusOnCPU.validate_params(params(1.5))


def test_repetition_processor_follows_each_requests_tokens():
    pytest.importorskip("vllm")
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate

    from metastone.serve.vllm.models import RepetitionOnCPU

    proc = RepetitionOnCPU(None, torch.device("cpu"), False)
    assert not proc.is_argmax_invariant()
    out_a, out_b = [], [7]  # vLLM's running output lists, appended to between steps
    proc.update_state(BatchUpdate(batch_size=3, removed=[], moved=[], added=[
        (0, SamplingParams(extra_args={REPETITION_ARG: 2.0}), [1, 2], out_a),
        (1, SamplingParams(), [3], []),
        (2, SamplingParams(extra_args={REPETITION_ARG: 0.5}), None, out_b)]))
    logits = torch.tensor([[1.0, 2.0, -2.0, 4.0, 0.0, 1.0, 1.0, 1.0]] * 3)
    first = proc.apply(logits.clone())
    assert first[0].tolist() == [1.0, 1.0, -4.0, 4.0, 0.0, 1.0, 1.0, 1.0]  # prompt tokens 1, 2
    assert torch.equal(first[1], logits[1])
    assert first[2].tolist() == [1.0, 2.0, -2.0, 4.0, 0.0, 1.0, 1.0, 2.0]  # output token 7, penalty 0.5
    out_a += [3, 3]
    second = proc.apply(logits.clone())
    assert second[0].tolist() == [1.0, 1.0, -4.0, 2.0, 0.0, 1.0, 1.0, 1.0]  # token 3 now seen (once)

    RepetitionOnCPU.validate_params(SamplingParams(extra_args={REPETITION_ARG: 1.05}))
    with pytest.raises(ValueError, match="not both"):
        RepetitionOnCPU.validate_params(SamplingParams(repetition_penalty=1.1, extra_args={REPETITION_ARG: 1.05}))
    with pytest.raises(ValueError, match="must be a number > 0"):
        RepetitionOnCPU.validate_params(SamplingParams(extra_args={REPETITION_ARG: 0}))
