"""The answer checker: is a model response correct against a gold answer?

The paper's rule (PAPER.md, "Evaluation protocol"): the answer region is the text after the LAST `</think>`
when one is present, else the whole response; the final answer is the last `\\boxed{...}` (balanced braces)
in that region; it is correct when math-verify finds it equivalent to the gold answer.

Any model output must be scored without raising and in bounded time (100k characters, unbalanced braces,
LaTeX that makes sympy slow), because one bad sample must not stall an evaluation of 16 x 600 responses:
- extraction is one linear pass over the braces of the answer region;
- an extracted answer longer than MAX_ANSWER_CHARS is treated as wrong without parsing (no gold answer in
  the paper's sets is longer than ~100 characters);
- math-verify's own timeouts use `signal.alarm`, which only works in the main thread; there we use them
  (PARSE_TIMEOUT_S + VERIFY_TIMEOUT_S bound the worst case). In any other thread the check runs in a helper
  process that is killed after THREAD_TIMEOUT_S.

Light on purpose: no torch import (lm-eval scoring imports this module).
"""

from __future__ import annotations

import functools
import multiprocessing
import re
import threading
from dataclasses import dataclass

THINK_CLOSE = "</think>"
MAX_ANSWER_CHARS = 1000
PARSE_TIMEOUT_S = 2  # signal.alarm takes whole seconds
VERIFY_TIMEOUT_S = 2
THREAD_TIMEOUT_S = 5.0
STARTUP_TIMEOUT_S = 120.0

_BOX = re.compile(r"\\(?:boxed|fbox)\b")
_BRACE = re.compile(r"(?<!\\)[{}]")  # `\{` and `\}` are literal braces, not grouping
_SPACE_ARG = re.compile(r"\s+([^\s$]+)")  # `\boxed 5`


@dataclass(frozen=True)
class Grade:
    """One graded response: `extracted` is the final answer found (None when there is none)."""

    correct: bool
    extracted: str | None


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


def _math_verify_equal(pred: str, gold: str, timeouts: bool) -> bool:
    """math-verify equivalence of two LaTeX answers (both wrapped as inline math)."""
    from math_verify import parse, verify

    parse_t = PARSE_TIMEOUT_S if timeouts else None
    gold_parsed = _parse_gold(gold, parse_t)
    if not gold_parsed:
        return False
    pred_parsed = parse(f"${pred}$", extraction_config=_config(), parsing_timeout=parse_t)
    if not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=VERIFY_TIMEOUT_S if timeouts else None))


@functools.lru_cache(maxsize=1)
def _config():
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    return [LatexExtractionConfig(), ExprExtractionConfig()]


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str, parse_t):
    from math_verify import parse

    return parse(f"${gold}$", extraction_config=_config(), parsing_timeout=parse_t)


def is_equivalent(pred: str, gold: str) -> bool:
    """Is `pred` (an extracted answer) equivalent to `gold`? Never raises; bounded time."""
    if len(pred) > MAX_ANSWER_CHARS:
        return False
    if _normalize(pred) == _normalize(gold):
        return True
    try:
        if threading.current_thread() is threading.main_thread():
            return _math_verify_equal(pred, gold, timeouts=True)
        return _WORKER.equal(pred, gold)
    except Exception:  # noqa: BLE001  math-verify/sympy failures on malformed LaTeX mean "not shown equivalent"
        return False


def grade(kind: str, response: str, gold: str) -> Grade:
    """Grade one response. kind "math": the paper's rule; kind "toy": the miniature world's checker."""
    if kind == "math":
        extracted = extract_answer(response)
        return Grade(extracted is not None and is_equivalent(extracted, str(gold)), extracted)
    if kind == "toy":
        from sd_bench.toy.world import grade_toy  # imported lazily: the toy world is optional here

        return grade_toy(response, gold)
    raise ValueError(f"grade(): unknown problem kind {kind!r}; expected 'math' or 'toy'")


class _Worker:
    """A helper process for math-verify outside the main thread, killed and restarted on timeout."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc = None
        self._conn = None

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")  # fork is unsafe in a threaded process
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_worker_loop, args=(child,), daemon=True)
        self._proc.start()
        self._conn = parent
        if not (parent.poll(STARTUP_TIMEOUT_S) and parent.recv() == "ready"):
            self._stop()
            raise RuntimeError("the math-verify helper process did not start")

    def _stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join()
        self._proc = self._conn = None

    def equal(self, pred: str, gold: str) -> bool:
        with self._lock:
            if self._proc is None or not self._proc.is_alive():
                self._start()
            self._conn.send((pred, gold))
            if self._conn.poll(THREAD_TIMEOUT_S):
                return bool(self._conn.recv())
            self._stop()
            return False


def _worker_loop(conn) -> None:
    import math_verify  # noqa: F401  (imported before "ready" so the first check is not charged for it)

    conn.send("ready")
    while True:
        try:
            pred, gold = conn.recv()
        except EOFError:
            return
        try:
            result = _math_verify_equal(pred, gold, timeouts=True)  # the worker's main thread
        except Exception:  # noqa: BLE001  any failure on malformed LaTeX means "not shown equivalent"
            result = False
        conn.send(result)


_WORKER = _Worker()
