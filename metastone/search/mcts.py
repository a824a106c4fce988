"""Monte Carlo tree search over reasoning steps, with SPRM path values instead of rollouts.

MetaStone-S1 (arXiv 2507.01951) reports MCTS with the SPRM as value model (1.5B, AIME24: 39.3 ->
52.8; Best-of-32: 57.9). Its exact design is not published and the released code has no MCTS; this
is our reading of the paper (docs/search.md, docs/differences.md):

- a node is a partial trace cut at an SPRM step separator; the root is the prompt;
- **selection**: from the root, the child maximising UCT ``Q + c_uct * sqrt(ln N(parent) / N(child))``
  among children with something left to expand (ties: lower path), down to a node without children;
- **expansion**: that node gets ``expansions`` one-step children at once (one batched request);
  with ``widening > 0`` a visited node gets further batches (progressive widening, at most
  ``max_children``), else each node is expanded once;
- **evaluation**: a child's value is the aggregate (geometric mean by default) of the SPRM step
  scores along its path, read from one prefill of prompt + path; no rollout, no grading;
- **backup**: each new child is one simulation worth its value (``backup=mean``; ``max``: the
  expansion is one simulation worth its best child), added to every ancestor, so ``Q`` is the mean
  simulation value below a node; finished traces and depth-capped nodes are exhausted, and so is a node whose
  children all are; the search ends when the root is exhausted or a budget runs out;
- **answer** (``final``): ``value`` = the finished trace with the highest path value (default),
  ``visits`` = follow the most visited child from the root. If nothing finished, the best
  unfinished leaf (``finished: false``).

Budgets: ``token_budget``, ``time_budget_s`` (no expansion starts after it), ``max_depth``,
``max_iterations`` (expansions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from metastone.search.common import Node, Question, SearchResult, StepExpander, TreeSearchConfig, _f, make_result, pick_best

FINAL_RULES = ("value", "visits")
BACKUP_RULES = ("mean", "max")


@dataclass(frozen=True)
class MCTSConfig(TreeSearchConfig):
    """MCTS with SPRM values."""

    strategy = "mcts"
    c_uct: float = _f(0.1, "UCT exploration constant (values are in [0, 1]; SPRM step values differ by ~0.1-0.5)")
    max_iterations: int | None = _f(64, "most expansions per question (None = until a budget or the tree runs out)")
    final: str = _f("value", "answer rule: value (best finished path value) or visits (most visited path)")
    widening: float = _f(0.0, "progressive widening: a node visited N times may have expansions x ceil(N^widening) children (0 = expand once)")
    max_children: int = _f(32, "most children of one node under progressive widening")
    backup: str = _f("mean", "what an expansion backs up: mean (every child, one visit each) or max (its best child's value, one visit)")

    def __post_init__(self):
        super().__post_init__()
        if self.c_uct < 0:
            self._fail("c_uct", "must be >= 0", "Use 0 for greedy selection, about 1 for values in [0, 1].")
        if self.max_iterations is not None and self.max_iterations < 1:
            self._fail("max_iterations", "must be >= 1 or None", "Give the most expansions per question, e.g. 64.")
        if not 0 <= self.widening < 1:
            self._fail("widening", "must be in [0, 1)", "Use 0 (off) or about 0.5.")
        if self.max_children < 1:
            self._fail("max_children", "must be >= 1", "Give the most children of one node, e.g. 32.")
        if self.backup not in BACKUP_RULES:
            self._fail("backup", f"must be one of {', '.join(BACKUP_RULES)}", "Use mean (the default) or max.")
        if self.final not in FINAL_RULES:
            self._fail("final", f"must be one of {', '.join(FINAL_RULES)}", "Use value (the default) or visits.")
        if self.max_iterations is None and self.token_budget is None and self.time_budget_s is None:
            self._fail("max_iterations", "is None and so are token_budget and time_budget_s",
                       "Bound the search: set at least one of max_iterations, token_budget, time_budget_s.")


def _uct(child: Node, parent_visits: int, c: float) -> float:
    return child.value_sum / child.visits + c * math.sqrt(math.log(max(parent_visits, 1)) / child.visits)


def _width(node: Node, cfg: "MCTSConfig") -> int:
    """Children a node may have now: ``expansions`` per batch, ``ceil(visits ** widening)`` batches, at most
    ``max_children`` (progressive widening; ``widening=0`` expands a node once)."""
    batches = math.ceil(max(node.visits, 1) ** cfg.widening)
    return min(cfg.expansions * batches, max(cfg.max_children, cfg.expansions))


def _select(root: Node, cfg: "MCTSConfig") -> Node:
    node = root
    while node.children:
        if len(node.children) < _width(node, cfg):
            return node  # widen: one more batch of children here
        options = [ch for ch in node.children if not ch.exhausted]
        if not options:  # cannot happen: such a node is exhausted and never entered
            return node
        node = max(options, key=lambda ch: (_uct(ch, node.visits, cfg.c_uct), tuple(-i for i in ch.path)))
    return node


def _mark_exhausted(node: Node | None, cfg: "MCTSConfig") -> None:
    cap = max(cfg.max_children, cfg.expansions) if cfg.widening > 0 else cfg.expansions
    while node is not None:
        if node.children and len(node.children) >= cap and all(ch.exhausted for ch in node.children):
            node.exhausted = True
            node = node.parent
        else:
            return


def _walk(root: Node):
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        stack += node.children


async def search(question: Question, policy, scorer, cfg: MCTSConfig) -> SearchResult:
    exp = StepExpander(question, policy, scorer, cfg, max_step_tokens=cfg.max_step_tokens)
    root = exp.root
    while True:
        if root.exhausted:
            exp.stats.stopped_by = "done"
            break
        reason = exp.budget_reason()
        if reason:
            exp.stats.stopped_by = reason
            break
        if cfg.max_iterations is not None and exp.stats.iterations >= cfg.max_iterations:
            exp.stats.stopped_by = "iterations"
            break
        leaf = _select(root, cfg)
        first = len(leaf.children)
        children = await exp.expand([(leaf, i) for i in range(first, first + cfg.expansions)])
        got = [ch for ch in children if ch is not None]
        if not got:
            exp.stats.stopped_by = exp.budget_reason() or "tokens"
            break
        exp.stats.iterations += 1
        for ch in got:
            ch.visits, ch.value_sum = 1, ch.value
            ch.exhausted = not exp.can_expand(ch, cfg.max_depth)
        # each new child is one simulation ("mean", default), or the expansion is one simulation worth
        # its best child ("max")
        if cfg.backup == "max":
            visits, total = 1, max(ch.value for ch in got)
        else:
            visits, total = len(got), sum(ch.value for ch in got)
        node = leaf
        while node is not None:
            node.visits += visits
            node.value_sum += total
            node = node.parent
        if len(got) < cfg.expansions:  # a budget cut the expansion short: nothing more will start
            exp.stats.stopped_by = exp.budget_reason() or "tokens"
            break
        _mark_exhausted(leaf, cfg)
    nodes = [n for n in _walk(root) if n is not root]
    finished = [n for n in nodes if n.terminal]
    if cfg.final == "visits":
        chosen = root
        while chosen.children:
            chosen = max(chosen.children, key=lambda ch: (ch.visits, ch.value_sum / max(ch.visits, 1), tuple(-i for i in ch.path)))
        chosen = None if chosen is root else chosen
    else:
        chosen = pick_best(finished) or pick_best([n for n in nodes if not n.children])
    if exp.stats.max_depth >= cfg.max_depth and not finished and exp.stats.stopped_by == "done":
        exp.stats.stopped_by = "depth"
    return make_result(question, cfg, chosen, finished, exp.stats, exp.started, exp.root)
