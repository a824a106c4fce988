"""``python -m metastone.data.prepare``: problem files -> verl RL parquet."""

from __future__ import annotations

import json

import pandas as pd
import pytest

pytestmark = pytest.mark.train


def test_jsonl_to_verl_parquet_with_validation_split(tmp_path):
    from metastone.cli import main
    from metastone.data.prepare import INSTRUCTION

    src = tmp_path / "p.jsonl"
    src.write_text("\n".join(json.dumps({"problem": f"What is {i}+1?", "answer": i + 1}) for i in range(10)))
    assert main(["prepare-data", "--input", str(src), "--output", str(tmp_path / "t.parquet"), "--val-output",
                 str(tmp_path / "v.parquet"), "--val-size", "3", "--data-source", "toy"]) == 0
    train, val = pd.read_parquet(tmp_path / "t.parquet"), pd.read_parquet(tmp_path / "v.parquet")
    assert (len(train), len(val)) == (7, 3)
    row = train.iloc[0]
    assert row.data_source == "toy" and row.ability == "math"
    assert row.reward_model["ground_truth"] == str(int(row.extra_info["question"].split()[2].split("+")[0]) + 1)
    assert row.prompt[0]["role"] == "user" and row.prompt[0]["content"].endswith(INSTRUCTION)
    assert set(train.extra_info.map(lambda e: e["question"])).isdisjoint(val.extra_info.map(lambda e: e["question"]))


def test_verl_style_rows_and_existing_box_instruction(tmp_path):
    from metastone.data.prepare import read_records, to_verl_rows

    rows = to_verl_rows(
        [{"prompt": [{"role": "user", "content": "Q? Put it in \\boxed{}."}], "reward_model": {"ground_truth": {"target": "7"}}}],
        data_source="x", split="train",
    )
    assert rows[0]["prompt"][0]["content"] == "Q? Put it in \\boxed{}." and rows[0]["reward_model"]["ground_truth"] == "7"
    with pytest.raises(ValueError, match="no question or answer"):
        to_verl_rows([{"problem": "Q"}], data_source="x", split="train")
    with pytest.raises(ValueError, match="unsupported file type"):
        (tmp_path / "a.txt").write_text("x")
        read_records(tmp_path / "a.txt")


def test_jsonl_torn_line_is_an_error_naming_file_and_line(tmp_path):
    from metastone.data.prepare import read_records

    src = tmp_path / "p.jsonl"
    src.write_text('{"problem": "Q1", "answer": 1}\n\n{"problem": "Q2", "ans')  # task data: even the last line
    with pytest.raises(ValueError, match=r"p\.jsonl:3: .*fix or remove that line"):
        read_records(src)
    src.write_text('{"problem": "Q1", "answer": 1}\n\n{"problem": "Q2", "answer": 2}\n')
    assert [r["answer"] for r in read_records(src)] == [1, 2]


def test_prepared_rows_grade_with_the_training_reward(tmp_path):
    from metastone.data.prepare import to_verl_rows
    from metastone.train.reward import compute_score

    row = to_verl_rows([{"question": "1/2?", "answer": "\\frac{1}{2}"}], data_source="m", split="train")[0]
    assert compute_score(row["data_source"], "</think>\\boxed{0.5}", row["reward_model"]["ground_truth"])["score"] == 1.0
