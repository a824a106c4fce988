"""The ``hf`` rollout server (metastone.train.hf_rollout) without Ray: batching, limits, stop tokens, weight sync."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
import torch

pytestmark = pytest.mark.train

GREEDY = {"temperature": 0.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": False}


def rollout_config(**changes):
    base = dict(dtype="float32", max_model_len=64, prompt_length=32, response_length=16, seed=0, max_num_seqs=8)
    return SimpleNamespace(**{**base, **changes})


@pytest.fixture()
def server(tiny_model_dir):
    from metastone.train.hf_rollout import HFRolloutServer

    return HFRolloutServer(rollout_config(), SimpleNamespace(local_path=str(tiny_model_dir)), replica_rank=0)


@pytest.fixture(autouse=True)
def one_loop(monkeypatch):
    """Every ``asyncio.run`` of a test on one event loop, as in the Ray actor (one loop for its life)."""
    loop = asyncio.new_event_loop()
    monkeypatch.setattr(asyncio, "run", loop.run_until_complete)
    yield
    pending = asyncio.all_tasks(loop)
    for task in pending:  # the server's batching task
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.close()


def generate(server, prompt, max_tokens=None, params=GREEDY):
    params = dict(params, **({"max_tokens": max_tokens} if max_tokens else {}))
    return server.generate(prompt_ids=prompt, sampling_params=params, request_id="r")


PROMPTS = [[11, 22, 33, 44, 55], [7, 8, 9], [101, 202, 303, 404]]


def test_concurrent_requests_share_one_batch_and_match_single_runs(server):
    async def together():
        return await asyncio.gather(*[generate(server, p, n) for p, n in zip(PROMPTS, (3, 6, 9))])

    async def alone(p, n):
        return await generate(server, p, n)

    batched = asyncio.run(together())
    assert server.batches == 1  # one left-padded batch for the three
    for out, prompt, limit in zip(batched, PROMPTS, (3, 6, 9)):
        assert 1 <= len(out.token_ids) <= limit and out.stop_reason == "completed"
        assert out.token_ids == asyncio.run(alone(prompt, limit)).token_ids  # padding changes nothing


def test_default_length_is_the_response_budget_and_the_context_bounds_it(server):
    out = asyncio.run(generate(server, PROMPTS[0]))
    assert len(out.token_ids) <= 16
    server.config.max_model_len = 8
    assert len(asyncio.run(generate(server, PROMPTS[0], 100)).token_ids) <= 3
    with pytest.raises(ValueError, match="rollout.max_model_len"):
        asyncio.run(generate(server, list(range(1, 10))))


def test_stop_token_is_kept_and_nothing_after_it(server):
    first = asyncio.run(generate(server, PROMPTS[1], 1)).token_ids[0]
    server.eos_ids = [first]
    assert asyncio.run(generate(server, PROMPTS[1], 10)).token_ids == [first]


def test_stop_strings_end_the_response_at_the_token_that_completes_one(server):
    from transformers import AutoTokenizer

    from metastone.train.hf_rollout import cut_at_stop

    free = asyncio.run(generate(server, PROMPTS[0], 8)).token_ids
    assert len(free) >= 4
    tok = AutoTokenizer.from_pretrained(server._path)
    decode = lambda t: tok.decode(t, skip_special_tokens=False)  # noqa: E731
    # a stop string that starts inside token 1 and ends inside token 2: the response ends with token 2
    t1, t2 = decode(free[1:2]), decode(free[2:3])
    stop = (t1[-1:] + t2[:1]) if t1 and t2 else t2
    expected = cut_at_stop(free, decode, (stop,))
    assert expected == free[: len(expected)] and stop in decode(expected) and stop not in decode(expected[:-1])
    out = asyncio.run(generate(server, PROMPTS[0], 8, dict(GREEDY, stop=[stop, "never-generated"])))
    assert out.token_ids == expected
    assert cut_at_stop(free, decode, ()) == free
    assert cut_at_stop(free, decode, ("never-generated",)) == free
    with pytest.raises(ValueError, match="bad sampling_params"):
        asyncio.run(generate(server, PROMPTS[0], 4, dict(GREEDY, stop=[""])))


def test_stop_token_ids_end_the_response(server):
    free = asyncio.run(generate(server, PROMPTS[1], 6)).token_ids
    out = asyncio.run(generate(server, PROMPTS[1], 6, dict(GREEDY, stop_token_ids=[free[1]])))
    assert out.token_ids == free[: free.index(free[1]) + 1]


def test_logprobs_are_log_probabilities_of_the_sampled_tokens(server):
    out = asyncio.run(generate(server, PROMPTS[2], 4, dict(GREEDY, logprobs=True)))
    assert len(out.log_probs) == len(out.token_ids) and all(lp <= 0.0 for lp in out.log_probs)


def test_weight_updates_replace_the_weights_and_refuse_foreign_keys(server):
    state = {k: v + 0.01 for k, v in server.model.state_dict().items()}
    before = asyncio.run(server.parameter_checksum())
    assert asyncio.run(server.update_weights(state, global_steps=3)) == 1
    assert asyncio.run(server.parameter_checksum()) != before and server.global_steps == 3
    with pytest.raises(ValueError, match="unexpected"):
        asyncio.run(server.update_weights({"head.0.weight": torch.zeros(2)}))
    out = asyncio.run(generate(server, PROMPTS[0], 2))
    assert out.extra_fields["global_steps"] == 3


def test_multimodal_input_is_refused(server):
    with pytest.raises(ValueError, match="text-only"):
        asyncio.run(server.generate(prompt_ids=[1, 2], sampling_params=GREEDY, request_id="r", image_data=[object()]))


def test_registered_in_verl():
    from verl.workers.rollout.base import get_rollout_class
    from verl.workers.rollout.replica import get_rollout_replica_class

    from metastone.train.hf_rollout import HFRolloutAdapter, HFRolloutReplica

    assert get_rollout_replica_class("hf") is HFRolloutReplica
    assert get_rollout_class("hf", "async") is HFRolloutAdapter
