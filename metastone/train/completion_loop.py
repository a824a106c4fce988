"""A verl agent loop for plain completion prompts (no chat template), with stop strings per row.

verl's ``single_turn_agent`` always renders ``raw_prompt`` through the chat template. The CPU demo
task (``metastone.eval.demo_task``) is a few-shot completion prompt ("Q: ... A: ... The answer is
N.") that a base or instruct model continues as text, and its answers end at a blank line: the
evaluation generates it that way (``Task.use_chat_template = False``, ``Task.stop``), so training
must roll out the same way or the trained policy is judged on prompts it never saw.

``CompletionAgentLoop`` (agent name ``metastone_completion``, registered through verl's
``rollout.agent.agent_loop_config_path``, which ``python -m metastone.train`` points at
``metastone/train/agent_loops.yaml`` unless set) takes the text of the row's single prompt message
as the prompt, tokenized as the evaluation tokenizes a raw prompt (``tokenizer(text)``), and adds the
row's ``stop`` strings to the sampling settings (vLLM's ``stop``; the hf rollout implements the
same). A data row selects it with its ``agent_name`` column (``python -m metastone.data.prepare
--task demo`` writes both columns).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from uuid import uuid4

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput
from verl.utils.profiler import simple_timer

from metastone.data.prepare import COMPLETION_AGENT

logger = logging.getLogger(__name__)

AGENT_LOOPS_FILE = Path(__file__).resolve().parent / "agent_loops.yaml"


def completion_text(raw_prompt) -> str:
    """The completion prompt: a string, or a list holding exactly one message whose ``content`` it is."""
    if isinstance(raw_prompt, str):
        return raw_prompt
    messages = list(raw_prompt)
    if len(messages) != 1 or not isinstance(messages[0], dict) or not isinstance(messages[0].get("content"), str):
        raise ValueError(
            f"agent {COMPLETION_AGENT!r} needs a prompt of one message whose content is the completion text; got "
            f"{len(messages)} messages. Write the data with `python -m metastone.data.prepare --task demo`."
        )
    return messages[0]["content"]


def stop_list(value) -> list[str]:
    """A row's ``stop`` column (None, a string, a list or a numpy array of strings) as a list."""
    if value is None:
        return []
    values = [value] if isinstance(value, str) else [str(v) for v in (value.tolist() if hasattr(value, "tolist") else value)]
    if not all(values):
        raise ValueError(f"stop strings must be non-empty, got {values!r} (the data's 'stop' column).")
    return values


class CompletionAgentLoop(AgentLoopBase):
    """One completion per row, prompt as text, the row's stop strings applied (see module doc)."""

    async def run(self, sampling_params: dict[str, Any], **kwargs) -> AgentLoopOutput:
        text = completion_text(kwargs["raw_prompt"])
        prompt_ids = list(self.tokenizer(text)["input_ids"])
        limit = int(self.rollout_config.prompt_length)
        if len(prompt_ids) > limit:
            raise ValueError(
                f"completion prompt of {len(prompt_ids)} tokens is longer than data.max_prompt_length={limit}; raise it."
            )
        params = dict(sampling_params)
        stops = stop_list(kwargs.get("stop"))
        if stops:
            params["stop"] = stops
        metrics: dict[str, Any] = {}
        with simple_timer("generate_sequences", metrics):
            output = await self.server_manager.generate(
                request_id=uuid4().hex, prompt_ids=prompt_ids, sampling_params=params
            )
        metrics.setdefault("num_preempted", output.num_preempted if output.num_preempted is not None else -1)
        length = int(self.rollout_config.response_length)
        response_ids = list(output.token_ids)[:length]
        logprobs = list(output.log_probs)[:length] if output.log_probs else None
        extra = dict(output.extra_fields or {})
        extra.update({"turn_scores": [], "tool_rewards": []})
        return AgentLoopOutput(
            prompt_ids=prompt_ids,
            response_ids=response_ids,
            response_mask=[1] * len(response_ids),
            response_logprobs=logprobs,
            multi_modal_data={},
            num_turns=2,
            metrics=metrics,
            extra_fields=extra,
        )
