"""The paper's evaluation answer rule (sd_bench.paper_answer; grade(..., rule="paper")): hand cases from the
rule's definition, and agreement with the paper code's own verdicts on the public parity cases."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from sd_bench.answer import grade
from sd_bench.paper_answer import answer_region, extract_answer, strip_string, think_split

REGIONS = [
    # (response, the region eval.py grades with thinking on)
    ("<think>a</think>\n\nb", "b"),  # after the think block, stripped
    ("<think>a</think> b <think>c</think> d", "b <think>c</think> d"),  # the FIRST block only
    ("a</think> b", "a</think> b"),  # a lone </think> (DeepSeek-R1): the whole response
    ("<think>a, never closed", "<think>a, never closed"),  # truncated inside the thinking: whole
    ("b</think> x <think>c</think> d", "d"),  # the first <think> with a later </think>
    ("plain", "plain"),
]


@pytest.mark.parametrize("response,region", REGIONS)
def test_answer_region(response, region):
    assert answer_region(response) == region


def test_think_split():
    assert think_split("<think> t </think> a ") == ("t", "a")
    assert think_split("t</think>a") is None


EXTRACTIONS = [
    ("\\boxed{1} and \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # the last "boxed", brace-matched
    ("\\boxed 5$ done", "5"),  # no brace: up to the next $
    ("\\boxed{3.}", "3"),  # one trailing "." dropped
    ("\\boxed{:7}", "7"),  # one leading ":" dropped
    ("\\boxed{1\n  2}", "12"),  # newlines (and the spaces after them) removed
    ("\\boxed{\\frac{1}{2", "\\frac{1}{2"),  # unclosed: the rest of the text
    ("no answer", ""),
    ("\\boxed{}", ""),
]


@pytest.mark.parametrize("region,expected", EXTRACTIONS)
def test_extract_answer(region, expected):
    assert extract_answer(region) == expected


def test_strip_string_examples():
    assert strip_string("\\dfrac{1}{2}") == "\\frac{1}{2}"
    assert strip_string("5 \\text{ cm}") == "5"
    assert strip_string("50\\%") == "50"
    assert strip_string("x = 3") == "3"
    assert strip_string("\\frac12") == "\\frac{1}{2}"
    assert strip_string("3/4") == "\\frac{3}{4}"
    assert strip_string("\\text{east}") == ""  # the paper's known quirk: a unit word that is the whole answer


GRADES = [
    # (response, gold, paper verdict) from the rule's definition
    ("<think>t</think> \\boxed{540}", "540", True),
    ("<think>t</think> \\boxed{541}", "540", False),
    ("<think>\\boxed{540}</think> no box after", "540", False),  # a box only inside the think block
    ("thinking \\boxed{540} </think> no box after", "540", True),  # lone </think>: whole response graded
    ("\\boxed{0.33333}", "\\frac{1}{3}", True),  # numeric tolerance 1e-4 (via sympy N)
    ("\\boxed{0.3}", "\\frac{1}{3}", False),
    ("\\boxed{50\\%}", "0.5", True),  # percent forms: gold x, x/100, x*100
    ("\\boxed{5}", "0.05", True),
    ("\\boxed{5 \\text{ cm}}", "5", True),  # unit words
    ("\\boxed{12 inches}", "12", True),
    ("\\boxed{five}", "5", True),  # number words
    ("\\boxed{(\\frac{1}{2}, 3)}", "(0.5, 3)", True),  # tuples element-wise
    ("\\boxed{[2, 5)}", "[2,5)", True),  # intervals
    ("\\boxed{(-\\infty, 3]}", "(-\\infty,3]", True),
    ("\\boxed{(B)}", "B", True),  # multiple choice
    ("\\boxed{y = 2x + 1}", "2x+1", True),  # "y =" dropped
    ("\\boxed{\\sqrt{12}}", "2\\sqrt{3}", True),  # sympy simplification
    ("\\boxed{3, 1, 2}", "1,2,3", True),  # comma lists compared sorted
    ("no box at all", "\\text{east}", True),  # quirk kept: both strip to ""
    ("\\boxed{\\frac{4090}{2}}", "204_5", True),  # quirk kept: Python's parse_expr reads 204_5 as 2045
    ("\\boxed{\\text{\\text{(C)}}}", "\\text{(C)}", False),  # latex2sympy2 1.9.1: \text{..} is one symbol
    ("\\boxed{1\\frac{4}{5}}", "\\frac{9}{5}", False),  # 1.9.1 reads 1\frac{4}{5} as 1 x 4/5
    ("\\boxed{(-\\infty, 2) \\cup (13, \\infty)}", "(-\\infty, 2) \\cup (3, \\infty)", True),  # 1.9.1 prefix
]


@pytest.mark.parametrize("response,gold,correct", GRADES)
def test_grade_paper(response, gold, correct):
    assert grade("math", response, gold, rule="paper").correct is correct


def test_rules_differ_on_a_lone_think_close():
    response = "reasoning \\boxed{7} </think> The answer is above."
    assert grade("math", response, "7", rule="paper").correct is True
    assert grade("math", response, "7").correct is False  # math-verify rule: after the LAST </think>


def test_paper_rule_bounded_outside_main_thread():
    out = {}

    def work():
        t0 = time.perf_counter()
        out["slow"] = grade("math", "\\boxed{9^{9^{9^{9^{9}}}}}", "1", rule="paper")
        out["ok"] = grade("math", "\\boxed{\\sqrt{12}}", "2\\sqrt{3}", rule="paper")
        out["s"] = time.perf_counter() - t0

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=150)
    assert out["slow"].correct is False and out["ok"].correct is True


def test_unknown_rule():
    with pytest.raises(ValueError, match="unknown grading rule 'strict'"):
        grade("math", "\\boxed{1}", "1", rule="strict")


def _parity_file() -> Path | None:
    # SD_BENCH_DATA_DIR points at shared/data (math/ and grader_parity/ side by side); else the shared/
    # folder beside the checkout, as CI lays it out
    candidates = []
    if os.environ.get("SD_BENCH_DATA_DIR"):
        candidates.append(Path(os.environ["SD_BENCH_DATA_DIR"]) / "grader_parity" / "public.jsonl")
    candidates.append(Path(__file__).resolve().parents[2] / "shared/data/grader_parity/public.jsonl")
    return next((p for p in candidates if p.is_file()), None)


def test_parity_with_the_paper_code():
    """>= 99.5% agreement with the paper code's verdicts (issue 12, rule 4); today 2,959 / 2,959."""
    path = _parity_file()
    if path is None:
        pytest.skip("grader parity cases not found (SD_BENCH_DATA_DIR/grader_parity/public.jsonl)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    disagree = []
    for r in rows:
        g = grade("math", r["response"], r["gold"], rule="paper")
        assert extract_answer(answer_region(r["response"])) == r["paper_extracted"], (r["set"], r["index"])
        if g.correct != r["paper_correct"]:
            disagree.append((r["set"], r["index"], r["shape"], r["gold"], r["paper_extracted"]))
    agreement = 1 - len(disagree) / len(rows)
    assert agreement >= 0.995, f"agreement {agreement:.4f}; disagreements: {disagree[:20]}"


def test_model_output_is_never_run_as_python(tmp_path):
    """The paper's `parse_expr` is an `eval`: hostile answers must not execute (they are just wrong)."""
    from sd_bench.paper_answer import _safe_for_parse_expr

    marker = tmp_path / "ran"
    for answer in (
        f"__import__('os').system('touch {marker}')",
        f"open({str(marker)!r}, 'w')",
        "eval(1)",
        "preview(x)",
        "x.__class__",
    ):
        assert not _safe_for_parse_expr(answer), answer
        assert grade("math", f"\\boxed{{{answer}}}", "1", rule="paper").correct is False
    assert not marker.exists()
    assert _safe_for_parse_expr("204_5") and _safe_for_parse_expr("x**2 + sin(x)")
