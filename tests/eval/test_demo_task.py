"""Demo task: reproducible files, the first "The answer is N", grading."""

import json
from pathlib import Path

import pytest

from metastone.eval.demo_task import FEW_SHOT, demo_prompt, generate, main, parse_demo_answer
from metastone.eval.tasks import Demo

DATA = Path(__file__).resolve().parents[2] / "data" / "demo"


def test_shipped_files_are_the_generator_output(tmp_path):
    main(["--out", str(tmp_path), "--seed", "0", "--train", "2000", "--test", "200"])
    for split in ("train", "test"):
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (DATA / f"{split}.jsonl").read_bytes()


def test_splits_are_disjoint_and_well_formed():
    train, test = generate(300, 50, seed=3)
    questions = [r["question"] for r in train + test]
    assert len(set(questions)) == len(questions) == 350
    assert not any(q in FEW_SHOT for q in questions)
    for row in train + test:
        assert row["solution"].endswith(f"The answer is {row['answer']}.")
        assert parse_demo_answer(row["solution"]) == row["answer"]
    assert generate(300, 50, seed=3) == (train, test) and generate(300, 50, seed=4) != (train, test)


@pytest.mark.parametrize("text,value", [
    (" 12 + 7 = 19. The answer is 19.\n\nQ: What is 1 + 1?\nA: The answer is 2.", 19),  # first, not last
    ("the answer is 1,234.", 1234),
    ("The answer is: -3", -3),
    ("I think 19.", None),
    ("<think>The answer is 5</think>The answer is 6.", 6),
])
def test_parse_first_answer(text, value):
    assert parse_demo_answer(text) == value


def test_task_prompt_and_grading():
    task = Demo.load()
    assert len(task) == 200 and Demo.load(split="train").examples[0].id.startswith("demo-train-")
    ex = task[0]
    assert task.prompt(ex) == demo_prompt(ex.meta["question"]) and task.prompt(ex).endswith("\nA:")
    assert task.stop == ("\n\n", "\nQ:")
    right = f" {ex.answer} items. The answer is {ex.answer}. The answer is {ex.answer + 1}."
    assert task.grade(right, ex).correct and not task.grade("The answer is 9999.", ex).correct
    assert task.answer_keys([right, "no idea"]) == [str(ex.answer), None]
    with pytest.raises(ValueError, match="split"):
        Demo.load(split="dev")


def test_bad_rows_are_named(tmp_path):
    bad = tmp_path / "d.jsonl"
    bad.write_text(json.dumps({"id": "x", "question": "q", "answer": "5"}) + "\n")
    with pytest.raises(ValueError, match="d.jsonl:1"):
        Demo.load(bad)
