"""The CPU demo task: two-digit sums and one-step word problems, generated offline with a fixed seed.

Sized for the demo model (SmolLM2-135M-Instruct as Qwen2; vllm-serving.md, last section): with a
plain few-shot completion prompt ``Q: ... A: ... The answer is N.`` it solves about 40% of
two-digit sums and one-step word problems per draft and about 70-80% within 8 drafts, the gap a
verifier can close. Its drafts often ramble on after the answer, so the parser takes the FIRST
``The answer is N``.

Kinds: ``sum`` ("What is 23 + 45?", both terms 10..99), ``word_add`` (has a, buys b more),
``word_sub`` (has a, gives away b < a) and ``word_total`` (a here and b there), word terms 2..20.
Each example: ``{"id", "kind", "question", "answer": int, "solution"}``; ``solution`` is the
few-shot style worked answer ("23 + 45 = 68. The answer is 68."), usable as SFT data.

Files (``data/demo/{train,test}.jsonl``) are made by::

    python -m metastone.eval.demo_task --out data/demo --seed 0 --train 2000 --test 200

The generator uses only ``random.Random(seed)``, so the same command rewrites identical files
(a test checks this); questions are unique across both splits. ``Demo`` is the task that reads them.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from metastone.eval.base import DATA_DIR, Example, Grade, Task
from metastone.eval.extract import answer_region
from metastone.records import read_jsonl

KINDS = ("sum", "word_add", "word_sub", "word_total")
NAMES = (("Sara", "she"), ("Tom", "he"), ("Ana", "she"), ("Ben", "he"), ("Lina", "she"), ("Omar", "he"),
         ("Mia", "she"), ("Leo", "he"), ("Nora", "she"), ("Sam", "he"))
ITEMS = ("apples", "pencils", "books", "marbles", "stickers", "cookies", "balloons", "cards", "shells", "coins")
PLACES = (("in a box", "on the table"), ("in the red bag", "in the blue bag"), ("on the shelf", "on the floor"))

FEW_SHOT = (
    "Q: What is 12 + 7?\nA: 12 + 7 = 19. The answer is 19.\n\n"
    "Q: Sara has 5 pencils. She buys 3 more. How many pencils does Sara have now?\n"
    "A: 5 + 3 = 8. The answer is 8.\n\n"
)
# A worked answer is one line; the few-shot examples end with a blank line, so a draft ends there too.
# Without "\n\n" drafts ramble on for the whole token budget after answering (3x the tokens).
STOP = ("\n\n", "\nQ:")

_ANSWER_RE = re.compile(r"the answer is\s*:?\s*\$?\s*(-?\d[\d,]*)", re.IGNORECASE)


def make_example(rng: random.Random, kind: str) -> dict:
    """One problem of ``kind`` drawn from ``rng``."""
    name, pronoun = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    if kind == "sum":
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        question, answer, work = f"What is {a} + {b}?", a + b, f"{a} + {b} = {a + b}"
    elif kind == "word_add":
        a, b = rng.randint(2, 20), rng.randint(2, 20)
        question = f"{name} has {a} {item}. {pronoun.capitalize()} buys {b} more. How many {item} does {name} have now?"
        answer, work = a + b, f"{a} + {b} = {a + b}"
    elif kind == "word_sub":
        a = rng.randint(3, 20)
        b = rng.randint(1, a - 1)
        question = f"{name} has {a} {item}. {pronoun.capitalize()} gives {b} to a friend. How many {item} does {name} have left?"
        answer, work = a - b, f"{a} - {b} = {a - b}"
    elif kind == "word_total":
        a, b = rng.randint(2, 20), rng.randint(2, 20)
        here, there = rng.choice(PLACES)
        question = f"There are {a} {item} {here} and {b} {item} {there}. How many {item} are there in total?"
        answer, work = a + b, f"{a} + {b} = {a + b}"
    else:
        raise ValueError(f"unknown demo kind {kind!r}; expected one of {KINDS}.")
    return {"kind": kind, "question": question, "answer": answer, "solution": f"{work}. The answer is {answer}."}


def generate(n_train: int, n_test: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Unique problems, kinds in turn, shuffled and split into (train, test)."""
    if n_train < 0 or n_test < 1:
        raise ValueError(f"need n_train >= 0 and n_test >= 1, got {n_train} and {n_test}.")
    rng = random.Random(seed)
    total, rows = n_train + n_test, []
    seen = set(re.findall(r"Q: (.*)\n", FEW_SHOT))  # never ask a few-shot question
    attempts = 0
    while len(rows) < total:
        attempts += 1
        if attempts > 50 * total:
            raise ValueError(f"could not draw {total} unique problems; ask for fewer.")
        row = make_example(rng, KINDS[len(rows) % len(KINDS)])
        if row["question"] not in seen:
            seen.add(row["question"])
            rows.append(row)
    rng.shuffle(rows)
    test, train = rows[:n_test], rows[n_test:]
    for split, part in (("train", train), ("test", test)):
        for i, row in enumerate(part):
            row["id"] = f"demo-{split}-{i:05d}"
    order = ("id", "kind", "question", "answer", "solution")
    return [{k: r[k] for k in order} for r in train], [{k: r[k] for k in order} for r in test]


