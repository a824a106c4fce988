"""Code grading rules: stdout matching, the functional driver, stop-on-failure, missing code."""

import pytest

from metastone.eval.code_grader import CodeGrader, CodeTest, stdout_matches
from metastone.sandbox.sandbox import SandboxConfig


@pytest.fixture(scope="module")
def grader():
    return CodeGrader(SandboxConfig(timeout_s=3.0), workers=2, stop_on_first_failure=False)


@pytest.mark.parametrize("actual,expected,same", [
    ("3\n7\n", "3\n7", True),
    ("  3  \r\n7\n\n\n", "3\n7\n", True),  # whitespace around lines and the whole text
    ("2.5\n", "2.50\n", True),  # Decimal equality
    ("1 2.0 3\n", "1 2 3\n", True),
    ("50000000000000001\n", "50000000000000000\n", False),  # no float tolerance
    ("2.33\n", "2.333\n", False),
    ("3\n", "3\n7\n", False),  # line counts differ
    ("Yes\n", "YES\n", False),
    ("1 2\n", "1  2\n", True),
])
def test_stdout_matches(actual, expected, same):
    assert stdout_matches(actual, expected) is same


def test_functional_driver_calls_solution_method(grader):
    code = (
        "class Solution:\n"
        "    def pairUp(self, nums: List[int], k: int) -> List[int]:\n"
        "        print('debug output goes to stderr')\n"
        "        return (min(nums) + k, max(nums) + k)\n"
    )
    tests = [CodeTest("functional", "[3, 1, 2]\n10", "[11, 13]", "pairUp"),
             CodeTest("functional", "[5]\n0", "[5, 6]", "pairUp")]
    grade = grader.grade(code, tests)
    assert [r.status for r in grade.results] == ["passed", "wrong_answer"]
    assert "expected '[5, 6]', got '[5, 5]'" in grade.results[1].detail


def test_functional_top_level_function_and_future_import(grader):
    code = "from __future__ import annotations\ndef double(x: int) -> int:\n    return 2 * x\n"
    assert grader.grade(code, [CodeTest("functional", "21", "42", "double")]).passed


def test_functional_missing_method_and_non_json_result(grader):
    tests = [CodeTest("functional", "1", "1", "f")]
    assert grader.grade("def g(x): return x", tests).results[0].status == "runtime_error"
    assert grader.grade("def f(x): return {x}", tests).results[0].status == "runtime_error"


def test_prelude_gives_leetcode_imports(grader):
    code = "def f(xs: List[int]) -> int:\n    return sum(Counter(xs).values()) + gcd(4, 6) + pow(2, 3, 5)\n"
    assert grader.grade(code, [CodeTest("functional", "[1, 1, 2]", "8", "f")]).passed


def test_stdin_program_with_main_guard_and_exit(grader):
    code = "import sys\ndef main():\n    print(sum(map(int, sys.stdin.read().split())))\n    sys.exit(0)\nif __name__ == '__main__':\n    main()\n"
    assert grader.grade(code, [CodeTest("stdin", "1 2 3\n", "6\n")]).passed


def test_errors_are_reported(grader):
    grade = grader.grade("print(1/0)", [CodeTest("stdin", "", "1\n")])
    assert grade.results[0].status == "runtime_error" and "ZeroDivisionError" in grade.results[0].detail
    assert grade.reason == "runtime_error"


def test_stop_on_first_failure_skips_the_rest():
    grader = CodeGrader(SandboxConfig(timeout_s=3.0), workers=1, stop_on_first_failure=True)
    tests = [CodeTest("stdin", "", "1\n"), CodeTest("stdin", "", "2\n"), CodeTest("stdin", "", "2\n")]
    grade = grader.grade("print(2)", tests)
    assert [r.status for r in grade.results] == ["wrong_answer", "skipped", "skipped"]
    assert not grade.passed and grade.reason == "wrong_answer"


def test_no_code_is_a_failure_not_an_error(grader):
    grade = grader.grade(None, [CodeTest("stdin", "", "1\n")])
    assert not grade.passed and grade.reason == "no_code"


def test_bad_tests_raise():
    with pytest.raises(ValueError, match="fn_name"):
        CodeTest("functional", "1", "1")
    with pytest.raises(ValueError, match="one JSON value per line"):
        CodeTest("functional", "[1,", "1", "f")
    with pytest.raises(ValueError, match="kind"):
        CodeTest("interactive")
    with pytest.raises(ValueError, match="no tests"):
        CodeGrader().grade("print(1)", [])


def test_grade_many_interleaves_programs(grader):
    tests = [CodeTest("stdin", f"{i}\n", f"{i * i}\n") for i in range(4)]
    good, bad = "n = int(input())\nprint(n * n)\n", "n = int(input())\nprint(n + n)\n"
    grades = grader.grade_many([(good, tests), (bad, tests), (good, tests)])
    assert [g.passed for g in grades] == [True, False, True]
    assert [r.status for r in grades[1].results] == ["passed", "wrong_answer", "passed", "wrong_answer"]
