"""LiveCodeBench ``code_generation_lite`` release files: load, decode the tests, filter by contest date.

The problems cannot be downloaded here, so this reads a local copy of the HF dataset repo
``livecodebench/code_generation_lite``: a folder with ``test.jsonl``, ``test2.jsonl``, ... ``test6.jsonl``
(or a single ``.jsonl`` / ``.json`` file). Versions, as the dataset's loading script defines them:
``release_vN`` is the first N files (``release_v5`` = test.jsonl .. test5.jsonl, 880 problems),
``release_latest`` every file present, ``vN`` only the N-th file.

Row fields: ``question_title, question_content, platform, question_id, contest_id, contest_date``
(ISO), ``starter_code, difficulty``, ``public_test_cases`` (JSON list of ``{input, output,
testtype}``, testtype "stdin" or "functional"), ``private_test_cases`` (the same JSON, or
``base64(zlib(pickle(json_string)))``) and ``metadata`` (JSON; ``func_name`` for functional tests).
The pickle layer is read with an unpickler that refuses every class, so only plain strings load
(a crafted file cannot run code). Any malformed row raises ``ValueError`` naming file, line and field.

Date window: ``release_v5`` covers contests from 2023-05-01 to 2025-01-31; ``start_date`` /
``end_date`` (inclusive, ``YYYY-MM-DD``) narrow or replace it, e.g. the common 2024-08-01 ..
2025-02-01 slice used by DeepSeek-R1-style reports.

``LiveCodeBench`` is the task built on ``load_livecodebench`` and ``lcb_prompt``.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import pickle
import zlib
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from metastone.eval.base import Example
from metastone.eval.code_grader import CodeTask, CodeTest
from metastone.records import read_jsonl
from metastone.sandbox.sandbox import SandboxConfig

logger = logging.getLogger(__name__)

RELEASE_FILES = ("test.jsonl", "test2.jsonl", "test3.jsonl", "test4.jsonl", "test5.jsonl", "test6.jsonl")
# Contest-date windows of the releases (the v5 one is what the paper's "LiveCodeBench v5" refers to).
RELEASE_WINDOWS = {"release_v5": (date(2023, 5, 1), date(2025, 1, 31))}
REQUIRED_FIELDS = ("question_id", "question_content", "contest_date", "public_test_cases", "private_test_cases")


@dataclass(frozen=True)
class LCBProblem:
    """One LiveCodeBench problem; ``tests`` = public then private tests."""

    question_id: str
    question_title: str
    question_content: str
    platform: str
    contest_id: str
    contest_date: date
    starter_code: str
    difficulty: str
    fn_name: str | None
    public_tests: tuple[CodeTest, ...]
    private_tests: tuple[CodeTest, ...]

    @property
    def tests(self) -> tuple[CodeTest, ...]:
        return self.public_tests + self.private_tests


class _StringsOnly(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: test cases are plain strings")


def decode_test_cases(value, where: str = "private_test_cases") -> list[dict]:
    """Test cases from plain JSON or from ``base64(zlib(pickle(json_string)))``."""
    if isinstance(value, list):
        return value
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a JSON string or its base64(zlib(pickle())) encoding, got {type(value).__name__}.")
    try:
        cases = json.loads(value)
    except json.JSONDecodeError:
        try:
            raw = zlib.decompress(base64.b64decode(value.encode("ascii"), validate=True))
            inner = _StringsOnly(io.BytesIO(raw)).load()
            cases = json.loads(inner) if isinstance(inner, (str, bytes)) else inner
        except Exception as exc:
            raise ValueError(f"{where}: neither JSON nor base64(zlib(pickle(json))): {type(exc).__name__}: {exc}") from None
    if not isinstance(cases, list):
        raise ValueError(f"{where}: expected a list of {{input, output, testtype}} objects, got {type(cases).__name__}.")
    return cases


def encode_test_cases(cases: list[dict]) -> str:
    """The compressed encoding LiveCodeBench uses for large private tests (for fixtures and tests)."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(cases)))).decode("ascii")


def _tests(cases: list[dict], fn_name: str | None, where: str) -> tuple[CodeTest, ...]:
    out = []
    for k, case in enumerate(cases):
        if not isinstance(case, dict) or not {"input", "output", "testtype"} <= case.keys():
            raise ValueError(f"{where}[{k}]: expected an object with input, output and testtype, got {str(case)[:100]!r}.")
        kind = case["testtype"]
        if kind not in ("stdin", "functional"):
            raise ValueError(f"{where}[{k}].testtype: expected 'stdin' or 'functional', got {kind!r}.")
        if kind == "functional" and not fn_name:
            raise ValueError(f"{where}[{k}]: a functional test needs metadata.func_name.")
        try:
            out.append(CodeTest(kind, str(case["input"]), str(case["output"]), fn_name if kind == "functional" else None))
        except ValueError as exc:
            raise ValueError(f"{where}[{k}]: {exc}") from None
    return tuple(out)


def _parse_date(value, where: str) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).date()
    except ValueError:
        raise ValueError(f"{where}.contest_date: expected an ISO date such as '2024-08-03T00:00:00', got {value!r}.") from None


