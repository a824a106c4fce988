"""SPRM scores taken while the policy decodes: how they leave vLLM's engine and come back to the caller.

The policy and the SPRM share one backbone (MetaStone-S1, Sec. 3): the hidden state the head reads at
position ``p`` is computed anyway when the policy decodes token ``p + 1``. A vLLM policy started with
the SPRM head attached (``serve/vllm/models.py``, ``*ForCausalLMWithSPRM``) applies the head to the
feature layer's state of each request's newest token at every step, and the logits processor
``StepScoresOut`` writes that probability to a file named by the request. Nothing is run twice:
scoring a draft costs the head only, ``2 d^2`` multiply-adds per token, next to the backbone's.

The position rule needs nothing more: a step's score is read at the token *before* its separator
(``metastone.sprm.steps``), whose state was computed while the separator was being sampled. So the
scores of response tokens ``0 .. T-2`` are all known when the draft ends; the last token's is never
needed (no separator follows it).

Transport: a directory the engine's processes share with the caller, given to the engine in the
environment (``STEP_SCORES_DIR_ENV``, set by whoever starts the engine: never by users); a request
asks for scores with ``extra_args[STEP_SCORES_ARG] = <32 hex digits>``, and the engine appends one
record ``(response index, probability)`` (``<i4``, ``<f4``) per decoding step to ``<dir>/<key>``.
The file is complete when vLLM returns the request's output (the processor runs before each step's
sampling, so the step that ends the draft has written its record already). ``read_token_probs``
checks that every index is there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

STEP_SCORES_DIR_ENV = "METASTONE_STEP_SCORES_DIR"
STEP_SCORES_ARG = "metastone_step_scores"
STEP_SCORES_PROCESSOR = "metastone.serve.vllm.models:StepScoresOut"
RECORD = np.dtype([("index", "<i4"), ("prob", "<f4")])
_KEY = re.compile(r"[0-9a-f]{32}")


def valid_key(key) -> bool:
    """A request's score key: 32 lowercase hex digits (a file name that cannot leave the directory)."""
    return isinstance(key, str) and _KEY.fullmatch(key) is not None


def encode_records(indices, probs) -> bytes:
    out = np.empty(len(indices), dtype=RECORD)
    out["index"], out["prob"] = indices, probs
    return out.tobytes()


def read_token_probs(path: str | Path, n_response_tokens: int) -> list[float] | None:
    """Per-token probabilities for response indices ``0 .. n-1``: the last one NaN (never computed, never
    needed); None if the file is missing or lacks an index below ``n - 1``. A request run again from its
    prompt after a preemption writes some indices twice: the later record is kept."""
    try:
        data = np.frombuffer(Path(path).read_bytes(), dtype=RECORD)
    except (FileNotFoundError, ValueError):
        return None
    probs = np.full(max(n_response_tokens, 0), np.nan, dtype=np.float64)
    keep = (data["index"] >= 0) & (data["index"] < n_response_tokens)
    probs[data["index"][keep]] = data["prob"][keep]
    if n_response_tokens > 1 and np.isnan(probs[: n_response_tokens - 1]).any():
        return None
    return probs.tolist()


def step_scores_dir() -> str | None:
    """The directory this process's engine writes scores to, or None where scoring while decoding is off."""
    value = os.environ.get(STEP_SCORES_DIR_ENV)
    return value if value and os.path.isdir(value) else None


class StepScoreCollector:
    """The caller's side of scoring while generating (in-process engines and ``serve-policy``): each draft's
    step scores from the head's per-token probabilities, picked and aggregated exactly as the scorers do
    (``serve/scoring.py``). With vLLM (``vllm=True``) also the engine options that attach the head and the
    processor, the directory the engine writes to and a key per request.

    ``config``: the head's ``SPRMConfig`` when the caller has loaded the head already (``HFPolicy.attach_head``)."""

    def __init__(self, model_dir: str | Path, head_path: str | Path | None = None, *, config=None, vllm: bool = False):
        import tempfile

        from transformers import AutoTokenizer

        from metastone.devices import has_cuda
        from metastone.sprm import locate_head, resolve_step_spec

        if vllm and has_cuda():
            raise ValueError("score_while_generating is verified on vLLM's CPU engine only; on a GPU score with the "
                             "separate SPRM scorer (the default) or use the hf backend, until the check in "
                             "docs/serving.md has been run there.")
        if config is None:
            _, config = locate_head(model_dir, head_path)
        self.config = config
        self.spec = resolve_step_spec(AutoTokenizer.from_pretrained(model_dir), config.separators, config.think_tokens)
        self.model_dir, self.head_path = model_dir, head_path
        self.dir = tempfile.mkdtemp(prefix="metastone-step-scores-") if vllm else None

    def trace_score(self, prompt_ids, token_ids, token_probs):
        """The draft's ``TraceScore`` from one head probability per response token."""
        from metastone.serve.scoring import trace_score_from_token_probs

        return trace_score_from_token_probs(list(prompt_ids) + list(token_ids), len(prompt_ids), token_probs, self.spec,
                                            self.config.aggregation, cached=len(prompt_ids))

    # -- vLLM --------------------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        return {STEP_SCORES_DIR_ENV: self.dir}

    @staticmethod
    def new_key() -> str:
        import uuid

        return uuid.uuid4().hex

    @staticmethod
    def request_args(key: str) -> dict:
        """What a request adds to ``SamplingParams.extra_args`` (vLLM's ``vllm_xargs``) to be scored."""
        return {STEP_SCORES_ARG: key}

    def collect(self, key: str, prompt_ids, token_ids):
        """The draft's ``TraceScore`` from the engine's record of request ``key`` (then deleted); None, with a
        warning, if the record is incomplete."""
        import logging

        probs = read_token_probs(os.path.join(self.dir, key), len(token_ids))
        self.discard(key)
        if probs is None:
            logging.getLogger(__name__).warning(
                "no complete step scores from the engine for a draft of %d tokens; scoring it with the scorer "
                "instead", len(token_ids))
            return None
        return self.trace_score(prompt_ids, token_ids, probs)

    def discard(self, key: str) -> None:
        """Delete the engine's record of request ``key`` (if it wrote one)."""
        try:
            os.unlink(os.path.join(self.dir, key))
        except FileNotFoundError:
            pass

    def cleanup(self) -> None:
        """Remove the directory (and take it out of this process's environment if it was put there)."""
        import shutil

        if self.dir is None:
            return
        shutil.rmtree(self.dir, ignore_errors=True)
        if os.environ.get(STEP_SCORES_DIR_ENV) == self.dir:
            del os.environ[STEP_SCORES_DIR_ENV]
