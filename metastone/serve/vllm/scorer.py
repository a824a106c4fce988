"""In-process vLLM SPRM scorer: the same ``score_ids`` as the HF backend, on vLLM's engine.

Starts ``vllm.LLM`` in pooling mode on the unchanged policy folder with the SPRM architecture
selected by ``hf_overrides`` (see ``metastone.serve.vllm.plugin``), sends token ids (never text),
gets one probability per token back and picks the step rows with ``metastone.serve.scoring``.

Prefix reuse (``reuse_prefix=True``, default): vLLM refuses its prefix cache to token-level pooling
unless a request asks for it (``PoolingParams.skip_reading_prefix_cache``, default True for
``token_classify``) because rows served from the cache produce no output. We ask for it: each output
then covers rows ``num_cached_tokens..n-1`` only, so N drafts of one prompt run the prompt's KV blocks
once and a search node runs little more than its new step. Step rows that fall in the cached part (a
node's earlier steps, drafts that share their first steps) come from a ``StepScoreMemo`` of rows
computed before; a trace with a cached step row the memo lacks is run again in full. See
docs/serving.md, "Scoring only what is new".
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from metastone.serve.scoring import MEMO_ENTRIES, StepScoreMemo, TraceScore, check_batch, trace_score_from_token_probs
from metastone.serve.vllm.engine import build_llm
from metastone.serve.vllm.plugin import sprm_hf_overrides
from metastone.sprm import SPRMConfig, backbone_hidden_size, locate_head, resolve_step_spec

logger = logging.getLogger(__name__)


class VLLMScorer:
    """SPRM scores on vLLM. Engine options (``max_model_len``, ``gpu_memory_utilization``, ...) pass through.

    On a CPU-only host the KV cache gets an explicit size, ``kv_cache_gib`` GiB (None: auto), checked
    against the memory free now (``metastone.serve.vllm.cpu.kv_cache_bytes``).

    ``reuse_prefix`` (default True) reads vLLM's prefix cache (module docstring); False runs every trace
    in full, as before. ``memo_entries`` bounds the memo of step rows (~150 bytes each).
    ``stats`` counts sequences, their tokens, the tokens run and the traces run again in full.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        head_path: str | Path | None = None,
        dtype: str = "float32",
        config: SPRMConfig | None = None,
        lang: str | None = None,
        enforce_eager: bool = True,
        kv_cache_gib: float | None = None,
        reuse_prefix: bool = True,
        memo_entries: int = MEMO_ENTRIES,
        **engine_kwargs,
    ):
        from transformers import AutoConfig, AutoTokenizer

        model_dir = Path(model_dir)
        overrides = sprm_hf_overrides(model_dir, head_path)
        hf_config = AutoConfig.from_pretrained(model_dir)
        if lang is not None and config is None:
            config = SPRMConfig.for_lang(backbone_hidden_size(hf_config), lang)
        _, self.config = locate_head(model_dir, head_path, hf_config=hf_config, config=config)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.spec = resolve_step_spec(self.tokenizer, self.config.separators, self.config.think_tokens)
        self.reuse_prefix = reuse_prefix
        self.memo = StepScoreMemo(memo_entries)
        self.stats = {"sequences": 0, "tokens": 0, "computed_tokens": 0, "rerun_traces": 0}
        self.llm, _ = build_llm(model_dir, role="scorer", dtype=dtype, kv_cache_gib=kv_cache_gib, prefix_blocks=reuse_prefix,
                                hf_overrides=overrides, enforce_eager=enforce_eager, **engine_kwargs)
        self.max_len = self.llm.llm_engine.model_config.max_model_len
        self.vocab_size = self.llm.llm_engine.model_config.get_vocab_size()  # the embedding's rows (>= the tokenizer's)

    def close(self) -> None:
        """Stop vLLM's engine processes now. Idle, they busy-poll a core; left to interpreter exit, vLLM's
        own exit hooks stop them and log into streams that may already be closed."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()

    def __enter__(self) -> "VLLMScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _encode(self, sequences: Sequence[Sequence[int]], *, reuse: bool):
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=list(map(int, s))) for s in sequences]
        params = PoolingParams(task="token_classify", skip_reading_prefix_cache=not reuse)
        return self.llm.encode(prompts, pooling_params=params, pooling_task="token_classify", use_tqdm=False)

    def token_probs(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        """One SPRM probability per token of each sequence (every token run, the prefix cache not read)."""
        return [out.outputs.data.reshape(-1).float().tolist() for out in self._encode(sequences, reuse=False)]

    def _trace(self, seq: Sequence[int], prompt_len: int, out) -> TraceScore | None:
        rows = out.outputs.data.reshape(-1).float().tolist()
        return trace_score_from_token_probs(seq, prompt_len, rows, self.spec, self.config.aggregation,
                                            cached=out.num_cached_tokens, memo=self.memo if self.reuse_prefix else None)

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix: vLLM's KV blocks and the memo of step rows (benchmarks start cold)."""
        self.memo.clear()
        self.llm.reset_prefix_cache()

    def score_ids(self, sequences: Sequence[Sequence[int]], prompt_lens: Sequence[int] | None = None) -> list[TraceScore]:
        lens = check_batch(sequences, prompt_lens, self.max_len)
        outs = self._encode(sequences, reuse=self.reuse_prefix)
        results = [self._trace(seq, plen, out) for seq, plen, out in zip(sequences, lens, outs)]
        rerun = [i for i, r in enumerate(results) if r is None]
        if rerun:
            for i, out in zip(rerun, self._encode([sequences[i] for i in rerun], reuse=False)):
                results[i] = self._trace(sequences[i], lens[i], out)
                results[i].computed_tokens += len(sequences[i]) - outs[i].num_cached_tokens
        self.stats["sequences"] += len(sequences)
        self.stats["tokens"] += sum(map(len, sequences))
        self.stats["computed_tokens"] += sum(r.computed_tokens for r in results)
        self.stats["rerun_traces"] += len(rerun)
        return results
