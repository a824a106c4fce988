"""Best-of-N through the search interface: N whole drafts, each scored by the SPRM, the highest kept.

MetaStone-S1's test-time scaling (low / medium / high = Best-of-2 / 8 / 32). Draft ``d`` has the
harness's seed (``draft_seed(seed, question, d)`` = ``node_seed(seed, question, (d,))``) and is
sampled to the end of the trace (no step stops), so on the same engines it is token for token the
harness's draft ``d`` (``test/inference.py --strategy bon``, which keeps its per-draft records).
Ties go to the lower draft index, as in the metrics.

With a ``token_budget``, drafts are sent in waves of ``batch_size`` and each reserves
``max_tokens`` (or what is left) in index order before it is sent; a draft the budget cut short is
kept as an unfinished candidate. A smaller ``batch_size`` packs more drafts into the same budget.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from metastone.search.common import Question, SearchConfig, SearchResult, StepExpander, _f, make_result, pick_best


@dataclass(frozen=True)
class BestOfNConfig(SearchConfig):
    """Best-of-N: ``n`` drafts per question."""

    strategy = "bon"
    n: int = _f(8, "drafts per question (the paper: 2 / 8 / 32)")
    batch_size: int | None = _f(None, "drafts per generate call (None = all n at once)")

    def __post_init__(self):
        super().__post_init__()
        if self.n < 1:
            self._fail("n", "must be >= 1", "Give the drafts per question, e.g. 8.")
        if self.batch_size is not None and self.batch_size < 1:
            self._fail("batch_size", "must be >= 1 or None", "Use None to send all n drafts at once.")


async def search(question: Question, policy, scorer, cfg: BestOfNConfig) -> SearchResult:
    # whole drafts: no step stops, so the separators are not sent to the policy
    exp = StepExpander(question, policy, scorer, replace(cfg, separator_ids=()))
    wave = cfg.batch_size or cfg.n
    drafts = []
    for start in range(0, cfg.n, wave):
        reason = exp.budget_reason()
        if reason:
            exp.stats.stopped_by = reason
            break
        got = await exp.expand([(exp.root, d) for d in range(start, min(start + wave, cfg.n))])
        exp.stats.iterations += 1
        drafts += [g for g in got if g is not None]
        if len(drafts) < min(start + wave, cfg.n):
            exp.stats.stopped_by = exp.budget_reason() or "tokens"
            break
    chosen = pick_best(drafts)
    return make_result(question, cfg, chosen, drafts, exp.stats, exp.started, exp.root)
