"""``benchmarks/bench_search.py`` on a tiny HF model: every budget respected, rows saved as measured, reruns
reuse them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def bench(model, data, out, budgets, *extra):
    cmd = [sys.executable, "benchmarks/bench_search.py", "--model", str(model), "--head", str(model), "--backend", "hf",
           "--input_file", str(data), "--questions", "2", "--budgets", budgets, "--bon_max", "4", "--max_tokens", "16",
           "--max_step_tokens", "6", "--max_depth", "4", "--beam_width", "2", "--expansions", "2",
           "--temperature", "1.0", "--out", str(out), *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
@pytest.mark.serve  # runs in the serving suite: balances `make test`'s two suites (dev/LOG.md)
def test_bench_measures_every_strategy_within_budget_and_resumes(peaky_model, demo4, tmp_path):
    model, _ = peaky_model
    out = tmp_path / "bench"
    first = bench(model, demo4, out, "16,32")
    report = json.loads((out / "search_bench.json").read_text())
    rows = {(r["strategy"], r["budget"]): r for r in report["rows"]}
    assert set(rows) == {(s, b) for s in ("bon", "beam", "mcts") for b in (16, 32)}
    for (strategy, budget), row in rows.items():
        assert len(row["per_question"]) == 2
        assert all(q["tokens"] <= budget for q in row["per_question"]), (strategy, budget, row["per_question"])
        assert row["accuracy"] == sum(q["correct"] for q in row["per_question"]) / 2
    assert (out / "accuracy_vs_tokens.png").stat().st_size > 0
    assert "beam@16:" in first and "mcts@32:" in first

    more = bench(model, demo4, out, "16,32,48")  # only the new budget is measured
    assert "@48:" in more and "@16:" not in more and "@32:" not in more
    report2 = json.loads((out / "search_bench.json").read_text())
    assert len(report2["rows"]) == 9
    assert [r for r in report2["rows"] if r["budget"] != 48] == report["rows"]

    other = bench(model, demo4, out, "16", "--strategies", "beam", "--seed", "1")  # other settings: measured afresh
    assert "other settings (seed)" in other and "beam@16:" in other
    assert len(json.loads((out / "search_bench.json").read_text())["rows"]) == 1
