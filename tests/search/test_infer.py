"""``test/inference.py --strategy beam|mcts`` end to end on a tiny HF model: records, metrics, kill/resume.

The tiny model is random, so its LM head is edited to write the separator "." often (the head's
``sprm_config.json``, read through ``--head_path``, names it): steps end at separators, as with a
real model, and the step stops go through ``HFPolicy``'s ``stop_token_ids``.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def infer_cmd(model_dir, data, out, head, strategy, *extra):
    budget = {"beam": ["--beam_width", "2", "--expansions", "2"], "mcts": ["--expansions", "2", "--max_iterations", "6"]}
    return [sys.executable, "test/inference.py", "--task", "demo", "--input_file", str(data), "--output_file", str(out),
            "--model_dir", str(model_dir), "--backend", "hf", "--dtype", "float32", "--max_tokens", "16",
            "--temperature", "1.0", "--no_progress", "--strategy", strategy, "--head_path", str(head),
            "--max_step_tokens", "6", "--max_depth", "4", "--token_budget", "48", *budget[strategy], *extra]


def contents(path):
    recs = [json.loads(x) for x in Path(path).read_text().splitlines()]
    for r in recs:
        r.pop("timings")
        r["search"].pop("wall_s")
    return sorted(recs, key=lambda r: r["key"])


@pytest.mark.slow
@pytest.mark.serve  # runs in the serving suite: balances `make test`'s two suites (dev/LOG.md)
@pytest.mark.parametrize("strategy", ["beam", "mcts"])
def test_search_through_inference_py_and_the_metric(strategy, peaky_model, demo4, tmp_path):
    model, sep = peaky_model
    out = tmp_path / f"{strategy}.jsonl"
    subprocess.run(infer_cmd(model, demo4, out, model, strategy), cwd=ROOT, env=ENV, check=True,
                   capture_output=True, timeout=300)
    recs = contents(out)
    assert [r["key"] for r in recs] == [f"demo/demo-test-0000{i}/0" for i in range(4)]
    for r in recs:
        s = r["search"]
        assert r["strategy"] == strategy and r["draft"] == 0
        assert 0 < s["tokens_generated"] <= 48 and s["nodes_expanded"] >= 2 and 1 <= s["max_depth"] <= 4
        assert len(r["token_ids"]) <= 16 and r["depth"] <= 4 and isinstance(r["response"], str)
        assert all(r["token_ids"][p - r["prompt_len"] + 1] in sep for p in r["score_positions"])
    assert any(r["step_scores"] for r in recs)  # steps were cut at the separator and scored
    saved = json.loads((tmp_path / f"{strategy}.jsonl.config.json").read_text())
    assert saved["content"]["strategy"] == strategy and saved["content"]["search"]["separator_ids"] == sep
    # the metric reads the records: one trace per question, pass@1 = accuracy of the chosen answers
    metric = subprocess.run([sys.executable, "test/compute_metric.py", "--task", "demo", "--result_paths", str(out),
                             "--input_file", str(demo4), "--json", str(tmp_path / "m.json"), "--bootstrap", "0"],
                            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert metric.returncode == 0, metric.stderr[-2000:]
    assert "pass@1" in metric.stdout
    # a restart with other search options is refused, naming the field
    again = subprocess.run(infer_cmd(model, demo4, out, model, strategy, "--token_budget", "40"), cwd=ROOT,
                           env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "search" in again.stderr


def test_bon_flags_and_search_flags_do_not_mix(tiny_model_dir, demo4, tmp_path):
    bad = subprocess.run([sys.executable, "test/inference.py", "--task", "demo", "--input_file", str(demo4),
                          "--output_file", str(tmp_path / "o.jsonl"), "--model_dir", str(tiny_model_dir),
                          "--backend", "hf", "--token_budget", "10"], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert bad.returncode != 0 and "--token_budget" in bad.stderr and "--strategy beam or mcts" in bad.stderr


@pytest.mark.slow
@pytest.mark.serve  # (see above)
def test_killed_search_run_resumes_to_the_uninterrupted_result(peaky_model, demo4, tmp_path):
    """With ``--workers 1`` no other question shares a batch, so the contents match bit for bit (with more
    workers, questions share padded batches and the numbers can differ in float rounding)."""
    model, _ = peaky_model
    ref = tmp_path / "ref.jsonl"
    subprocess.run(infer_cmd(model, demo4, ref, model, "mcts", "--workers", "1"), cwd=ROOT, env=ENV, check=True,
                   capture_output=True, timeout=300)
    out = tmp_path / "killed.jsonl"
    rng, kills = random.Random(0), 0
    for _ in range(2):
        proc = subprocess.Popen(infer_cmd(model, demo4, out, model, "mcts", "--workers", "1"), cwd=ROOT, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(rng.uniform(5.0, 9.0))
        if proc.poll() is not None:
            break
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
    subprocess.run(infer_cmd(model, demo4, out, model, "mcts", "--workers", "1"), cwd=ROOT, env=ENV, check=True,
                   capture_output=True, timeout=300)
    assert kills >= 1
    got, want = contents(out), contents(ref)
    assert len(got) == len({r["key"] for r in got}) == 4
    assert got == want
