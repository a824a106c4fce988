"""Step-level beam search guided by SPRM step scores.

Each round expands every live beam by ``expansions`` one-step children (the first round expands
the prompt into ``beam_width x expansions`` children, so every round has the same width), scores
each child's path with the SPRM and keeps the best live children by path value (the aggregate of
the path's step scores, geometric mean by default; MetaStone-S1 Eq. 5). A child that ends its trace
(EOS, the task's stop string, ``max_tokens``) is a finished hypothesis and takes one beam slot for
good: the next round keeps ``beam_width - finished`` beams (classic beam search). The answer is the
finished hypothesis with the highest value; if a budget or ``max_depth`` stopped the search before
any finished, the best unfinished one (``finished: false`` in the result).

Budgets: ``max_depth`` steps per trace, ``token_budget`` generated tokens per question (each
request reserves its tokens before it is sent), ``time_budget_s`` (no round starts after it). Peers:
search-and-learn's beam search and DVTS (lookahead 0, ``"\\n\\n"`` steps, a PRM); here the steps are
cut at the SPRM's own separator tokens and the values come from the same model's head.
"""

from __future__ import annotations

from dataclasses import dataclass

from metastone.search.common import Node, Question, SearchResult, StepExpander, TreeSearchConfig, _f, make_result, pick_best


@dataclass(frozen=True)
class BeamSearchConfig(TreeSearchConfig):
    """Step-level beam search."""

    strategy = "beam"
    beam_width: int = _f(4, "beams kept after each step")

    def __post_init__(self):
        super().__post_init__()
        if self.beam_width < 1:
            self._fail("beam_width", "must be >= 1", "Give the beams kept per step, e.g. 4.")


def _top(nodes: list[Node], k: int) -> list[Node]:
    return sorted(nodes, key=lambda n: (-n.value, n.path))[: max(k, 0)]


async def search(question: Question, policy, scorer, cfg: BeamSearchConfig) -> SearchResult:
    exp = StepExpander(question, policy, scorer, cfg, max_step_tokens=cfg.max_step_tokens)
    beams: list[Node] = [exp.root]
    finished: list[Node] = []
    frontier: list[Node] = []  # live or depth-capped unfinished nodes of the last round (fallback answer)
    while beams:
        reason = exp.budget_reason()
        if reason:
            exp.stats.stopped_by = reason
            break
        width = cfg.beam_width * cfg.expansions if beams == [exp.root] else cfg.expansions
        pairs = [(b, i) for b in beams for i in range(width)]
        children = await exp.expand(pairs)
        exp.stats.iterations += 1
        got = [c for c in children if c is not None]
        finished += [c for c in got if c.terminal]
        unfinished = [c for c in got if not c.terminal]
        if unfinished:
            frontier = unfinished
        live = [c for c in unfinished if exp.can_expand(c, cfg.max_depth)]
        beams = _top(live, cfg.beam_width - len(finished))
        if len(got) < len(pairs):  # a budget cut the round short
            exp.stats.stopped_by = exp.budget_reason() or "tokens"
            break
        if not beams and unfinished and not live and len(finished) < cfg.beam_width:
            exp.stats.stopped_by = "depth"
    chosen = pick_best(finished) or pick_best(frontier)
    return make_result(question, cfg, chosen, finished, exp.stats, exp.started, exp.root)
