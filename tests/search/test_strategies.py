"""Search strategies on a fixture policy and scorer with a planted value signal (pure Python, fast).

The fixture: a trace is STEPS steps ``[choice, 30, 31, SEP]`` then a final step ``[40, 41]`` + EOS.
Each step's choice is the question's planted good token with probability P_GOOD; the scorer gives a
step 0.9 if its choice is good, else about 0.35 (real ``metastone.sprm.step_positions`` find the
steps). The planted best path is "every choice good".
"""

import asyncio
import random
import time

import pytest

from metastone.engines import GenResult
from metastone.harness.runner import draft_seed
from metastone.search import (BeamSearchConfig, BestOfNConfig, MCTSConfig, Question, make_config, node_seed,
                              run_search)
from metastone.serve.scoring import TraceScore
from metastone.sprm import StepSpec, aggregate_list, step_positions

SEP, STEPS, P_GOOD = 1, 3, 0.3
TRACE_TOKENS = STEPS * 4 + 2


def question(i: int) -> Question:
    good = 10 + i % 10
    return Question(f"q{i}", [100 + good, 101, 102 + i])


def planted(q: Question, ids) -> bool:
    good = q.prompt_ids[0] - 100
    return len(ids) == TRACE_TOKENS and all(ids[4 * s] == good for s in range(STEPS))


class FixturePolicy:
    """Deterministic under each request's seed; records every request."""

    def __init__(self, delay: float = 0.0):
        self.requests, self.delay = [], delay

    def _one(self, req, sampling) -> GenResult:
        rng = random.Random(req.seed)
        good = req.prompt_ids[0] - 100
        resp = [t for t in req.prompt_ids if t < 100]
        steps = resp.count(SEP)
        pos = len(resp) - 1 - max((k for k, t in enumerate(resp) if t == SEP), default=-1)
        out = []
        while True:
            if steps == STEPS and pos == 2:
                return GenResult(" ".join(map(str, out)), out, "stop", None)  # EOS (not in the ids, like HFPolicy)
            if len(out) == sampling.max_tokens:
                return GenResult(" ".join(map(str, out)), out, "length", None)
            if steps == STEPS:
                tok = 40 + pos
            elif pos == 0:
                tok = good if rng.random() < P_GOOD else rng.choice([c for c in range(10, 20) if c != good])
            else:
                tok = (30, 31, SEP)[pos - 1]
            out.append(tok)
            pos += 1
            if tok == SEP:
                steps, pos = steps + 1, 0
                if SEP in sampling.stop_token_ids:
                    return GenResult(" ".join(map(str, out[:-1])), out, "stop", SEP)

    async def generate(self, requests, sampling):
        self.requests += [(r.key, tuple(r.prompt_ids), r.seed, sampling.max_tokens) for r in requests]
        if self.delay:
            await asyncio.sleep(self.delay)
        return [self._one(r, sampling) for r in requests]


class FixtureScorer:
    spec = StepSpec(separator_ids=(SEP,))

    def __init__(self):
        self.calls = 0

    async def score(self, sequences, prompt_lens):
        self.calls += 1
        out = []
        for seq, plen in zip(sequences, prompt_lens):
            good = seq[0] - 100
            positions = step_positions(seq, plen, self.spec)
            scores = []
            for p in positions:
                start = max([k + 1 for k in range(plen, p) if seq[k] == SEP] + [plen])
                noise = random.Random(hash((seq[start], p))).uniform(-0.05, 0.05)
                scores.append((0.9 if seq[start] == good else 0.35) + noise)
            out.append(TraceScore(aggregate_list(scores), scores, positions))
        return out


COMMON = dict(separator_ids=(SEP,), max_tokens=64, temperature=1.0)
BUDGET = 8 * TRACE_TOKENS  # what Best-of-8 spends


