"""What every search strategy shares: the question, the tree node, the result, the budgets and the expander.

A strategy is ``async def search(question, policy, scorer, cfg) -> SearchResult`` over the
async engine clients (``metastone.engines``: ``policy.generate(requests, sampling)`` and
``scorer.score(sequences, prompt_lens)``). Tree strategies never talk to them directly: they ask a
``StepExpander`` for children of nodes, which

- samples ONE step per request: generation stops at the SPRM step separators (``stop_token_ids``,
  the ids of ``StepSpec.separator_ids`` from ``metastone.sprm``, the same definition training and
  scoring use), at the task's stop strings, at EOS, or at ``max_step_tokens``;
- seeds child ``i`` of the node at path ``p`` with ``node_seed(run seed, question id, p + (i,))``, so a
  node's tokens depend on nothing else (a one-step path ``(d,)`` has Best-of-N draft ``d``'s seed:
  common random numbers with BoN);
- scores every new node once (prompt + path ids) and sets its value to
  ``metastone.sprm.aggregate_list(step scores of the path, cfg.aggregation)``: geometric mean by
  default, as in MetaStone-S1 Eq. 5;
- caches nodes by path: a node is requested from the policy and the scorer at most once;
- enforces the budgets: the requests of one call split what is left of ``token_budget`` equally and
  each reserves its share as its ``max_tokens`` before anything is sent (so the generated total never
  exceeds the budget; a step the share cut short continues in a child), and no request starts after
  ``time_budget_s``.

The gold answer is never read here: terminal grading is for reports only (runner, benchmark).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Sequence

from metastone.engines import DraftRequest, GenResult, Sampling, ServiceDown
from metastone.sampling import DEFAULT_SAMPLING as SAMPLING
from metastone.sampling import request_seed as node_seed  # a node's seed; one-step path (d,) = draft d's
from metastone.sprm import aggregate_list
from metastone.sprm.aggregate import AGGREGATIONS
from metastone.sprm.config import head_field

logger = logging.getLogger(__name__)


@dataclass
class Question:
    """One problem to search: a stable id and the prompt's token ids (what the policy continues)."""

    id: str
    prompt_ids: list[int]
    prompt: str = ""

    def __post_init__(self):
        if not self.prompt_ids:
            raise ValueError(f"question {self.id!r}: prompt_ids is empty; encode the prompt first.")


def _f(default, help: str, **kw):  # noqa: A002 - TRL-style field with help text
    return field(default=default, metadata={"help": help}, **kw)


@dataclass(frozen=True)
class SearchConfig:
    """Fields every strategy has. Errors name the field and the fix (TRL style)."""

    strategy: ClassVar[str] = ""
    seed: int = _f(0, "run seed; every node's / draft's seed derives from it, the question id and its path")
    # sampling: metastone.sampling.Sampling's fields and defaults (flat: options are saved and compared on resume)
    max_tokens: int = _f(SAMPLING.max_tokens, "most response tokens of one trace (all its steps together)")
    temperature: float = _f(SAMPLING.temperature, "sampling temperature")
    top_p: float = _f(SAMPLING.top_p, "nucleus sampling")
    repetition_penalty: float = _f(SAMPLING.repetition_penalty, "HF/vLLM repetition penalty (1 = off)")
    stop: tuple[str, ...] = _f((), "the task's stop strings: a trace ends there (e.g. the demo's '\\n\\n')")
    separator_ids: tuple[int, ...] = _f((), "SPRM step separator token ids (StepSpec.separator_ids); tree strategies stop each step there")
    aggregation: str = head_field("aggregation", "how a path's step scores make its value (metastone.sprm.aggregate)")
    token_budget: int | None = _f(None, "most generated tokens per question, all requests together (None = no limit)")
    time_budget_s: float | None = _f(None, "no new request starts after this many seconds per question (None = no limit)")
    max_retries: int = _f(2, "a failed generation request is retried alone this many times")

    def _fail(self, name: str, problem: str, fix: str):
        raise ValueError(f"{type(self).__name__}.{name}: {problem}, got {getattr(self, name)!r}. {fix}")

    def __post_init__(self):
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "separator_ids", tuple(int(i) for i in self.separator_ids))
        try:
            Sampling.of(self).check()
        except ValueError as exc:
            raise ValueError(f"{type(self).__name__}.{exc}") from None
        if self.aggregation not in AGGREGATIONS:
            self._fail("aggregation", f"must be one of {', '.join(AGGREGATIONS)}", "The paper uses geomean.")
        if self.token_budget is not None and self.token_budget < 1:
            self._fail("token_budget", "must be >= 1 or None", "Give the generated tokens per question, or None for no limit.")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            self._fail("time_budget_s", "must be > 0 or None", "Give seconds per question, or None for no limit.")
        if self.max_retries < 0:
            self._fail("max_retries", "must be >= 0", "Use 0 to fail a question at its first failed request.")

    @property
    def sampling(self) -> Sampling:
        return Sampling.of(self)

    def options(self) -> dict:
        """JSON-able fields (strategy included): saved with every run and compared on resume."""
        out = {"strategy": self.strategy}
        for k, v in asdict(self).items():
            out[k] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


