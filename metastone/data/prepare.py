"""``python -m metastone.data.prepare``: math problems (jsonl/json/csv/parquet) -> verl RL parquet.

verl's RL dataset reads one row per prompt with ``prompt`` (chat messages), ``data_source``,
``reward_model.ground_truth`` (what ``metastone.train.reward.compute_score`` grades against),
``ability`` and ``extra_info``. The original repo's ``data/train.parquet`` is a broken blob, so the
training data must be rebuilt from public problem sets; this turns any list of
(question, answer) records into that format, appending the paper's instruction ("Please reason
step by step, and put your final answer within \\boxed{}.") unless the question already asks for a box.

    python -m metastone.data.prepare --input deepscaler.json --output data/metastone/train.parquet \\
        --val-output data/metastone/val.parquet --val-size 64
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
from pathlib import Path


from metastone.records import read_jsonl

logger = logging.getLogger(__name__)

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
QUESTION_KEYS = ("problem", "question", "prompt", "query")
ANSWER_KEYS = ("answer", "ground_truth", "final_answer", "target", "solution")


def read_records(path: str | Path) -> list[dict]:
    """Rows of a ``.jsonl``, ``.json`` (list of objects), ``.csv`` or ``.parquet`` file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--input {path}: no such file.")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return [row for _, row in read_jsonl(path, hint="; fix or remove that line.", partial_tail=False)]
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of objects, got {type(data).__name__}.")
        return data
    if suffix in (".csv", ".parquet"):
        import pandas as pd  # here, not at import: `metastone --help` and every other command work without it

        return (pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)).to_dict("records")
    raise ValueError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .json, .csv or .parquet.")


def _question(row: dict, key: str | None) -> str | None:
    keys = (key,) if key else QUESTION_KEYS
    for k in keys:
        value = row.get(k)
        if value is None:
            continue
        if isinstance(value, str):
            return value
        messages = list(value) if not isinstance(value, dict) else [value]
        users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role", "user") == "user"]
        if users:
            return users[-1]
    return None


def _answer(row: dict, key: str | None) -> str | None:
    reward_model = row.get("reward_model")
    candidates = [row.get(key)] if key else [row.get(k) for k in ANSWER_KEYS]
    if not key and isinstance(reward_model, dict):
        candidates.insert(0, reward_model.get("ground_truth"))
    for value in candidates:
        if isinstance(value, dict):
            value = value.get("target", value.get("answer"))
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        text = str(value).strip()
        if text:
            return text
    return None


def build_prompt(question: str, instruction: str = INSTRUCTION) -> str:
    question = question.strip()
    if "\\boxed" in question or not instruction:
        return question
    return f"{question}\n{instruction}"


def to_verl_rows(
    records: list[dict], *, data_source: str, split: str, question_key: str | None = None,
    answer_key: str | None = None, instruction: str = INSTRUCTION,
) -> list[dict]:
    """verl rows; records without a question or answer are an error naming the first few."""
    rows, missing = [], []
    for i, record in enumerate(records):
        question, answer = _question(record, question_key), _answer(record, answer_key)
        if not question or answer is None:
            missing.append(i)
            continue
        rows.append({
            "data_source": str(record.get("data_source") or data_source),
            "prompt": [{"role": "user", "content": build_prompt(question, instruction)}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": answer},
            "extra_info": {"index": len(rows), "split": split, "question": question.strip()},
        })
    if missing:
        raise ValueError(
            f"{len(missing)} record(s) have no question or answer (first: {missing[:5]}); question keys tried: "
            f"{[question_key] if question_key else list(QUESTION_KEYS)}, answer keys: "
            f"{[answer_key] if answer_key else list(ANSWER_KEYS)}. Pass --question-key / --answer-key."
        )
    return rows


# The agent loop for completion prompts (metastone.train.completion_loop), named here so that writing
# data needs no verl import.
COMPLETION_AGENT = "metastone_completion"


def demo_rows(split: str, input_file: str | None = None, limit: int | None = None) -> list[dict]:
    """verl rows for the CPU demo task, with the evaluation's own prompts and stop strings.

    The demo is a few-shot completion task (``metastone.eval.tasks.Demo``: no chat template, drafts
    end at a blank line), so each row names the completion agent loop and carries the stop strings.
    """
    from metastone.eval.demo_task import Demo  # the demo task alone: no other task, grader or sandbox

    task = Demo.load(input_file, split=split) if input_file else Demo.load(split=split)
    examples = task.examples[:limit] if limit is not None else task.examples
    return [{
        "data_source": "demo",
        "prompt": [{"role": "user", "content": ex.prompt}],
        "agent_name": COMPLETION_AGENT,
        "stop": list(Demo.stop),
        "ability": "arithmetic",
        "reward_model": {"style": "rule", "ground_truth": str(ex.answer)},
        "extra_info": {"index": i, "split": split, "question_id": ex.id},
    } for i, ex in enumerate(examples)]


def write_parquet(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path, index=False)
    return path


def prepare(
    output: str | Path,
    inputs: list[str] | None = None,
    *,
    task: str | None = None,
    val_output: str | Path | None = None,
    val_size: int = 0,
    data_source: str = "math",
    question_key: str | None = None,
    answer_key: str | None = None,
    instruction: str = INSTRUCTION,
    limit: int | None = None,
    seed: int = 0,
) -> None:
    """Write the training parquet (and a validation parquet split off the input, ``val_size`` rows,
    shuffled by ``seed``) from problem files, or from a bundled task's rows (``task="demo"``)."""
    if task == "demo":
        if inputs and len(inputs) > 1:
            raise ValueError("--task demo takes at most one --input file (in the demo task's JSONL format).")
        rows = demo_rows("train", inputs[0] if inputs else None, limit)
        write_parquet(rows, output)
        logger.info("wrote %d demo rows to %s", len(rows), output)
        if val_output:
            val = demo_rows("test", None, val_size or 8)
            write_parquet(val, val_output)
            logger.info("wrote %d demo test rows to %s", len(val), val_output)
        return
    if not inputs:
        raise ValueError("--input is required (the problems file(s)), unless --task names a bundled task.")
    records = [r for path in inputs for r in read_records(path)]
    if limit is not None:
        records = records[:limit]
    if val_size and not val_output:
        raise ValueError("--val-size needs --val-output (where to write the validation rows).")
    if val_size >= len(records) > 0:
        raise ValueError(f"--val-size={val_size} leaves no training rows out of {len(records)}.")
    order = list(range(len(records)))
    val_idx = set()
    if val_output and val_size:
        random.Random(seed).shuffle(order)
        val_idx = set(order[:val_size])
    common = dict(data_source=data_source, question_key=question_key, answer_key=answer_key,
                  instruction=instruction)
    train = to_verl_rows([r for i, r in enumerate(records) if i not in val_idx], split="train", **common)
    write_parquet(train, output)
    logger.info("wrote %d training rows to %s", len(train), output)
    if val_output:
        source = [r for i, r in enumerate(records) if i in val_idx] if val_idx else records
        val = to_verl_rows(source, split="test", **common)
        write_parquet(val, val_output)
        logger.info("wrote %d validation rows to %s", len(val), val_output)


if __name__ == "__main__":  # ``python -m metastone.data.prepare``: the same as ``metastone prepare-data``
    from metastone.cli import main

    sys.exit(main(["prepare-data", *sys.argv[1:]]))
