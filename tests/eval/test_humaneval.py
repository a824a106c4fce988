"""HumanEval: every canonical solution passes in the sandbox, wrong and missing solutions fail."""

import pytest

from metastone.eval.humaneval import humaneval_program, load_humaneval
from metastone.sandbox.sandbox import SandboxConfig
from metastone.eval.tasks import HumanEval


@pytest.fixture(scope="module")
def task():
    with HumanEval.load(sandbox=SandboxConfig(timeout_s=10.0), workers=2) as t:
        yield t


def test_all_canonical_solutions_pass(task):
    examples = list(task)
    assert len(examples) == 164
    completions = [e.meta["problem"]["canonical_solution"] for e in examples]  # completion style, no fences
    grades = task.grade_batch(completions, examples)
    failed = [(e.id, g.details) for e, g in zip(examples, grades) if not g.correct]
    assert not failed


def test_whole_function_in_a_code_block_passes(task):
    example = task[0]
    problem = example.meta["problem"]
    whole = problem["prompt"] + problem["canonical_solution"]
    response = f"<think>easy</think>\n```python\n{whole}```\nDone."
    assert task.grade(response, example).correct


def test_wrong_and_missing_solutions_fail(task):
    example = task[0]  # has_close_elements
    wrong = "```python\ndef has_close_elements(numbers, threshold):\n    return False\n```"
    grade = task.grade(wrong, example)
    assert not grade.correct and grade.details["tests"][0]["status"] == "runtime_error"
    assert "AssertionError" in grade.details["tests"][0]["detail"]
    assert not task.grade("<think>never finished", example).correct


def test_program_assembly_keeps_prompt_helpers():
    problems = {p["task_id"]: p for p in load_humaneval()}
    p = problems["HumanEval/38"]  # decode_cyclic relies on encode_cyclic from the prompt
    program = humaneval_program(p, "def decode_cyclic(s: str):\n    return encode_cyclic(encode_cyclic(s))\n")
    assert "def encode_cyclic" in program and program.rstrip().endswith("check(decode_cyclic)")


def test_bad_file_is_named(tmp_path):
    bad = tmp_path / "he.jsonl"
    bad.write_text('{"task_id": "x"}\n')
    with pytest.raises(ValueError, match="he.jsonl:1"):
        load_humaneval(bad)
