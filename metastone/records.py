"""Draft records: one JSON line per draft, keyed by (task, question id, draft index), append-only.

Written by the harness (Best-of-N drafts and searched traces, which ``metastone train-sprm`` samples
through too) and read by the metrics, the fitting and the demo. A record (``DraftRecord``) holds
everything needed to grade, select and audit a draft without the models::

    {"key": "aime24/0/3", "task": "aime24", "question_id": "0", "draft": 3, "seed": 1234,
     "prompt": "...", "prompt_len": 87, "response": "...", "token_ids": [...], "finish_reason": "stop",
     "score": 0.83, "step_scores": [...], "score_positions": [...], "answer": 204,
     "timings": {"generate_s": 1.2, "score_s": 0.05}, "run_id": "..."}

``token_ids`` are the response's ids as the policy returned them; ``score_positions`` index the
full sequence (prompt + response). Appends are atomic at line level (one ``write`` on an
``O_APPEND`` descriptor, then ``fsync``); a crash can only leave a partial last line, which
``RecordStore`` cuts off before appending again, so a resumed run never glues records together.
``read_jsonl`` is the one JSONL reader (records, results, labels, task data): an unfinished last line
that does not parse is an interrupted write and is skipped with a warning, any other bad line is an error.
"""

from __future__ import annotations

import glob
import gzip
import json
import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Iterator

logger = logging.getLogger(__name__)


def record_key(task: str, question_id: str, draft: int) -> str:
    return f"{task}/{question_id}/{draft}"


@dataclass
class DraftRecord:
    """One draft, or one searched trace (``--strategy beam|mcts``), as written: fields in file order."""

    key: str
    task: str
    question_id: str
    draft: int
    seed: int  # the draft's own seed (request_seed); a searched trace's: the run seed
    prompt: str
    prompt_len: int
    response: str
    token_ids: list[int]  # the response's ids as the policy returned them
    finish_reason: str
    score: float | None  # None: not scored (train-sprm's sampling stage)
    step_scores: list[float]
    score_positions: list[int]  # indices into prompt + response
    answer: Any = None  # the gold answer, for grading without the task data
    # searched traces only; a Best-of-N record has none of these keys
    strategy: str | None = None
    node: str | None = None
    finished: bool | None = None
    depth: int | None = None
    search: dict | None = None
    candidates: list[dict] | None = None
    timings: dict = field(default_factory=dict)
    run_id: str = ""

    SEARCH_FIELDS = ("strategy", "node", "finished", "depth", "search", "candidates")

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.strategy is None:
            for name in self.SEARCH_FIELDS:
                del out[name]
        return out


def read_jsonl(path: str | Path, *, hint: str = "", partial_tail: bool = True) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line (``.gz`` files too). An unfinished last line (no newline
    after it) that does not parse is skipped with a warning when ``partial_tail``: the file is appended to
    line by line and a write was interrupted. Any other bad line is an error naming the file and line,
    then ``hint``. Task data is read with ``partial_tail=False``: nothing appends to it."""
    path = Path(path)
    with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            if partial_tail and number == len(lines):
                logger.warning("%s:%d: ignoring a partial last line (an interrupted write)", path, number)
                return
            raise ValueError(f"{path}:{number}: not a JSON object ({exc}){hint}") from None
        yield number, value


def _repair_tail(path: Path) -> None:
    """Cut a partial last line (a crash mid-append) so the next append starts on a fresh line."""
    size = path.stat().st_size
    if size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        # find the last newline
        pos, block = size, 65536
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            idx = chunk.rfind(b"\n")
            if idx >= 0:
                cut = start + idx + 1
                break
            pos = start
        else:
            cut = 0
        logger.warning("%s: dropping a partial last line (%d bytes) left by an interrupted write", path, size - cut)
        f.truncate(cut)


def read_records(path: str | Path) -> Iterator[dict]:
    """Records of one file; a partial last line is skipped, a corrupt line elsewhere is an error."""
    for _, record in read_jsonl(path, hint="; the file is corrupt at that line."):
        yield record


def expand_paths(patterns: Iterable[str]) -> list[Path]:
    """Files matching comma-separated globs, sorted; an unmatched pattern is an error."""
    files: list[Path] = []
    for pattern in patterns:
        for part in [p for p in str(pattern).split(",") if p]:
            matched = sorted(glob.glob(part)) if any(c in part for c in "*?[") else ([part] if Path(part).exists() else [])
            if not matched:
                raise FileNotFoundError(f"result path {part!r} matches no file.")
            files += [Path(m) for m in matched]
    return sorted(dict.fromkeys(files))


class RecordStore:
    """Append-only JSONL of draft records with the set of keys already done."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: dict[str, dict] = {}
        if self.path.exists():
            _repair_tail(self.path)
            for rec in read_records(self.path):
                key = rec.get("key")
                if key is None:
                    raise ValueError(f"{self.path}: a record has no 'key'; is this a draft-record file?")
                if key in self.records:
                    logger.warning("%s: duplicate record %s ignored (first one kept)", self.path, key)
                    continue
                self.records[key] = rec
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def append(self, record: DraftRecord | dict) -> None:
        if isinstance(record, DraftRecord):
            record = record.to_dict()
        key = record["key"]
        if key in self.records:
            raise ValueError(f"record {key} is already in {self.path}; records are written once.")
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        written = os.write(self._fd, line)
        if written != len(line):  # a short write: leave the file repairable, never half a record plus more
            raise OSError(f"{self.path}: short write ({written} of {len(line)} bytes)")
        os.fsync(self._fd)
        self.records[key] = record

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def check_or_save_config(path: str | Path, key: str, content: dict, saved: dict, *, mismatch: str, fix: str,
                         update: bool = False) -> None:
    """The resume rule of every resumable run: the options that change what it writes (``content``) are saved at
    ``path`` (as ``saved``, holding ``content`` under ``key``) on the first start; a later start must agree on
    each of them, else a ``ValueError`` names every differing field (``mismatch``, the details, then ``fix``).
    ``update``: rewrite the file on a matching start too (it then records the latest non-content options)."""
    path = Path(path)
    if path.exists():
        before = json.loads(path.read_text()).get(key, {})
        diff = {k: (before.get(k), v) for k, v in content.items() if before.get(k) != v}
        if diff:
            details = "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"{mismatch} ({details}). {fix}")
        if not update:
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(saved, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
