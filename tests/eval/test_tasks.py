"""Task registry and bundled data: names, loading, pinned files, math and C-Eval tasks end to end."""

import hashlib
import json
from pathlib import Path

import pytest

from metastone.eval import TASKS, Example, get_task, load_task
from metastone.eval.tasks import AIME24, CEval, DATA_DIR

SHA256 = {  # byte-identical copies of the original release's data files (see data/README.md)
    "aime24.jsonl": "5a7a817807c8c2b6b541631deaa6d8c2eb7f0420e0f2373a25878921e920b6da",
    "aime25.jsonl": "9da60057135388687f3c594476b211538d0be8e7f3b2de6e680513281412c0ec",
    "ceval.json": "61f706348348f344e533a8d50b6b4c576ea9ee527d3ff41d7390d065030bcc1d",
    "aime.parquet": "fdb1aff714e69bd4e1f2cc7facee88d3a8c4583d6e3a47447251b651a71004c6",
}


@pytest.mark.parametrize("name", sorted(SHA256))
def test_bundled_files_are_pinned(name):
    assert hashlib.sha256((DATA_DIR / name).read_bytes()).hexdigest() == SHA256[name]


def test_registry_names():
    assert set(TASKS) == {"aime24", "aime25", "ceval", "livecodebench", "humaneval", "demo"}
    assert get_task("ceval") is CEval
    with pytest.raises(ValueError, match="unknown task"):
        get_task("gsm8k")


@pytest.mark.parametrize("name,n,first_id", [("aime24", 30, "aime24-00"), ("aime25", 30, "aime25-00"),
                                             ("ceval", 1346, "ceval-computer_network-0"), ("demo", 200, "demo-test-00000")])
def test_bundled_tasks_load(name, n, first_id):
    task = load_task(name)
    assert len(task) == n and task[0].id == first_id and isinstance(task[0], Example)
    assert len({e.id for e in task}) == n


def test_aime_parquet_is_verl_format():
    import pandas as pd

    df = pd.read_parquet(DATA_DIR / "aime.parquet")
    assert len(df) == 30
    assert {"prompt", "data_source", "ability", "reward_model", "extra_info"} <= set(df.columns)
    assert df.iloc[0]["reward_model"]["ground_truth"]["target"] == "204"


def test_aime_task_end_to_end():
    with AIME24.load(workers=1) as task:
        ex = task[0]
        assert ex.answer == "204" and task.prompt(ex).rstrip().endswith("\\boxed{}.")
        grades = task.grade_batch(["<think>hmm</think> \\boxed{204}", "\\boxed{0204}", "204", "\\boxed{205}"], [ex] * 4)
        assert [g.correct for g in grades] == [True, True, False, False]
        assert grades[2].details["reason"] == "no_boxed"
        assert task.answer_keys(["\\boxed{0.5}", "x \\boxed{\\frac{1}{2}}", "nothing"]) == ["1/2", "1/2", None]
        assert task.summarize([ex] * 4, grades) == {"accuracy": 0.5, "n": 4}
    with AIME24.load(require_boxed=False, workers=1) as task:
        assert task.grade("The answer is 204.", task[0]).correct


def test_ceval_task_end_to_end():
    task = load_task("ceval")
    ex = task[0]
    right, wrong = f"ANSWER: {ex.answer}", "ANSWER: " + ("A" if ex.answer != "A" else "B")
    grades = task.grade_batch([right, wrong], [ex, ex])
    assert [g.correct for g in grades] == [True, False]
    report = task.summarize([ex, ex], grades)
    assert report["categories"]["STEM"] == {"accuracy": 0.5, "n": 2}


def test_bad_task_data_is_named(tmp_path):
    bad = tmp_path / "aime.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": 1}) + "\n")
    with pytest.raises(ValueError, match="aime.jsonl:1"):
        AIME24.load(bad)
    rows = json.loads((DATA_DIR / "ceval.json").read_text(encoding="utf-8"))[:2]
    rows[1]["answer"] = "E"
    (tmp_path / "c.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(ValueError, match=r"c.json\[1\].*A, B, C, D"):
        CEval.load(tmp_path / "c.json")
    with pytest.raises(FileNotFoundError):
        load_task("aime24", tmp_path / "missing.jsonl")


def test_data_readme_lists_every_file():
    readme = (Path(DATA_DIR) / "README.md").read_text(encoding="utf-8")
    for name in list(SHA256) + ["demo/train.jsonl", "demo/test.jsonl"]:
        assert name in readme
