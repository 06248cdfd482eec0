"""The paper's training reward (verl/utils/reward_score/feedback/math.py): last `\\boxed{` in the last 100
characters, exact string or math-verify on the bare strings."""

from __future__ import annotations

import threading

import pytest

from sd_bench.reward import TAIL_CHARS, boxed_in_tail, paper_reward

BOX = "\\boxed{540}"


def at_distance(distance: int, box: str = BOX) -> str:
    """A response whose `\\boxed{` starts `distance` characters before its end (reference construction)."""
    return "Long reasoning. " * 20 + box + "." * (distance - len(box))


def test_construction_is_what_it_says():
    for d in (100, 101, 250):
        text = at_distance(d)
        assert len(text) - text.rfind("\\boxed{") == d


CASES = [
    ("box exactly 100 chars from the end", at_distance(TAIL_CHARS), "540", 1.0),
    ("box 101 chars from the end: the backslash falls outside", at_distance(TAIL_CHARS + 1), "540", 0.0),
    ("box far before the end", at_distance(500), "540", 0.0),
    ("right answer, math-verify equivalent", "so \\boxed{\\frac{1}{2}}", "0.5", 1.0),
    ("exact string match without math-verify", "\\boxed{x \\in (0, 1]}", "x \\in (0, 1]", 1.0),
    ("wrong answer", "\\boxed{541}", "540", 0.0),
    ("nested braces", "\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}", 1.0),
    # math-verify finds no LaTeX in an undelimited `\\dfrac{\\sqrt{3}}{2}` (no `$`): the paper's reward then
    # accepts only the exact string, so this equivalent form earns 0.0 in the paper's training too.
    (
        "nested braces, equivalent but unparsed undelimited",
        "\\boxed{\\dfrac{\\sqrt{3}}{2}}",
        "\\frac{\\sqrt{3}}{2}",
        0.0,
    ),
    ("undelimited fraction math-verify parses", "\\boxed{1/2}", "\\frac{1}{2}", 1.0),
    ("truncated response: the box never closes", "... so the answer is \\boxed{\\frac{1}{2", "1/2", 0.0),
    ("no box", "The answer is 540.", "540", 0.0),
    ("empty response", "", "540", 0.0),
    ("the last box counts", "\\boxed{540} or rather \\boxed{541}", "540", 0.0),
    ("escaped braces count as braces (paper's brace count)", "\\boxed{\\{1,2\\}}", "\\{1,2\\}", 1.0),
    ("\\fbox is not a box here", "\\fbox{540}", "540", 0.0),
]


@pytest.mark.parametrize("label,response,gold,expected", CASES, ids=[c[0] for c in CASES])
def test_paper_reward(label, response, gold, expected):
    assert paper_reward(response, gold) == expected


def test_boxed_in_tail():
    assert boxed_in_tail("a \\boxed{1} b \\boxed{x^{2}} c") == "x^{2}"
    assert boxed_in_tail("\\boxed{1") == ""  # unclosed: the paper's empty answer
    assert boxed_in_tail("none") is None
    assert boxed_in_tail(at_distance(TAIL_CHARS + 1)) is None


def test_hostile_answer_bounded_and_zero():
    assert paper_reward("\\boxed{9^{9^{9^{9^{9}}}}}", "1") == 0.0


def test_reward_outside_main_thread():
    """The paper's SIGALRM timeout fails outside the main thread; here a helper process bounds it."""
    out = []
    thread = threading.Thread(target=lambda: out.append(paper_reward("so \\boxed{\\frac{1}{2}}", "0.5")))
    thread.start()
    thread.join(timeout=150)
    assert out == [1.0]
