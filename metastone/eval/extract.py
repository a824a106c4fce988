"""Pull the graded part out of a model response: the answer region, the last ``\\boxed{}``, the last code block.

Every grader, and the training reward, reads only the text after the thinking; ``answer_region``
states that rule once. The original MetaStone-S1 grading ran on ``question + output`` and on the
whole output, so a ``\\boxed{}`` in the prompt or an ``ANSWER:`` inside the thinking could be graded
(``metastone.eval.original_grading`` reproduces those rules as ``--grading original``;
docs/differences.md).
"""

from __future__ import annotations

import re

THINK_START = "<think>"
THINK_END = "</think>"

# \boxed{...} and \fbox{...}; also "\boxed 5" (a single token, no braces), which models write too.
_BOX_COMMANDS = ("\\boxed", "\\fbox")
# ```lang\n ... \n```; the language tag is optional; the closing fence must start a line.
_FENCE_RE = re.compile(r"^[ \t]*```[ \t]*([A-Za-z0-9_+#.-]*)[^\n]*\n(.*?)^[ \t]*```[ \t]*$", re.DOTALL | re.MULTILINE)
PYTHON_TAGS = frozenset({"", "python", "python3", "py", "py3"})


def answer_region(
    response: str,
    think_start: str = THINK_START,
    think_end: str | None = THINK_END,
    *,
    require_think: bool = False,
) -> str | None:
    """The part of ``response`` that is graded, or None when it has no answer. The one rule:

    - the response contains ``think_end``: the text after the LAST ``think_end`` (chat templates
      that open the think span in the prompt leave only ``</think>`` in the response: same case);
    - it contains ``think_start`` but no ``think_end``: the thinking never ended (truncated): None;
    - it contains neither: the whole response (models without a think span, e.g. the demo's), or
      None with ``require_think=True``.

    ``require_think=True`` is the training reward's strictness (``metastone.train.reward``): the
    original release's reward took the answer only after ``</think>`` and gave none otherwise
    (MetaStone-S1 ``verl/verl/utils/reward_score/math_v2.py``, ``extract_solution``). The graders
    use the default, so models that never think can still be evaluated. ``think_end=None`` means
    "no think span": the whole response is the answer region.
    """
    if not isinstance(response, str):
        raise ValueError(f"response must be a str, got {type(response).__name__}.")
    if not think_end:
        return response
    end = response.rfind(think_end)
    if end >= 0:
        return response[end + len(think_end):]
    if require_think or (think_start and think_start in response):
        return None
    return response


def boxed_contents(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` / ``\\fbox{...}`` in order, with nested braces balanced.

    An unclosed box (truncated text) is skipped. ``\\boxed 5`` yields ``"5"``.
    """
    out: list[tuple[int, str]] = []
    for command in _BOX_COMMANDS:
        start = 0
        while True:
            i = text.find(command, start)
            if i < 0:
                break
            j = i + len(command)
            start = j
            if j < len(text) and text[j].isalpha():
                continue  # e.g. \boxedsomething: another macro
            while j < len(text) and text[j] in " \t":
                j += 1
            if j < len(text) and text[j] == "{":
                depth = 0
                for k in range(j, len(text)):
                    if text[k] == "{":
                        depth += 1
                    elif text[k] == "}":
                        depth -= 1
                        if depth == 0:
                            out.append((i, text[j + 1:k]))
                            start = k + 1
                            break
            elif j > i + len(command):  # "\boxed 5": the next whitespace-free run
                m = re.match(r"[^\s$]+", text[j:])
                if m:
                    out.append((i, m.group(0)))
    return [content for _, content in sorted(out)]


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{}`` in ``text`` (stripped), or None if there is none."""
    boxes = boxed_contents(text)
    return boxes[-1].strip() if boxes else None


def code_blocks(text: str) -> list[tuple[str, str]]:
    """Every closed fenced code block as ``(language_tag_lowercase, code)``, in order."""
    return [(m.group(1).lower(), m.group(2)) for m in _FENCE_RE.finditer(text)]


def last_code_block(text: str, languages: frozenset[str] | None = PYTHON_TAGS) -> str | None:
    """The last fenced block whose language tag is in ``languages`` (None: any tag), or None.

    The default accepts untagged blocks and python tags, so a trailing ```text``` block with sample
    output does not replace the program. An unclosed fence (truncated response) is not a block.
    """
    blocks = [code for lang, code in code_blocks(text) if languages is None or lang in languages]
    return blocks[-1] if blocks else None
