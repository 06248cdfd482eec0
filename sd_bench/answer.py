"""sd-bench's math answer checker (rule "math_verify", metric `acc`): is a model response correct?

The rule (PAPER.md, "Evaluation protocol"): the answer region is the text after the LAST `</think>`
when one is present, else the whole response; the final answer is the last `\\boxed{...}` (balanced braces)
in that region; it is correct when math-verify finds it equivalent to the gold answer. The paper's own
evaluation code grades differently (first think block, its own normalisation and sympy comparison): that is
rule "paper", `sd_bench.paper_answer`. `grade(kind, response, gold, rule=...)` below dispatches through the
one registry of checkers, `sd_bench.grading`, and is kept here for existing callers.

Any model output must be scored without raising and in bounded time (100k characters, unbalanced braces,
LaTeX that makes sympy slow), because one bad sample must not stall an evaluation of 16 x 600 responses:
- extraction is one linear pass over the braces of the answer region;
- an extracted answer longer than MAX_ANSWER_CHARS is treated as wrong without parsing (no gold answer in
  the paper's sets is longer than ~100 characters);
- math-verify runs with its own signal timeouts off, inside one budget of TIMEOUT_S for parse and verify
  together (`sd_bench.bounded`: a timer in the main thread, a helper process in any other thread), so that
  this rule (2.0 s) and the paper's (2.4 s) stay under 5 s per response together.

Light on purpose: no torch import (lm-eval scoring imports this module).
"""

from __future__ import annotations

import functools
import re

from sd_bench import grading
from sd_bench.bounded import call_bounded
from sd_bench.grading import Grade

__all__ = [
    "Grade",
    "answer_region",
    "extract_answer",
    "grade",
    "grade_math_verify",
    "is_equivalent",
    "last_boxed",
]

THINK_CLOSE = "</think>"
MAX_ANSWER_CHARS = 1000
TIMEOUT_S = 2.0  # parse + verify of one response (math-verify's own defaults: 5 s each)

_BOX = re.compile(r"\\(?:boxed|fbox)\b")
_BRACE = re.compile(r"(?<!\\)[{}]")  # `\{` and `\}` are literal braces, not grouping
_SPACE_ARG = re.compile(r"\s+([^\s$]+)")  # `\boxed 5`


def answer_region(response: str) -> str:
    """Text after the last `</think>`, else the whole response."""
    cut = response.rfind(THINK_CLOSE)
    return response if cut < 0 else response[cut + len(THINK_CLOSE) :]


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` whose braces balance, or `\\boxed 5`; else None.

    Linear time: one pass pairs every grouping brace from the first `\\boxed` on, then the boxes are tried
    from the last one backwards, each in O(1).
    """
    boxes = list(_BOX.finditer(text))
    if not boxes:
        return None
    start = boxes[0].start()
    closing: dict[int, int] = {}
    stack: list[int] = []
    for m in _BRACE.finditer(text, start):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            closing[stack.pop()] = m.start()
    for box in reversed(boxes):
        after = box.end()
        if after < len(text) and text[after] == "{":
            end = closing.get(after)
            if end is not None:
                return text[after + 1 : end].strip()
            continue
        m = _SPACE_ARG.match(text, after)
        if m:
            return m.group(1)
    return None


def extract_answer(response: str) -> str | None:
    """The paper's final answer of one response (None when it has no boxed answer after `</think>`)."""
    return last_boxed(answer_region(response))


_NORMALIZE = re.compile(r"\s+|\\[,!;: ]|\\left|\\right|\$")


def _normalize(s: str) -> str:
    return _NORMALIZE.sub("", s).replace("dfrac", "frac").replace("tfrac", "frac")


def _math_verify_equal(pred: str, gold: str) -> bool:
    """math-verify equivalence of two LaTeX answers (both wrapped as inline math); unbounded: see callers."""
    from math_verify import parse, verify

    gold_parsed = _parse_gold(gold)
    if not gold_parsed:
        return False
    pred_parsed = parse(f"${pred}$", extraction_config=_config(), parsing_timeout=None)
    if not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


@functools.lru_cache(maxsize=1)
def _config():
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    return [LatexExtractionConfig(), ExprExtractionConfig()]


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str):
    from math_verify import parse

    return parse(f"${gold}$", extraction_config=_config(), parsing_timeout=None)


@functools.cache
def warm_up() -> None:
    """Import math-verify (and sympy, its LaTeX parser) once per process before the first time budget."""
    try:
        _math_verify_equal("1/2", "\\frac{1}{2}")
    except Exception:  # noqa: BLE001, S110  a broken install shows up as "not equivalent", never a crash
        pass


def is_equivalent(pred: str, gold: str) -> bool:
    """Is `pred` (an extracted answer) equivalent to `gold`? Never raises; bounded time in any thread."""
    if len(pred) > MAX_ANSWER_CHARS:
        return False
    if _normalize(pred) == _normalize(gold):
        return True
    warm_up()
    return bool(call_bounded("sd_bench.answer:_math_verify_equal", (pred, gold), TIMEOUT_S, False))


def grade_math_verify(response: str, gold: str) -> Grade:
    """Rule "math_verify" on one math response (the registered checker of kind "math")."""
    extracted = extract_answer(response)
    return Grade(extracted is not None and is_equivalent(extracted, str(gold)), extracted)


def grade(kind: str, response: str, gold: str, rule: str = grading.DEFAULT_RULE) -> Grade:
    """Grade one response: `sd_bench.grading.grade` (kind "math" or "toy"; rule "math_verify" or "paper")."""
    return grading.grade(kind, response, gold, rule)
