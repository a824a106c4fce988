"""SPRM-guided search: Best-of-N, step-level beam search and MCTS behind one interface.

Every strategy is ``async def search(question, policy, scorer, cfg) -> SearchResult`` over the
async engine clients (``metastone.engines``) and takes its own validated config::

    from metastone.search import BeamSearchConfig, Question, run_search, step_spec_for
    spec = step_spec_for(tokenizer, head_dir)            # the SPRM separators, from sprm_config.json
    cfg = BeamSearchConfig(separator_ids=spec.separator_ids, beam_width=4, expansions=4, token_budget=4096)
    result = await run_search(Question("q0", prompt_ids), generator, scorer, cfg)
    result.token_ids, result.score, result.stats.tokens_generated

``docs/search.md`` describes the strategies, budgets, determinism and record fields.
"""

from __future__ import annotations

import logging
from pathlib import Path

from metastone.search import beam, best_of_n, mcts
from metastone.search.beam import BeamSearchConfig
from metastone.search.best_of_n import BestOfNConfig
from metastone.search.common import Node, Question, SearchConfig, SearchError, SearchResult, SearchStats, node_seed
from metastone.search.mcts import MCTSConfig

logger = logging.getLogger(__name__)

# strategy name -> (config class, search function)
STRATEGIES = {
    "bon": (BestOfNConfig, best_of_n.search),
    "beam": (BeamSearchConfig, beam.search),
    "mcts": (MCTSConfig, mcts.search),
}


def make_config(strategy: str, **options) -> SearchConfig:
    """The config of ``strategy`` from keyword options; unknown options are an error naming the known ones."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown search strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}.")
    cls = STRATEGIES[strategy][0]
    unknown = sorted(set(options) - set(cls.field_names()))
    if unknown:
        raise ValueError(f"{cls.__name__} has no option(s) {unknown}; its options are {cls.field_names()}.")
    return cls(**options)


async def run_search(question: Question, policy, scorer, cfg: SearchConfig) -> SearchResult:
    """Dispatch to the strategy that ``cfg`` belongs to."""
    for cls, fn in STRATEGIES.values():
        if type(cfg) is cls:
            return await fn(question, policy, scorer, cfg)
    raise TypeError(f"no strategy takes a {type(cfg).__name__}; use one of {[c.__name__ for c, _ in STRATEGIES.values()]}.")


def record_searcher(strategy: str, options: dict, policy, scorer, tokenizer, stop=()):
    """``await searcher(question_id, prompt, prompt_ids)`` -> the fields of the question's record (the chosen
    trace, its score and the tree statistics), for the harness's per-question runs
    (``metastone.harness.runner.run_search_questions``). ``options`` are a saved ``SearchConfig.options()``."""
    options = {k: (tuple(v) if isinstance(v, list) else v) for k, v in options.items() if k != "strategy"}
    cfg = make_config(strategy, **options)

    async def searcher(question_id: str, prompt: str, prompt_ids: list[int]) -> dict:
        try:
            res = await run_search(Question(question_id, prompt_ids, prompt), policy, scorer, cfg)
        except Exception as exc:
            if not isinstance(exc, SearchError):
                logger.warning("question %s: search failed: %r", question_id, exc)
            raise
        return {"response": trace_text(tokenizer, res.token_ids, stop, res.finish_reason, res.stop_reason),
                "token_ids": res.token_ids, "finish_reason": res.finish_reason, "score": res.score,
                "step_scores": res.step_scores, "score_positions": res.positions, "strategy": strategy, "node": res.node,
                "finished": res.finished, "depth": res.depth, "search": res.stats.as_dict(),
                "candidates": res.candidates, "timings": {"search_s": res.stats.wall_s}}

    return searcher


def step_spec_for(tokenizer, model_dir: str | Path, head_path: str | Path | None = None):
    """The ``StepSpec`` (separator and think token ids) of the SPRM head a model is scored with (the head in
    ``head_path``, default the model folder; ``metastone.sprm.locate_head_config``)."""
    from metastone.sprm import locate_head_config, resolve_step_spec

    cfg = locate_head_config(model_dir, head_path)
    return resolve_step_spec(tokenizer, cfg.separators, cfg.think_tokens)


def trace_text(tokenizer, token_ids, stop=(), finish_reason: str | None = None, stop_reason=None) -> str:
    """The response text of a searched trace: its ids decoded, cut at the first task stop string (as vLLM
    and the HF policy cut a draft), a final EOS dropped. (Step texts from the policy omit the separators,
    so the text is rebuilt from the ids.)"""
    ids = list(token_ids)
    eos = getattr(tokenizer, "eos_token_id", None)
    if ids and finish_reason == "stop" and stop_reason is None and ids[-1] == eos:
        ids = ids[:-1]
    text = tokenizer.decode(ids, skip_special_tokens=False)
    hits = [text.find(s) for s in stop if s and s in text]
    return text[: min(hits)] if hits else text


__all__ = [
    "STRATEGIES", "BestOfNConfig", "BeamSearchConfig", "MCTSConfig", "SearchConfig", "Question", "Node", "SearchResult",
    "SearchStats", "SearchError", "node_seed", "make_config", "run_search", "step_spec_for", "trace_text",
    "record_searcher",
]
