"""``metastone demo-train``'s own logic: step metrics across resumed runs, the per-step line, plot, tables.

The whole command (verl training of SmolLM2 on CPU, ~25 minutes) is run by `make demo-train`, not by
the suite; `tests/train/test_e2e_cpu.py` runs the same training loop on the tiny reasoner.
"""

from __future__ import annotations

import json

import pytest


def write_metrics(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_step_metrics_of_a_resumed_run_and_the_step_line(tmp_path):
    from metastone.cli.demo_train import format_step, last_step, read_step_metrics

    ckpt = tmp_path / "ckpt"
    assert last_step(ckpt) == 0
    write_metrics(ckpt / "metrics" / "20261203-100000-1.jsonl", [
        {"step": 1, "data": {"critic/score/mean": 0.25, "sprm/within_q_auroc": 0.5}},
        {"step": 2, "data": {"critic/score/mean": 0.5}},  # step 2 crashed before its checkpoint
    ])
    write_metrics(ckpt / "metrics" / "20261203-110000-2.jsonl", [
        {"step": 2, "data": {"critic/score/mean": 0.75, "sprm/step_score_gap": 0.125}},
    ])
    (ckpt / "metrics" / "20261203-110000-2.jsonl").open("a").write('{"step": 3, "da')  # a line being written
    (ckpt / "latest_checkpointed_iteration.txt").write_text("2\n")
    steps = read_step_metrics(ckpt)
    assert sorted(steps) == [1, 2] and steps[2]["critic/score/mean"] == 0.75  # the resumed run's line wins
    assert last_step(ckpt) == 2
    line = format_step(2, steps[2])
    assert "step   2" in line and "reward 0.750" in line and "score_gap +0.125" in line and "AUROC n/a" in line


def test_plot_and_tables(tmp_path):
    pytest.importorskip("matplotlib")
    from metastone.cli.demo_train import format_heads, format_table, plot_aha

    steps = {1: {"sprm/step_score_gap": 0.0, "sprm/within_q_auroc": 0.5, "critic/score/mean": 0.3},
             2: {"sprm/step_score_gap": 0.1, "critic/score/mean": 0.4}}
    assert plot_aha(steps, tmp_path / "aha.png").stat().st_size > 1000
    metric = lambda v: {"mean": v, "ci": None}  # noqa: E731
    table = format_table({"before": {"pass@1": metric(0.355), "maj@8": metric(0.48), "SPRM BoN@8": metric(0.5),
                                     "oracle@8": metric(0.74)}}, 8)
    assert "| before | 35.5 | 48.0 | 50.0 | 74.0 |" in table
    heads = format_heads({"fresh": {"within_q_auroc": None, "pairs": 0, "bon": 0.4},
                          "joint": {"within_q_auroc": 0.625, "pairs": 96, "bon": 0.5}}, 8)
    assert "| fresh | n/a (0 pairs) | 40.0 |" in heads and "| joint | 0.625 (96 pairs) | 50.0 |" in heads


def test_bad_arguments_are_refused_before_anything_runs(tmp_path):
    from metastone.cli import main

    assert main(["demo-train", "--out", str(tmp_path / "x"), "--drafts", "1"]) == 2
    assert not (tmp_path / "x").exists()


def _fails(path):
    raise ValueError(f"cannot read {path}")


def test_a_stage_in_a_child_process_reports_its_error(tmp_path):
    from metastone.cli.demo_train import StageFailed, in_child

    in_child(print, "a child stage that succeeds")
    with pytest.raises(StageFailed, match=r"_fails: ValueError: cannot read .*x\.jsonl\. Rerun the same command"):
        in_child(_fails, tmp_path / "x.jsonl")
