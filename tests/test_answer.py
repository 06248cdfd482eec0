"""The answer checker: region after the last </think>, last balanced \\boxed{}, math-verify, bounded time."""

from __future__ import annotations

import threading
import time

import pytest

from sd_bench.answer import Grade, answer_region, extract_answer, grade

EXTRACTION = [
    ("The answer is \\boxed{42}.", "42"),
    ("\\boxed{1} then \\boxed{2}", "2"),  # the last box
    ("<think>\\boxed{1}</think> so \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("<think>only thinking \\boxed{3}</think> no box after", None),  # box only inside the thinking
    ("a</think>b</think> \\boxed{7}", "7"),  # the LAST </think>
    ("\\boxed{a} \\boxed{b", "a"),  # last balanced box
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces are not grouping
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("\\boxed 5", "5"),
    ("\\fbox{7}", "7"),
    ("no answer here", None),
    ("", None),
]


@pytest.mark.parametrize("response,expected", EXTRACTION)
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


def test_answer_region():
    assert answer_region("x</think>y</think>z") == "z"
    assert answer_region("no think") == "no think"


GRADING = [
    ("\\boxed{540}", "540", True),
    ("\\boxed{541}", "540", False),
    ("\\boxed{(3,\\frac{\\pi}{2})}", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("\\boxed{14/3}", "\\frac{14}{3}", True),
    ("\\boxed{\\dfrac{14}{3}}", "\\frac{14}{3}", True),
    ("\\boxed{0.5}", "\\frac12", True),
    ("\\boxed{3\\sqrt{13}}", "3\\sqrt{13}", True),
    ("\\boxed{[-2,7]}", "x \\in [-2,7]", True),
    ("\\boxed{\\text{(C)}}", "C", True),
    ("<think>\\boxed{540}</think> \\boxed{12}", "540", False),
    ("540", "540", False),  # no boxed answer: not graded correct
]


@pytest.mark.parametrize("response,gold,correct", GRADING)
def test_grade_math(response, gold, correct):
    g = grade("math", response, gold)
    assert isinstance(g, Grade) and g.correct is correct


PATHOLOGICAL = [
    "\\boxed{" * 20000,
    "}" * 50000 + "{" * 50000,
    "x" * 100_000 + "\\boxed{1}",
    "</think>" * 10000,
    "\\boxed{9^{9^{9^{9^{9}}}}}",
    "\\boxed{" + "\\frac{1}{" * 300 + "2" + "}" * 300 + "}",
    "\\boxed{" + "(" * 5000 + "}",
    "\\boxed{\\sum_{n=1}^{\\infty} n^{n^{n}} \\int_0^1 x^{x^{x^{x}}} dx}",
    "\\boxed{" + "a" * 5000 + "}",
]


@pytest.mark.parametrize("response", PATHOLOGICAL)
def test_pathological_main_thread_bounded(response):
    t0 = time.perf_counter()
    g = grade("math", response, "1")
    assert time.perf_counter() - t0 < 6.0
    assert g.correct in (True, False)


def test_grade_outside_main_thread_is_bounded():
    """math-verify's signal timeouts need the main thread; elsewhere a helper process bounds the time."""
    results = {}

    def work():
        grade("math", "\\boxed{0.5}", "1/2")  # start the helper (imports are not charged below)
        t0 = time.perf_counter()
        results["slow"] = grade("math", "\\boxed{9^{9^{9^{9^{9}}}}}", "1")
        results["slow_s"] = time.perf_counter() - t0
        results["ok"] = grade("math", "\\boxed{\\frac{1}{2}}", "0.5")

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert results["slow"].correct is False and results["slow_s"] < 7.0
    assert results["ok"].correct is True


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown problem kind 'chess'"):
        grade("chess", "\\boxed{1}", "1")


def test_registry_dispatches_by_kind_and_rule():
    """One registry (sd_bench.grading): kinds and rules map to checkers named "module:function"."""
    from sd_bench import grading

    grading.register("upper", "tests.test_answer:_upper_checker")
    try:
        assert grading.grade("upper", "ABC", "abc").correct is True
        assert grading.grade("upper", "ABC", "abc", rule="paper").extracted == "abc"
        assert "upper" in grading.kinds()
    finally:
        grading._GRADERS.pop(("upper", "math_verify"))
        grading._GRADERS.pop(("upper", "paper"))
        grading._resolved.clear()
    # toy problems: one checker under both rules, so acc_paper equals acc there
    toy = [grade("toy", "A:102", "102", rule=r) for r in grading.RULES]
    assert toy[0] == toy[1]


def _upper_checker(response: str, gold: str):
    from sd_bench.grading import Grade

    return Grade(response.lower() == gold, response.lower())


def test_light_core_imports_no_toy_world_and_no_sympy():
    """answer <-> toy.world no longer import each other; the graders load math libraries on first use."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, sd_bench.answer, sd_bench.grading, sd_bench.reward, sd_bench.lm_eval_tasks\n"
        "bad = [m for m in sys.modules if m.startswith('sd_bench.toy') or m in ('torch', 'sympy', 'math_verify')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