def parse_problem(row: dict, where: str = "row") -> LCBProblem:
    """One ``code_generation_lite`` row -> ``LCBProblem`` (``ValueError`` naming ``where`` and the field)."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}.")
    missing = [k for k in REQUIRED_FIELDS if k not in row]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)} (code_generation_lite format).")
    metadata = row.get("metadata") or "{}"
    try:
        metadata = json.loads(metadata) if isinstance(metadata, str) else dict(metadata)
    except (json.JSONDecodeError, TypeError, ValueError):
        raise ValueError(f"{where}.metadata: expected a JSON object string, got {str(row.get('metadata'))[:100]!r}.") from None
    fn_name = metadata.get("func_name") or None
    public = decode_test_cases(row["public_test_cases"], f"{where}.public_test_cases")
    private = decode_test_cases(row["private_test_cases"], f"{where}.private_test_cases")
    problem = LCBProblem(
        question_id=str(row["question_id"]),
        question_title=str(row.get("question_title", "")),
        question_content=str(row["question_content"]),
        platform=str(row.get("platform", "")),
        contest_id=str(row.get("contest_id", "")),
        contest_date=_parse_date(row["contest_date"], where),
        starter_code=str(row.get("starter_code") or ""),
        difficulty=str(row.get("difficulty", "")),
        fn_name=fn_name,
        public_tests=_tests(public, fn_name, f"{where}.public_test_cases"),
        private_tests=_tests(private, fn_name, f"{where}.private_test_cases"),
    )
    if not problem.tests:
        raise ValueError(f"{where}: the problem has no public or private tests.")
    return problem


def release_files(root: Path, version: str) -> list[Path]:
    """The files of ``version`` under the folder ``root`` (see module doc); missing ones are errors."""
    if version == "release_latest":
        names = [n for n in RELEASE_FILES if (root / n).exists()]
    elif version.startswith("release_v") and version[9:].isdigit() and 1 <= int(version[9:]) <= len(RELEASE_FILES):
        names = list(RELEASE_FILES[: int(version[9:])])
    elif version.startswith("v") and version[1:].isdigit() and 1 <= int(version[1:]) <= len(RELEASE_FILES):
        names = [RELEASE_FILES[int(version[1:]) - 1]]
    else:
        raise ValueError(f"unknown LiveCodeBench version {version!r}; expected release_v1..release_v6, "
                         "release_latest or v1..v6.")
    missing = [n for n in names if not (root / n).exists()]
    if missing or not names:
        raise ValueError(f"{root}: version {version} needs {', '.join(missing or RELEASE_FILES)}; "
                         "point --path at a local copy of livecodebench/code_generation_lite.")
    return [root / n for n in names]


def _read_rows(path: Path):
    if path.suffix == ".json":
        rows = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of problems.")
        yield from ((f"{path}[{i}]", row) for i, row in enumerate(rows))
        return
    for n, row in read_jsonl(path, partial_tail=False):
        yield f"{path}:{n}", row


def _as_date(value, name: str) -> date | None:
    if value is None or isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"{name}: expected YYYY-MM-DD, got {value!r}.") from None


def load_livecodebench(path: str | Path, version: str = "release_v5", start_date=None, end_date=None) -> list[LCBProblem]:
    """Problems of ``version`` under ``path`` with ``start_date <= contest_date <= end_date``.

    Without dates the release's own window applies (``RELEASE_WINDOWS``; none for other versions).
    ``path`` may also be one ``.jsonl``/``.json`` file, read in full (the version's date window
    still applies).
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"LiveCodeBench data {root}: no such file or folder.")
    files = [root] if root.is_file() else release_files(root, version)
    default_start, default_end = RELEASE_WINDOWS.get(version, (None, None))
    start = _as_date(start_date, "start_date") or default_start
    end = _as_date(end_date, "end_date") or default_end
    if start and end and start > end:
        raise ValueError(f"start_date {start} is after end_date {end}.")
    problems, seen = [], set()
    for file in files:
        for where, row in _read_rows(file):
            problem = parse_problem(row, where)
            if problem.question_id in seen:
                raise ValueError(f"{where}: duplicate question_id {problem.question_id!r}.")
            seen.add(problem.question_id)
            if (start and problem.contest_date < start) or (end and problem.contest_date > end):
                continue
            problems.append(problem)
    logger.info("LiveCodeBench %s: %d problems in %s..%s from %d file(s)", version, len(problems), start, end, len(files))
    return problems


def lcb_prompt(problem: LCBProblem) -> str:
    """The user prompt: the statement, then the format the program must take."""
    parts = [problem.question_content.strip(), ""]
    if problem.starter_code.strip():
        parts += ["Complete the following starter code. Return the whole solution in one ```python``` code block.",
                  "```python", problem.starter_code.rstrip(), "```"]
    else:
        parts += ["Write a Python program that reads the input from standard input and writes the answer to "
                  "standard output. Return the whole program in one ```python``` code block."]
    return "\n".join(parts)


class LiveCodeBench(CodeTask):
    """LiveCodeBench code generation from a local ``code_generation_lite`` copy (no bundled data)."""

    name = "livecodebench"

    @classmethod
    def load(cls, path=None, version: str = "release_v5", start_date=None, end_date=None,
             sandbox: SandboxConfig | None = None, workers: int | None = None):
        if path is None:
            raise ValueError("livecodebench needs path= a local copy of livecodebench/code_generation_lite "
                             "(a folder with test.jsonl .. test6.jsonl); it cannot be downloaded here.")
        problems = load_livecodebench(path, version, start_date, end_date)
        examples = [Example(p.question_id, lcb_prompt(p), None,
                            {"problem": p, "contest_date": p.contest_date.isoformat(), "difficulty": p.difficulty})
                    for p in problems]
        return cls(examples, str(path), sandbox, workers)

    def _jobs(self, responses, examples):
        return [(self.code_of(r), e.meta["problem"].tests) for r, e in zip(responses, examples)]