def configs(budget=BUDGET, **kw):
    return {
        "bon": BestOfNConfig(n=max(1, budget // TRACE_TOKENS), token_budget=budget, **COMMON, **kw),
        "beam": BeamSearchConfig(beam_width=2, expansions=4, max_depth=8, token_budget=budget, **COMMON, **kw),
        "mcts": MCTSConfig(expansions=4, max_depth=8, token_budget=budget, max_iterations=None, **COMMON, **kw),
    }


def solve(q, cfg, policy=None, scorer=None):
    return asyncio.run(run_search(q, policy or FixturePolicy(), scorer or FixtureScorer(), cfg))


def test_beam_and_mcts_find_the_planted_path_more_often_than_best_of_n_at_equal_tokens():
    questions = [question(i) for i in range(40)]
    wins = {}
    for name, cfg in configs().items():
        results = [solve(q, cfg) for q in questions]
        for r in results:
            assert r.stats.tokens_generated <= BUDGET
        wins[name] = sum(planted(q, r.token_ids) for q, r in zip(questions, results))
    # Best-of-8 finds a planted trace only when one of its 8 drafts is planted (p = 1 - (1 - 0.3^3)^8 ~ 0.2)
    assert wins["beam"] > wins["bon"] + 8 and wins["mcts"] > wins["bon"] + 8, wins


@pytest.mark.parametrize("name", ["bon", "beam", "mcts"])
@pytest.mark.parametrize("budget", [5, 30, 71])
def test_token_budget_is_never_exceeded(name, budget):
    for i in range(6):
        policy = FixturePolicy()
        r = solve(question(i), configs(budget)[name], policy)
        sent = sum(len(FixturePolicy()._one(type("R", (), {"seed": s, "prompt_ids": list(ids)})(),
                                            type("S", (), {"max_tokens": mt, "stop_token_ids": (SEP,) if name != "bon" else ()})()).token_ids)
                   for _, ids, s, mt in policy.requests)
        assert r.stats.tokens_generated == sent <= budget
        assert r.stats.stopped_by in ("tokens", "done")


@pytest.mark.parametrize("name", ["beam", "mcts"])
def test_max_depth_is_respected(name):
    cfg = {"beam": BeamSearchConfig(max_depth=2, **COMMON), "mcts": MCTSConfig(max_depth=2, **COMMON)}[name]
    policy = FixturePolicy()
    r = solve(question(1), cfg, policy)
    assert r.stats.max_depth == 2 and r.depth <= 2 and not r.finished  # traces need 4 steps
    assert all(key.split("/")[1].count(".") < 2 for key, *_ in policy.requests)
    assert r.stats.stopped_by == "depth" if name == "beam" else r.stats.stopped_by in ("depth", "done")


@pytest.mark.parametrize("name", ["bon", "beam", "mcts"])
def test_time_budget_stops_new_requests(name):
    delay, budget = 0.1, 0.25
    cfg = configs(10**6, time_budget_s=budget)[name]
    if name == "bon":
        cfg = BestOfNConfig(n=64, batch_size=1, time_budget_s=budget, **COMMON)
    t0 = time.monotonic()
    r = solve(question(2), cfg, FixturePolicy(delay=delay))
    wall = time.monotonic() - t0
    assert r.stats.stopped_by == "time"
    assert wall < budget + delay + 0.2  # the request in flight at the deadline finishes, nothing new starts


@pytest.mark.parametrize("name", ["bon", "beam", "mcts"])
def test_deterministic_under_a_seed_and_no_duplicate_requests(name):
    def run(seed):
        policy = FixturePolicy()
        cfg = configs(10 * TRACE_TOKENS, seed=seed)[name]
        res = [solve(question(i), cfg, policy) for i in range(5)]
        return policy, [(r.token_ids, r.node, r.score, r.candidates, {**r.stats.as_dict(), "wall_s": 0}) for r in res]

    p1, a = run(7)
    p2, b = run(7)
    _, c = run(8)
    assert a == b and p1.requests == p2.requests
    assert a != c
    keys = [k for k, *_ in p1.requests]
    assert len(keys) == len(set(keys))  # one request per node, ever
    assert len({(ids, s) for _, ids, s, _ in p1.requests}) == len(keys)
    for key, ids, s, _ in p1.requests:  # the node's seed is the hash of (run seed, question, path)
        qid, path = key.split("/")
        assert s == node_seed(7, qid, [int(x) for x in path.split(".")])


def test_best_of_n_drafts_are_the_harness_drafts():
    policy = FixturePolicy()
    r = solve(question(3), BestOfNConfig(n=6, **COMMON), policy)
    assert [s for _, _, s, _ in policy.requests] == [draft_seed(0, "q3", d) for d in range(6)]
    assert len(r.candidates) == 6 and r.finished and r.depth == 1
    assert r.score == max(c["score"] for c in r.candidates)


def test_mcts_final_rules_and_cached_nodes_are_not_rerequested():
    policy = FixturePolicy()
    cfg = MCTSConfig(expansions=3, max_iterations=12, **COMMON)
    by_value = solve(question(4), cfg, policy)
    n_requests = len(policy.requests)
    assert n_requests == by_value.stats.nodes_expanded
    by_visits = solve(question(4), MCTSConfig(expansions=3, max_iterations=12, final="visits", **COMMON))
    assert by_value.stats.nodes_expanded == by_visits.stats.nodes_expanded
    assert by_value.score >= by_visits.score or not by_visits.finished


def test_configs_name_the_field_and_the_fix():
    with pytest.raises(ValueError, match=r"BeamSearchConfig.separator_ids.*resolve_step_spec"):
        BeamSearchConfig()
    with pytest.raises(ValueError, match=r"MCTSConfig.max_iterations.*at least one of"):
        MCTSConfig(separator_ids=(1,), max_iterations=None)
    with pytest.raises(ValueError, match=r"BestOfNConfig.token_budget: must be >= 1"):
        BestOfNConfig(token_budget=0)
    with pytest.raises(ValueError, match=r"MCTSConfig.final"):
        MCTSConfig(separator_ids=(1,), final="best")
    with pytest.raises(ValueError, match=r"has no option\(s\) \['beam'\]"):
        make_config("beam", beam=3, separator_ids=(1,))
    assert make_config("mcts", separator_ids=[5]).options()["separator_ids"] == [5]