@dataclass(frozen=True)
class TreeSearchConfig(SearchConfig):
    """Fields and checks of the step-level strategies (beam, MCTS): a node is one step, cut at the SPRM separators."""

    expansions: int = _f(4, "children sampled per expanded node (beam: per beam, each step)")
    max_depth: int = _f(64, "most steps of one trace")
    max_step_tokens: int = _f(1024, "most tokens of one step (a longer step continues in the next node)")

    def __post_init__(self):
        super().__post_init__()
        if not self.separator_ids:
            self._fail("separator_ids", "is empty; step-level search cuts steps at the SPRM separators",
                       "Pass metastone.sprm.resolve_step_spec(tokenizer, sprm_config.separators).separator_ids "
                       "(metastone.search.step_spec_for does it from a head folder).")
        if self.max_step_tokens < 1:
            self._fail("max_step_tokens", "must be >= 1", "Give the most tokens of one step, e.g. 512.")
        if self.max_depth < 1:
            self._fail("max_depth", "must be >= 1", "Give the most steps of one trace, e.g. 64.")
        if self.expansions < 1:
            self._fail("expansions", "must be >= 1", "Give the children sampled per expanded node, e.g. 4.")


@dataclass(eq=False)
class Node:
    """A partial trace: the path of steps from the root. ``step_ids`` are this step's tokens only."""

    path: tuple[int, ...]
    parent: "Node | None" = None
    step_ids: list[int] = field(default_factory=list)
    step_text: str = ""
    seed: int | None = None
    finish_reason: str | None = None
    stop_reason: Any = None
    depth: int = 0
    response_len: int = 0  # response tokens on the path
    terminal: bool = False  # the trace ended (EOS, task stop string, max_tokens)
    step_scores: list[float] = field(default_factory=list)  # the whole path's, from the scorer
    positions: list[int] = field(default_factory=list)
    value: float = 0.0  # aggregate of step_scores
    children: list["Node"] = field(default_factory=list)
    visits: int = 0  # MCTS statistics
    value_sum: float = 0.0
    exhausted: bool = False  # MCTS: nothing left to expand below

    @property
    def key(self) -> str:
        return ".".join(map(str, self.path)) or "root"

    def response_ids(self) -> list[int]:
        parts, node = [], self
        while node is not None:
            parts.append(node.step_ids)
            node = node.parent
        return [t for part in reversed(parts) for t in part]

    def summary(self) -> dict:
        return {"node": self.key, "score": self.value, "depth": self.depth, "tokens": self.response_len,
                "finished": self.terminal}


@dataclass
class SearchStats:
    nodes_expanded: int = 0  # new nodes generated (each = one policy request)
    tokens_generated: int = 0
    generate_calls: int = 0
    score_calls: int = 0
    score_tokens: int = 0  # tokens the scorer ran through its model for the new nodes (its own count where it
    #                        reports one, e.g. HFScorer with a prefix cache: only each node's new step)
    score_path_tokens: int = 0  # tokens of the scored sequences (prompt + path): what a full prefill costs
    max_depth: int = 0  # deepest node reached
    iterations: int = 0
    stopped_by: str = "done"  # done | tokens | time | depth | iterations
    wall_s: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchResult:
    """The chosen trace, its SPRM score, the finished candidates and the tree statistics."""

    question_id: str
    strategy: str
    token_ids: list[int]
    finish_reason: str
    stop_reason: Any
    finished: bool  # the chosen trace ended (False: a budget cut it; its answer may be missing)
    score: float
    step_scores: list[float]
    positions: list[int]
    node: str  # the chosen node's path ("0.2.1"), or the draft index for Best-of-N
    depth: int
    candidates: list[dict]  # finished traces seen, best first: node, score, depth, tokens
    stats: SearchStats
    root: Node | None = field(default=None, repr=False, compare=False)  # the whole tree, for analysis (not saved)


