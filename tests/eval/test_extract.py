"""The graded part of a response: answer region, last \\boxed{}, last code block."""

import pytest

from metastone.eval.extract import answer_region, boxed_contents, code_blocks, last_boxed, last_code_block


def test_answer_region_after_last_think_end():
    assert answer_region("<think>a</think>b</think>c") == "c"
    assert answer_region("prompt-side think</think> answer") == " answer"


def test_answer_region_truncated_thinking_has_no_answer():
    assert answer_region("<think>still thinking \\boxed{3}") is None


def test_answer_region_without_think_tags_is_everything():
    assert answer_region("just \\boxed{3}") == "just \\boxed{3}"


# The one answer-extraction rule, on the three shapes of a response (closed thinking, unclosed
# thinking, no think tags), for the graders (default) and the training reward (require_think=True).
THINK_SHAPES = [
    ("<think>steps.\n\n</think>So \\boxed{5}.", "So \\boxed{5}.", "So \\boxed{5}."),
    ("<think>still thinking about \\boxed{5}", None, None),
    ("So \\boxed{5}.", "So \\boxed{5}.", None),
]


@pytest.mark.parametrize("response, graders, reward", THINK_SHAPES)
def test_answer_region_one_rule_two_strictnesses(response, graders, reward):
    assert answer_region(response) == graders
    assert answer_region(response, require_think=True) == reward


def test_answer_region_without_think_span_is_everything():
    assert answer_region("<think>a</think>b", think_end=None) == "<think>a</think>b"
    assert answer_region("no tags", think_end=None, require_think=True) == "no tags"


@pytest.mark.parametrize("response, graders, _reward", THINK_SHAPES)
def test_math_grader_reads_the_answer_region(response, graders, _reward):
    from metastone.eval.math_grader import extract_answer

    answer, reason = extract_answer(response)
    assert (answer, reason) == (("5", "boxed") if graders is not None else (None, "unfinished_thinking"))


def test_answer_region_rejects_non_text():
    with pytest.raises(ValueError, match="must be a str"):
        answer_region(None)


def test_boxed_nested_braces_and_order():
    text = "\\boxed{\\frac{1}{2}} then \\fbox{x} and \\boxed{\\{1,2\\}} and \\boxed 7."
    assert boxed_contents(text) == ["\\frac{1}{2}", "x", "\\{1,2\\}", "7."]
    assert last_boxed(text) == "7."


def test_boxed_unclosed_is_skipped_and_other_macros_ignored():
    assert boxed_contents("\\boxed{3} \\boxed{4") == ["3"]
    assert last_boxed("\\boxedfoo{3}") is None
    assert last_boxed("no box") is None


def test_last_code_block_prefers_python_blocks():
    text = "```python\nprint(1)\n```\nthen\n```\nprint(2)\n```\nsample:\n```text\n3\n```\n"
    assert [lang for lang, _ in code_blocks(text)] == ["python", "", "text"]
    assert last_code_block(text) == "print(2)\n"
    assert last_code_block(text, languages=None) == "3\n"


def test_last_code_block_ignores_unclosed_fence():
    assert last_code_block("```python\nprint(1)\n```\n```python\nprint(2)") == "print(1)\n"
    assert last_code_block("no code") is None
