"""pytest plugin for ``scripts/gpu_check.sh`` (``-p tests.check_log``): each test's outcome as one JSON line
``{"check", "status": PASS|FAIL|SKIP, "reason"}`` appended to the file named by ``$CHECK_LOG``, which the
script turns into its PASS/FAIL/SKIP lines and its JSON report."""

from __future__ import annotations

import json
import os


def _reason(report) -> str:
    if report.skipped:
        text = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        return text.removeprefix("Skipped: ")
    if report.failed:
        lines = [x for x in report.longreprtext.strip().splitlines() if x.strip()]
        errors = [x for x in lines if x.startswith("E ")]
        return " ".join((errors or lines[-1:])[:3])[:500]
    return ""


def pytest_addoption(parser) -> None:
    parser.addoption("--check-device", default="cuda",
                     help="device of the GPU checks (tests/gpu/conftest.py): cuda, or cpu to run them without a GPU")


def pytest_runtest_logreport(report) -> None:
    path = os.environ.get("CHECK_LOG")
    # one line per test: its call, or the setup/teardown that skipped or failed it
    if not path or not (report.when == "call" or report.skipped or report.failed):
        return
    status = "PASS" if report.passed else "SKIP" if report.skipped else "FAIL"
    extra = {k: v for k, v in report.user_properties}  # measurements a check records (record_property)
    with open(path, "a") as f:
        f.write(json.dumps({"check": report.nodeid, "status": status, "reason": _reason(report), **extra}) + "\n")
