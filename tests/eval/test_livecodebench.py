"""LiveCodeBench loader on code_generation_lite-format fixtures, and grading them end to end."""

import json
import shutil
from datetime import date
from pathlib import Path

import pytest

from metastone.eval.livecodebench import (
    decode_test_cases, encode_test_cases, lcb_prompt, load_livecodebench, parse_problem, release_files,
)
from metastone.sandbox.sandbox import SandboxConfig
from metastone.eval.tasks import LiveCodeBench

FIXTURES = Path(__file__).parent / "fixtures"
LCB = FIXTURES / "lcb"

SOLUTIONS = {
    "fx-sum-pairs": "t = int(input())\nfor _ in range(t):\n    a, b = map(int, input().split())\n    print(a + b)\n",
    "fx-two-sum": ("class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n"
                   "        seen = {}\n        for i, x in enumerate(nums):\n"
                   "            if target - x in seen:\n                return [seen[target - x], i]\n"
                   "            seen[x] = i\n"),
    "fx-average": "n = int(input())\nxs = list(map(int, input().split()))\nprint(f'{sum(xs) / n:.2f}')\n",
    "fx-count-vowels": ("class Solution:\n    def countVowels(self, s: str) -> int:\n"
                        "        return sum(c in 'aeiouAEIOU' for c in s)\n"),
    "fx-max-subarray": ("import sys\ndata = sys.stdin.read().split()\nbest = cur = int(data[1])\n"
                        "for v in map(int, data[2:]):\n    cur = max(v, cur + v)\n    best = max(best, cur)\nprint(best)\n"),
}
WRONG = {  # each passes the public test and fails a private one
    "fx-sum-pairs": "t = int(input())\nfor _ in range(t):\n    a, b = map(int, input().split())\n    print(abs(a + b))\n",
    "fx-two-sum": "class Solution:\n    def twoSum(self, nums, target):\n        return [0, 1]\n",
    "fx-average": "n = int(input())\nxs = list(map(int, input().split()))\nprint(round(sum(xs) / n, 1))\n",
    "fx-count-vowels": "class Solution:\n    def countVowels(self, s):\n        return sum(c in 'aeiou' for c in s)\n",
    "fx-max-subarray": "import sys\ndata = sys.stdin.read().split()\nprint(max(map(int, data[1:])))\n",
}


def test_release_v5_window_and_files():
    problems = load_livecodebench(LCB, "release_v5")
    assert [p.question_id for p in problems] == ["fx-sum-pairs", "fx-two-sum", "fx-average", "fx-count-vowels", "fx-max-subarray"]
    assert [f.name for f in release_files(LCB, "release_v5")] == [f"test{s}.jsonl" for s in ("", 2, 3, 4, 5)]


def test_versions_and_explicit_dates():
    ids = lambda ps: [p.question_id for p in ps]  # noqa: E731
    assert "fx-too-late" in ids(load_livecodebench(LCB, "release_latest"))
    assert "fx-too-early" in ids(load_livecodebench(LCB, "release_v1", start_date="2023-01-01"))
    assert ids(load_livecodebench(LCB, "v2")) == ["fx-two-sum"]
    assert ids(load_livecodebench(LCB, "release_v6", start_date="2024-08-01", end_date="2025-02-01")) == ["fx-max-subarray"]
    with pytest.raises(ValueError, match="unknown LiveCodeBench version"):
        load_livecodebench(LCB, "release_v9")
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        load_livecodebench(LCB, start_date="May 2023")
    with pytest.raises(ValueError, match="after end_date"):
        load_livecodebench(LCB, start_date="2024-01-01", end_date="2023-01-01")


def test_missing_release_file_is_named(tmp_path):
    shutil.copy(LCB / "test.jsonl", tmp_path / "test.jsonl")
    with pytest.raises(ValueError, match="test2.jsonl"):
        load_livecodebench(tmp_path, "release_v5")
    assert len(load_livecodebench(tmp_path / "test.jsonl", "release_v5")) == 1  # a single file is read in full


