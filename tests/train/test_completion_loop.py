"""The completion agent loop (metastone.train.completion_loop) and the demo task's training rows."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest

pytestmark = pytest.mark.train


def test_demo_rows_carry_the_evaluations_prompt_stop_and_answer():
    from metastone.data.prepare import COMPLETION_AGENT, demo_rows
    from metastone.eval.tasks import Demo

    rows = demo_rows("test", limit=3)
    task = Demo.load(split="test")
    assert len(rows) == 3
    for row, ex in zip(rows, task.examples):
        assert row["prompt"] == [{"role": "user", "content": ex.prompt}]
        assert row["agent_name"] == COMPLETION_AGENT and row["stop"] == list(Demo.stop)
        assert row["reward_model"]["ground_truth"] == str(ex.answer)
        assert row["extra_info"]["question_id"] == ex.id
    with pytest.raises(ValueError, match="split"):
        demo_rows("dev")


def test_completion_text_and_stop_list_forms():
    from metastone.train.completion_loop import completion_text, stop_list

    assert completion_text("Q: 1+1?\nA:") == "Q: 1+1?\nA:"
    assert completion_text(np.array([{"role": "user", "content": "Q: x\nA:"}], dtype=object)) == "Q: x\nA:"
    with pytest.raises(ValueError, match="one message"):
        completion_text([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])
    assert stop_list(np.array(["\n\n", "\nQ:"], dtype=object)) == ["\n\n", "\nQ:"]
    assert stop_list(None) == [] and stop_list("\n") == ["\n"]
    with pytest.raises(ValueError, match="non-empty"):
        stop_list(["\n", ""])


def test_agent_loop_sends_raw_prompt_ids_and_stop_strings(qwq_tokenizer):
    from verl.workers.rollout.replica import TokenOutput

    from metastone.train.completion_loop import AGENT_LOOPS_FILE, CompletionAgentLoop

    sent = {}

    class Server:
        async def generate(self, request_id, prompt_ids, sampling_params, **_):
            sent.update(prompt_ids=prompt_ids, params=sampling_params)
            return TokenOutput(token_ids=[5, 6, 7, 8], log_probs=[-0.1, -0.2, -0.3, -0.4], stop_reason="completed")

    loop = CompletionAgentLoop.__new__(CompletionAgentLoop)  # the parts run() uses; verl builds the rest
    loop.tokenizer, loop.server_manager = qwq_tokenizer, Server()
    loop.rollout_config = SimpleNamespace(prompt_length=64, response_length=3)
    text = "Q: What is 2 + 2?\nA:"
    out = asyncio.run(loop.run({"temperature": 0.7}, raw_prompt=[{"role": "user", "content": text}],
                               stop=np.array(["\n\n"], dtype=object)))
    assert sent["prompt_ids"] == qwq_tokenizer(text)["input_ids"]  # no chat template
    assert sent["params"] == {"temperature": 0.7, "stop": ["\n\n"]}
    assert out.prompt_ids == sent["prompt_ids"] and out.response_ids == [5, 6, 7]  # cut to response_length
    assert out.response_mask == [1, 1, 1] and out.response_logprobs == [-0.1, -0.2, -0.3]
    loop.rollout_config.prompt_length = 2
    with pytest.raises(ValueError, match="max_prompt_length"):
        asyncio.run(loop.run({}, raw_prompt=text))
    assert "metastone.train.completion_loop.CompletionAgentLoop" in AGENT_LOOPS_FILE.read_text()


def test_prepare_cli_writes_demo_rows(tmp_path):
    import pandas as pd

    from metastone.cli import main

    out, val = tmp_path / "train.parquet", tmp_path / "val.parquet"
    assert main(["prepare-data", "--task", "demo", "--output", str(out), "--val-output", str(val), "--limit", "5", "--val-size", "3"]) == 0
    train_rows, val_rows = pd.read_parquet(out), pd.read_parquet(val)
    assert len(train_rows) == 5 and len(val_rows) == 3
    assert train_rows.iloc[0]["agent_name"] == "metastone_completion" and list(train_rows.iloc[0]["stop"]) == ["\n\n", "\nQ:"]
    assert val_rows.iloc[0]["extra_info"]["question_id"].startswith("demo-test-")
