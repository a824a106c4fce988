"""``metastone grade-code``: run one program against one problem's tests in the sandbox, as JSON.

``--problem`` is a JSON object: a LiveCodeBench ``code_generation_lite`` row (public and private
tests, either encoding) or a HumanEval problem (``task_id, prompt, entry_point, test``). The
program is ``--solution`` (a Python file, run as is) or the last ```python``` block after
``</think>`` of ``--response-file`` (a model response). Prints ``{"passed", "reason", "backend",
"tests": [{"index", "status", "wall_s", "detail"}, ...]}``; every test runs unless
``--stop-on-first-failure``. Exit code 0 whether or not the program passes.
"""

from __future__ import annotations

import json

from metastone.cli.common import read_text_arg


def make_parser(subparsers):
    p = subparsers.add_parser("grade-code", help="run a program against a problem's tests (sandboxed)",
                              description=__doc__)
    p.add_argument("--problem", required=True, help="problem JSON (LiveCodeBench row or HumanEval problem)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--solution", help="Python file to grade as is")
    source.add_argument("--response-file", help="model response; its last ```python``` block is graded")
    p.add_argument("--timeout", type=float, default=6.0, help="wall-clock seconds per test")
    p.add_argument("--memory-mb", type=int, default=1024, help="address-space limit per test")
    p.add_argument("--backend", default="auto", choices=["auto", "bwrap", "unshare", "rlimits"],
                   help="sandbox backend (auto: bwrap, else unshare, else rlimits only)")
    p.add_argument("--workers", type=int, default=None, help="tests run in parallel (default: CPU count)")
    p.add_argument("--stop-on-first-failure", action="store_true", help="skip the tests after a failure")
    p.set_defaults(func=main)
    return p




def main(args) -> int:
    from metastone.eval import humaneval, livecodebench
    from metastone.eval.code_grader import CodeGrader
    from metastone.eval.extract import answer_region, last_code_block
    from metastone.sandbox.sandbox import SandboxConfig

    try:
        problem = json.loads(read_text_arg(args.problem, "--problem"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"--problem {args.problem}: not JSON: {exc}") from None
    if not isinstance(problem, dict):
        raise ValueError(f"--problem {args.problem}: expected one JSON object, got {type(problem).__name__}.")
    if args.solution:
        code = read_text_arg(args.solution, "--solution")
    else:
        region = answer_region(read_text_arg(args.response_file, "--response-file"))
        code = None if region is None else last_code_block(region)
    if "public_test_cases" in problem:
        tests = livecodebench.parse_problem(problem, args.problem).tests
    elif {"entry_point", "test", "prompt"} <= problem.keys():
        code = None if code is None else humaneval.humaneval_program(problem, code)
        tests = [humaneval.SCRIPT_TEST]
    else:
        raise ValueError(f"--problem {args.problem}: expected a LiveCodeBench row (with public_test_cases) "
                         "or a HumanEval problem (with prompt, entry_point and test).")
    config = SandboxConfig(timeout_s=args.timeout, memory_mb=args.memory_mb, backend=args.backend)
    grader = CodeGrader(config, workers=args.workers, stop_on_first_failure=args.stop_on_first_failure)
    grade = grader.grade(code, tests)
    print(json.dumps({**grade.to_dict(), "backend": grader.sandbox.backend}, ensure_ascii=False))
    return 0
