"""C-Eval grading: the LAST ``ANSWER: X`` / ``答案：X`` after ``</think>``, and per-category accuracy.

The original took the FIRST match of ``(?i)(?:答案|answer)\\s*[:：]\\s*([A-Da-d])`` in the whole output,
which can land inside the thinking (``original_grading`` keeps that rule as an option). Here only the answer
region counts (``extract.answer_region``) and the last match wins. Accepted forms, ASCII or
full-width colon, any case of ``answer``: ``ANSWER: B``, ``答案：B``, ``Answer: (B)``, ``**ANSWER: B**``,
``答案: B.``. The letter must not be followed by another letter (``answer: because`` is no answer).

Categories are C-Eval's official four (hkust-nlp/ceval ``subject_mapping.json``): 20 STEM, 10 Social
Science, 11 Humanities and 11 Other subjects, 52 in all, plus the 8-subject "Hard" subset. The
category and overall averages are over questions (micro); per-subject numbers are also given.

``CEval`` is the task: it reads ``data/ceval.json`` and grades with the functions here.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

from metastone.eval.base import Example, Grade, Task
from metastone.eval.extract import answer_region

CHOICES = ("A", "B", "C", "D")

_ANSWER_RE = re.compile(
    r"(?:答案|answer)\s*[:：]\s*[*_]*\s*[(（\[]?\s*([A-Da-d])(?![A-Za-z])", re.IGNORECASE)

STEM = (
    "computer_network", "operating_system", "computer_architecture", "college_programming",
    "college_physics", "college_chemistry", "advanced_mathematics", "probability_and_statistics",
    "discrete_mathematics", "electrical_engineer", "metrology_engineer", "high_school_mathematics",
    "high_school_physics", "high_school_chemistry", "high_school_biology", "middle_school_mathematics",
    "middle_school_biology", "middle_school_physics", "middle_school_chemistry", "veterinary_medicine",
)
SOCIAL_SCIENCE = (
    "college_economics", "business_administration", "marxism", "mao_zedong_thought", "education_science",
    "teacher_qualification", "high_school_politics", "high_school_geography", "middle_school_politics",
    "middle_school_geography",
)
HUMANITIES = (
    "modern_chinese_history", "ideological_and_moral_cultivation", "logic", "law",
    "chinese_language_and_literature", "art_studies", "professional_tour_guide", "legal_professional",
    "high_school_chinese", "high_school_history", "middle_school_history",
)
OTHER = (
    "civil_servant", "sports_science", "plant_protection", "basic_medicine", "clinical_medicine",
    "urban_and_rural_planner", "accountant", "fire_engineer", "environmental_impact_assessment_engineer",
    "tax_accountant", "physician",
)
HARD = (
    "advanced_mathematics", "discrete_mathematics", "probability_and_statistics", "college_chemistry",
    "college_physics", "high_school_mathematics", "high_school_chemistry", "high_school_physics",
)
CATEGORIES: dict[str, tuple[str, ...]] = {
    "STEM": STEM, "Social Science": SOCIAL_SCIENCE, "Humanities": HUMANITIES, "Other": OTHER,
}
SUBJECT_CATEGORY: dict[str, str] = {s: cat for cat, subjects in CATEGORIES.items() for s in subjects}


def extract_choice(response: str) -> str | None:
    """The letter of the last ``ANSWER: X`` / ``答案：X`` in the answer region, upper-case, or None."""
    region = answer_region(response)
    if region is None:
        return None
    matches = _ANSWER_RE.findall(region)
    return matches[-1].upper() if matches else None


def check_gold(gold: str) -> str:
    """The gold letter, validated (``ValueError`` naming the expected form otherwise)."""
    if not isinstance(gold, str) or gold.strip().upper() not in CHOICES:
        raise ValueError(f"C-Eval gold answer must be one of A, B, C, D; got {gold!r}.")
    return gold.strip().upper()


def grade_choice(response: str, gold: str) -> tuple[bool, str | None]:
    """``(correct, extracted_letter)`` for one response."""
    gold = check_gold(gold)
    choice = extract_choice(response)
    return choice == gold, choice


def subject_category(subject: str) -> str:
    """The category of a C-Eval subject (``ValueError`` for an unknown subject)."""
    try:
        return SUBJECT_CATEGORY[subject]
    except KeyError:
        raise ValueError(f"unknown C-Eval subject {subject!r}; expected one of the 52 subjects, "
                         f"e.g. {', '.join(sorted(SUBJECT_CATEGORY)[:3])}.") from None


def category_report(subjects: Sequence[str], correct: Iterable[bool | float]) -> dict:
    """Accuracy by subject, category, Hard subset and overall (micro averages over questions).

    ``correct`` may hold booleans or per-question scores in [0, 1] (e.g. a mean over samples).
    Returns ``{"accuracy", "n", "categories": {cat: {"accuracy", "n"}}, "hard": {"accuracy", "n"},
    "subjects": {sub: {"accuracy", "n", "category"}}}`` (top level: all questions); empty
    categories are left out and ``hard`` is None when no Hard subject is present.
    """
    correct = [float(c) for c in correct]
    if len(correct) != len(subjects):
        raise ValueError(f"category_report: {len(subjects)} subjects but {len(correct)} results.")
    by_subject: dict[str, list[float]] = defaultdict(list)
    for subject, value in zip(subjects, correct):
        subject_category(subject)
        by_subject[subject].append(value)

    def summary(values: list[float]) -> dict:
        return {"accuracy": sum(values) / len(values), "n": len(values)}

    categories = {}
    for cat, members in CATEGORIES.items():
        values = [v for s in members for v in by_subject.get(s, [])]
        if values:
            categories[cat] = summary(values)
    hard = [v for s in HARD for v in by_subject.get(s, [])]
    return {
        **(summary(correct) if correct else {"accuracy": 0.0, "n": 0}),
        "categories": categories,
        "hard": summary(hard) if hard else None,
        "subjects": {s: {**summary(v), "category": SUBJECT_CATEGORY[s]} for s, v in sorted(by_subject.items())},
    }


class CEval(Task):
    """C-Eval val: rows ``{"model_input", "answer": "A".."D", "sub", "id"}``; see ``ceval_grader``."""

    name = "ceval"
    default_file = "ceval.json"

    @classmethod
    def _read(cls, path: Path, **options) -> list[Example]:
        rows = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of C-Eval rows.")
        examples = []
        for i, row in enumerate(rows):
            where = f"{path}[{i}]"
            if not isinstance(row, dict) or not {"model_input", "answer", "sub", "id"} <= row.keys():
                raise ValueError(f"{where}: expected {{\"model_input\", \"answer\", \"sub\", \"id\"}}.")
            try:
                answer = check_gold(row["answer"])
                subject_category(row["sub"])
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
            examples.append(Example(f"ceval-{row['sub']}-{row['id']}", row["model_input"], answer, {"subject": row["sub"]}))
        return examples

    def grade(self, response: str, example: Example) -> Grade:
        correct, choice = grade_choice(response, example.answer)
        return Grade(correct, choice)

    def answer_keys(self, responses) -> list[str | None]:
        return [extract_choice(r) for r in responses]

    def summarize(self, examples, grades) -> dict:
        return category_report([e.meta["subject"] for e in examples], [g.correct for g in grades])