def test_both_private_encodings_decode():
    rows = [json.loads(line) for line in (LCB / "test.jsonl").read_text().splitlines()]
    assert not rows[0]["private_test_cases"].startswith("[")  # base64(zlib(pickle(json)))
    problem = parse_problem(rows[0])
    assert len(problem.private_tests) == 2 and problem.contest_date == date(2023, 6, 10)
    plain = parse_problem(json.loads((LCB / "test2.jsonl").read_text()))
    assert plain.fn_name == "twoSum" and len(plain.private_tests) == 3
    cases = [{"input": "1", "output": "2", "testtype": "stdin"}]
    assert decode_test_cases(encode_test_cases(cases)) == cases


def test_pickle_with_classes_is_refused():
    import base64
    import pickle
    import zlib

    evil = base64.b64encode(zlib.compress(pickle.dumps(date(2024, 1, 1)))).decode()
    with pytest.raises(ValueError, match="refusing to load"):
        decode_test_cases(evil)


@pytest.mark.parametrize("field,value,message", [
    ("public_test_cases", "not json", "neither JSON"),
    ("public_test_cases", json.dumps([{"input": "1"}]), "input, output and testtype"),
    ("public_test_cases", json.dumps([{"input": "1", "output": "1", "testtype": "web"}]), "testtype"),
    ("contest_date", "yesterday", "ISO date"),
    ("metadata", "{broken", "metadata"),
])
def test_malformed_rows_name_the_field(field, value, message):
    row = json.loads((LCB / "test.jsonl").read_text().splitlines()[0])
    row[field] = value
    with pytest.raises(ValueError, match=message) as info:
        parse_problem(row, "file.jsonl:1")
    assert "file.jsonl:1" in str(info.value)


def test_functional_test_without_func_name_is_rejected():
    row = json.loads((LCB / "test2.jsonl").read_text())
    row["metadata"] = "{}"
    with pytest.raises(ValueError, match="func_name"):
        parse_problem(row)


def test_fixture_files_match_their_generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_lcb_fixtures", FIXTURES / "make_lcb_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, rows in module.problems().items():
        shipped = [parse_problem(json.loads(line)) for line in (LCB / name).read_text().splitlines()]
        assert shipped == [parse_problem(r) for r in rows], name


def test_prompt_mentions_starter_code_or_stdin():
    problems = {p.question_id: p for p in load_livecodebench(LCB)}
    assert "class Solution" in lcb_prompt(problems["fx-two-sum"])
    assert "standard input" in lcb_prompt(problems["fx-sum-pairs"])


def test_end_to_end_task_grading():
    task = LiveCodeBench.load(LCB, "release_v5", sandbox=SandboxConfig(timeout_s=6.0), workers=2)
    examples = list(task)
    good = [f"<think>plan</think>Here:\n```python\n{SOLUTIONS[e.id]}```\n" for e in examples]
    bad = [f"```python\n{WRONG[e.id]}```" for e in examples]
    none = ["<think>I ran out of tokens"] * len(examples)
    grades = task.grade_batch(good + bad + none, examples * 3)
    n = len(examples)
    assert [g.correct for g in grades[:n]] == [True] * n, [g.details for g in grades[:n]]
    assert [g.correct for g in grades[n:2 * n]] == [False] * n
    for g in grades[n:2 * n]:
        assert g.details["tests"][0]["status"] == "passed"  # the public test passes; a private one fails
        assert g.details["reason"] == "wrong_answer"
    assert all(g.details["reason"] == "no_code" for g in grades[2 * n:])
    assert task.summarize(examples * 3, grades)["accuracy"] == pytest.approx(1 / 3)


def test_task_needs_a_path():
    with pytest.raises(ValueError, match="code_generation_lite"):
        LiveCodeBench.load()
