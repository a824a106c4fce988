"""Sandbox cost: per-test overhead against a bare subprocess, and throughput of 1,000 tiny tests.

    python benchmarks/bench_sandbox.py                 # every backend that works here
    python benchmarks/bench_sandbox.py --runs 100 --tests 1000 --json out.json

Overhead: the same tiny program (read two ints, print the sum) run ``--runs`` times with a bare
``subprocess.run([python, -I, -S, -B, main.py])`` and through ``Sandbox.run``, alternating (so
both see the same machine load), for each backend with the interpreter that backend chose; the
report gives the median and mean wall time per run and the difference of the medians. Throughput: ``CodeGrader`` grading ``--tests`` such tests (one process each) with the
default worker count (the CPU count). Target (issue 4): overhead <= 50 ms per test on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metastone.eval.code_grader import CodeGrader, CodeTest  # noqa: E402
from metastone.sandbox.sandbox import Sandbox, SandboxConfig  # noqa: E402

PROGRAM = "a, b = map(int, input().split())\nprint(a + b)\n"


def paired_runs(sandbox: Sandbox, runs: int) -> tuple[list[float], list[float]]:
    """Alternate bare and sandboxed runs, so both see the same machine load."""
    python = sandbox.resolved.python
    bare, boxed = [], []
    with tempfile.TemporaryDirectory() as tmp:
        main = Path(tmp) / "main.py"
        main.write_text(PROGRAM)
        for i in range(runs):
            start = time.perf_counter()
            out = subprocess.run([python, "-I", "-S", "-B", "-X", "utf8", str(main)], input=f"{i} 1\n",
                                 capture_output=True, text=True, cwd=tmp, env={}, timeout=30)
            bare.append(time.perf_counter() - start)
            assert out.stdout.strip() == str(i + 1), out
            start = time.perf_counter()
            result = sandbox.run({"main.py": PROGRAM}, ["main.py"], f"{i} 1\n")
            boxed.append(time.perf_counter() - start)
            assert result.status == "ok" and result.stdout.strip() == str(i + 1).encode(), result
    return bare, boxed


def summary(times: list[float]) -> dict:
    return {"median_ms": round(1000 * statistics.median(times), 2), "mean_ms": round(1000 * statistics.mean(times), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50, help="sequential runs per variant for the overhead")
    parser.add_argument("--tests", type=int, default=1000, help="tiny tests for the throughput measurement")
    parser.add_argument("--backends", nargs="+", default=["bwrap", "unshare", "rlimits"])
    parser.add_argument("--workers", type=int, default=None, help="throughput workers (default: CPU count)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    report = {"cpus": os.cpu_count(), "euid": os.geteuid(), "runs": args.runs, "load_before": os.getloadavg(),
              "overhead": {}, "throughput": {}}
    for backend in args.backends:
        sandbox = Sandbox(SandboxConfig(backend=backend))
        try:
            python = sandbox.resolved.python
        except RuntimeError as exc:
            print(f"{backend:8s} unavailable: {exc}")
            continue
        paired_runs(sandbox, 3)  # warm-up
        bare, boxed = (summary(t) for t in paired_runs(sandbox, args.runs))
        overhead = round(boxed["median_ms"] - bare["median_ms"], 2)
        report["overhead"][backend] = {"python": python, "bare": bare, "sandbox": boxed, "overhead_median_ms": overhead}
        print(f"{backend:8s} bare {bare['median_ms']:7.2f} ms   sandbox {boxed['median_ms']:7.2f} ms   "
              f"overhead {overhead:+7.2f} ms/test (median of {args.runs})")

        grader = CodeGrader(SandboxConfig(backend=backend), workers=args.workers, stop_on_first_failure=False)
        tests = [CodeTest("stdin", f"{i} {i}\n", f"{2 * i}\n") for i in range(args.tests)]
        start = time.perf_counter()
        grade = grader.grade(PROGRAM, tests)
        elapsed = time.perf_counter() - start
        assert grade.passed, grade.reason
        report["throughput"][backend] = {"tests": args.tests, "workers": grader.workers, "seconds": round(elapsed, 2),
                                         "tests_per_s": round(args.tests / elapsed, 1)}
        print(f"{backend:8s} {args.tests} tiny tests, {grader.workers} workers: {elapsed:.2f} s "
              f"({args.tests / elapsed:.1f} tests/s)")
    report["load_after"] = os.getloadavg()
    print(f"load average before {report['load_before'][0]:.2f}, after {report['load_after'][0]:.2f} ({os.cpu_count()} CPUs)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