def demo_prompt(question: str) -> str:
    """The few-shot completion prompt (no chat template); generation should stop at ``STOP``."""
    return f"{FEW_SHOT}Q: {question}\nA:"


def parse_demo_answer(response: str) -> int | None:
    """The number after the FIRST "The answer is" (after ``</think>`` if there is one), or None."""
    region = answer_region(response)
    if region is None:
        return None
    match = _ANSWER_RE.search(region)
    if not match:
        return None
    return int(match.group(1).replace(",", ""))


def write_jsonl(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the demo task's train/test files.")
    parser.add_argument("--out", default="data/demo", help="output folder (train.jsonl, test.jsonl)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=2000, help="number of training problems")
    parser.add_argument("--test", type=int, default=200, help="number of test problems")
    args = parser.parse_args(argv)
    train, test = generate(args.train, args.test, args.seed)
    out = Path(args.out)
    write_jsonl(train, out / "train.jsonl")
    write_jsonl(test, out / "test.jsonl")
    print(f"wrote {len(train)} train and {len(test)} test problems to {out}")
    return 0


class Demo(Task):
    """The CPU demo task (``demo_task``): few-shot prompt, first "The answer is N" graded."""

    name = "demo"
    default_file = "demo/test.jsonl"
    stop = STOP
    use_chat_template = False

    @classmethod
    def load(cls, path=None, split: str = "test"):
        if path is None:
            if split not in ("train", "test"):
                raise ValueError(f"demo split must be 'train' or 'test', got {split!r}.")
            path = DATA_DIR / "demo" / f"{split}.jsonl"
        return super().load(path)

    @classmethod
    def _read(cls, path: Path, **options) -> list[Example]:
        examples = []
        for i, row in enumerate(row for _, row in read_jsonl(path, partial_tail=False)):
            if not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), int) or "id" not in row:
                raise ValueError(f"{path}:{i + 1}: expected {{\"id\", \"question\": str, \"answer\": int}}.")
            examples.append(Example(str(row["id"]), demo_prompt(row["question"]), row["answer"],
                                    {"kind": row.get("kind"), "question": row["question"]}))
        return examples

    def grade(self, response: str, example: Example) -> Grade:
        value = parse_demo_answer(response)
        return Grade(value == example.answer, None if value is None else str(value))

    def answer_keys(self, responses) -> list[str | None]:
        values = [parse_demo_answer(r) for r in responses]
        return [None if v is None else str(v) for v in values]


if __name__ == "__main__":
    raise SystemExit(main())