class SearchError(RuntimeError):
    """A question whose search could not finish (a request failed after its retries)."""


def pick_best(nodes: Sequence[Node]) -> Node | None:
    """Highest value; ties to the earlier path (deterministic, like the metrics' lower-draft rule)."""
    best = None
    for n in nodes:
        if best is None or n.value > best.value or (n.value == best.value and n.path < best.path):
            best = n
    return best


def make_result(question: Question, cfg: SearchConfig, chosen: Node | None, finished: Sequence[Node], stats: SearchStats,
                started: float, root: Node | None = None) -> SearchResult:
    stats.wall_s = round(time.monotonic() - started, 4)
    cands = sorted(finished, key=lambda n: (-n.value, n.path))
    if chosen is None:
        return SearchResult(question.id, cfg.strategy, [], "length", None, False, 0.0, [], [], "root", 0, [], stats, root)
    return SearchResult(question.id, cfg.strategy, chosen.response_ids(), chosen.finish_reason or "length",
                        chosen.stop_reason, chosen.terminal, chosen.value, list(chosen.step_scores), list(chosen.positions),
                        chosen.key, chosen.depth, [n.summary() for n in cands], stats, root)


class StepExpander:
    """Children of nodes for one question: one policy request per new node, cached, under the budgets."""

    def __init__(self, question: Question, policy, scorer, cfg: SearchConfig, *, max_step_tokens: int | None = None):
        self.q, self.policy, self.scorer, self.cfg = question, policy, scorer, cfg
        self.max_step_tokens = max_step_tokens or cfg.max_tokens
        self.started = time.monotonic()
        self.deadline = self.started + cfg.time_budget_s if cfg.time_budget_s else None
        self.stats = SearchStats()
        self.cache: dict[tuple[int, ...], Node] = {}
        self.root = Node(path=())
        self.separators = set(cfg.separator_ids)

    # -- budgets -------------------------------------------------------------------------------
    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def tokens_left(self) -> int | None:
        return None if self.cfg.token_budget is None else self.cfg.token_budget - self.stats.tokens_generated

    def can_expand(self, node: Node, max_depth: int) -> bool:
        return not node.terminal and node.depth < max_depth and node.response_len < self.cfg.max_tokens

    def budget_reason(self) -> str | None:
        """Why no more requests may start (``time`` / ``tokens``), or None."""
        if self.out_of_time():
            return "time"
        left = self.tokens_left()
        if left is not None and left <= 0:
            return "tokens"
        return None

    # -- expansion -----------------------------------------------------------------------------
    def _ends_step(self, res: GenResult) -> bool:
        if res.finish_reason != "stop":
            return False
        if res.stop_reason is not None:
            return isinstance(res.stop_reason, int) and res.stop_reason in self.separators
        return bool(res.token_ids) and res.token_ids[-1] in self.separators

    async def _generate(self, reqs: list[DraftRequest], max_tokens: int) -> list[GenResult]:
        cfg = self.cfg
        sampling = Sampling.of(cfg, max_tokens=max_tokens, stop_token_ids=cfg.separator_ids)
        results: list[GenResult | Exception] = [None] * len(reqs)  # type: ignore[list-item]
        todo = list(range(len(reqs)))
        for attempt in range(cfg.max_retries + 1):
            self.stats.generate_calls += 1
            got = await self.policy.generate([reqs[i] for i in todo], sampling)
            for i, res in zip(todo, got):
                if isinstance(res, ServiceDown):  # the service is gone past the run's wait: stop, do not retry
                    raise res
                results[i] = res
            todo = [i for i in todo if isinstance(results[i], Exception)]
            if not todo:
                break
            logger.warning("question %s: %d step requests failed (%s); retrying them alone (attempt %d)",
                           self.q.id, len(todo), results[todo[0]], attempt + 1)
        if todo:
            raise SearchError(f"question {self.q.id}: node {reqs[todo[0]].key} failed after {cfg.max_retries} retries: "
                              f"{results[todo[0]]}")
        return results  # type: ignore[return-value]

    async def _score(self, sequences: list[list[int]], prompt_lens: list[int]):
        for attempt in range(self.cfg.max_retries + 1):
            self.stats.score_calls += 1
            try:
                return await self.scorer.score(sequences, prompt_lens)
            except ServiceDown:
                raise
            except Exception as exc:  # noqa: BLE001 - retried; the generated tokens are kept
                if attempt == self.cfg.max_retries:
                    raise SearchError(f"question {self.q.id}: scoring failed after {attempt} retries: {exc}") from exc
                logger.warning("question %s: scoring failed (%s); retrying the scoring only", self.q.id, exc)
        raise AssertionError("unreachable")

    async def expand(self, pairs: Sequence[tuple[Node, int]]) -> list[Node | None]:
        """Child ``i`` of each ``(parent, i)``: cached or generated + scored now. None where a budget forbade it."""
        todo: list[tuple[Node, int]] = []
        for parent, i in pairs:
            if parent.path + (i,) not in self.cache and (parent, i) not in todo:
                todo.append((parent, i))
        new: list[tuple[Node, int, int]] = []  # parent, child index, reserved max_tokens
        left = self.tokens_left()
        # with a token budget every request of this call gets an equal share of what is left, reserved
        # before anything is sent: the generated total can never pass the budget
        share = None if left is None or not todo else max(1, left // len(todo))
        reserved = 0
        for parent, i in todo:
            if self.out_of_time():
                break
            room = min(self.max_step_tokens, self.cfg.max_tokens - parent.response_len)
            if left is not None:
                room = min(room, share, left - reserved)
            if room < 1:
                break
            reserved += room
            new.append((parent, i, room))
        if new:
            await self._run(new)
        return [self.cache.get(p.path + (i,)) for p, i in pairs]

    async def _run(self, new: list[tuple[Node, int, int]]) -> None:
        q = self.q
        reqs = []
        for parent, i, _ in new:
            path = parent.path + (i,)
            tag = ".".join(map(str, path))
            reqs.append(DraftRequest(f"{q.id}/{tag}", q.id, path[-1], node_seed(self.cfg.seed, q.id, path), q.prompt,
                                     q.prompt_ids + parent.response_ids()))
        # one generate call per distinct max_tokens (all equal except near the end of the token budget)
        groups: dict[int, list[int]] = {}
        for k, (_, _, room) in enumerate(new):
            groups.setdefault(room, []).append(k)
        outs = await asyncio.gather(*(self._generate([reqs[k] for k in ks], room) for room, ks in groups.items()))
        results: list[GenResult] = [None] * len(new)  # type: ignore[list-item]
        for ks, got in zip(groups.values(), outs):
            for k, res in zip(ks, got):
                results[k] = res
        nodes = []
        for (parent, i, room), req, res in zip(new, reqs, results):
            ids = list(res.token_ids)[:room]  # a policy may not return more than asked; never count more
            self.stats.tokens_generated += len(ids)
            length = parent.response_len + len(ids)
            ends_step = self._ends_step(res)
            terminal = (res.finish_reason == "stop" and not ends_step) or length >= self.cfg.max_tokens
            nodes.append(Node(path=parent.path + (i,), parent=parent, step_ids=ids, step_text=res.text, seed=req.seed,
                              finish_reason=res.finish_reason, stop_reason=res.stop_reason, depth=parent.depth + 1,
                              response_len=length, terminal=terminal))
        scores = await self._score([q.prompt_ids + n.response_ids() for n in nodes], [len(q.prompt_ids)] * len(nodes))
        for node, sc in zip(nodes, scores):
            length = len(q.prompt_ids) + node.response_len
            computed = getattr(sc, "computed_tokens", None)
            self.stats.score_path_tokens += length
            self.stats.score_tokens += length if computed is None else computed
            node.step_scores, node.positions = list(sc.step_scores), list(sc.positions)
            node.value = aggregate_list(node.step_scores, self.cfg.aggregation)
            node.parent.children.append(node)
            node.parent.children.sort(key=lambda n: n.path)
            self.cache[node.path] = node
            self.stats.nodes_expanded += 1
            self.stats.max_depth = max(self.stats.max_depth, node.depth)
