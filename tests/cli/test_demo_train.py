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
    from metastone.cli.demo_train import format_heads, format_policy_table, plot_aha

    steps = {1: {"sprm/step_score_gap": 0.0, "sprm/within_q_auroc": 0.5, "critic/score/mean": 0.3},
             2: {"sprm/step_score_gap": 0.1, "critic/score/mean": 0.4}}
    assert plot_aha(steps, tmp_path / "aha.png").stat().st_size > 1000
    metric = lambda v: {"mean": v, "ci": None}  # noqa: E731
    table = format_policy_table({"before": {"pass@1": metric(0.355), "maj@8": metric(0.48), "SPRM BoN@8": metric(0.5),
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


def test_base_drafts_of_a_resumed_folder_are_the_ones_its_validation_set_came_from(tmp_path):
    from metastone.cli.demo_train import VALIDATION_FILE, base_drafts_file

    assert base_drafts_file(tmp_path, 50, 8, "vllm", "bfloat16").name == "drafts-base-50x8-vllm-bfloat16.jsonl"
    (tmp_path / "drafts-base-50x8-bfloat16.jsonl").write_text("")  # an earlier run's (HF, before backends were named)
    assert base_drafts_file(tmp_path, 50, 8, "vllm", "bfloat16").name == "drafts-base-50x8-vllm-bfloat16.jsonl"
    (tmp_path / VALIDATION_FILE).write_text("")  # its validation set exists: the training validated on those drafts
    assert base_drafts_file(tmp_path, 50, 8, "vllm", "bfloat16").name == "drafts-base-50x8-bfloat16.jsonl"
    (tmp_path / "drafts-base-50x8-hf-bfloat16.jsonl").write_text("")
    assert base_drafts_file(tmp_path, 50, 8, "vllm", "bfloat16").name == "drafts-base-50x8-hf-bfloat16.jsonl"


@pytest.mark.train
@pytest.mark.slow
def test_the_evaluation_samples_on_the_serving_environments_vllm(peaky_model, demo4, tmp_path):
    """From the training environment (no vLLM), ``demo-train`` samples its evaluation drafts with the serving
    environment's ``metastone infer --backend vllm --score_while_generating`` as a subprocess: every draft
    recorded and scored, and a second call on the finished file changes nothing (resume)."""
    import json

    from metastone.cli.demo_train import sample, serving_metastone

    if serving_metastone() is None:
        pytest.skip("no serving environment (.venv) beside this one: `make test` builds it first")
    model, _ = peaky_model
    drafts = tmp_path / "drafts.jsonl"
    sample(model, demo4, drafts, 2, 0, False, "float32", "vllm")
    records = [json.loads(line) for line in drafts.read_text().splitlines()]
    assert sorted((r["question_id"], r["draft"]) for r in records) == sorted(
        (q, d) for q in {r["question_id"] for r in records} for d in range(2)) and len(records) == 8
    assert all(r["score"] is not None and len(r["step_scores"]) == len(r["score_positions"]) for r in records)
    config = json.loads((tmp_path / "drafts.jsonl.config.json").read_text())["content"]
    assert (config["max_tokens"], config["temperature"], config["repetition_penalty"]) == (64, 0.7, 1.0)
    before = drafts.read_text()
    sample(model, demo4, drafts, 2, 0, False, "float32", "vllm")
    assert drafts.read_text() == before
