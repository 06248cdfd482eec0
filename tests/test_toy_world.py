"""The toy world's generator: fixed eval sets, the issue-5 trace probabilities, and last-`A:` grading."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter

import pytest

from sd_bench.toy import world


def test_eval_sets_are_fixed_unique_and_split_by_length():
    ids, ood = world.toy_problems("id"), world.toy_problems("ood")
    assert len(ids) == len(ood) == 256
    assert ids == world.toy_problems("id")  # seeded: identical on every call
    assert len({p.question for p in ids}) == 256
    assert {p.extra["n"] for p in ids} == {3, 4}
    assert {p.extra["n"] for p in ood} == {5, 6}
    p = ids[0]
    assert p.kind == "toy" and p.prompt == p.question
    terms = world.parse_question(p.question)
    assert p.answer == str(sum(terms))
    assert p.solution == world.clean_derivation(terms) + f"A:{sum(terms)}"


def test_training_sets_never_contain_eval_problems():
    held_out = {p.question for p in world.toy_problems("id")}
    for size in (1, 8, 64):
        train = world.coverage_set(size)
        assert len(train) == size
        assert not held_out & {p.question for p in train}
    broad = world.coverage_set("broad")
    assert len(broad) == world.BROAD_SIZE and not held_out & {p.question for p in broad}
    assert world.coverage_set(8, seed=0) != world.coverage_set(8, seed=1)
    with pytest.raises(ValueError, match="coverage size"):
        world.coverage_set(0)
    with pytest.raises(ValueError, match="unknown toy split"):
        world.toy_problems("test")


def test_clean_derivation_format():
    assert world.clean_derivation([12, 34, 56]) == "12+34=46;46+56=102;"
    assert world.clean_solution([12, 34, 56]) == "12+34=46;46+56=102;A:102"


@pytest.mark.parametrize(
    ("response", "gold", "correct", "extracted"),
    [
        ("A:102", "102", True, "102"),
        ("A:112", "102", False, "112"),
        ("A:112wait12+34=46;46+56=102;A:102", "102", True, "102"),  # the LAST A: is graded
        ("A:102wait12+34=46;46+56=101;A:101", "102", False, "101"),
        ("A:112wait12+34=46;46+56=102;", "102", False, "112"),  # unfinished re-derivation: gut answer
        ("12+34=46;", "102", False, None),
        ("", "102", False, None),
        ("A:0102", "102", True, "102"),
    ],
)
def test_grade_toy(response, gold, correct, extracted):
    grade = world.grade_toy(response, gold)
    assert (grade.correct, grade.extracted) == (correct, extracted)


def _plain_stats(n: int, count: int = 6000):
    rng = random.Random(1)
    stats = Counter()
    for _ in range(count):
        terms = [rng.randint(10, 99) for _ in range(n)]
        response = world.plain_response(rng, terms)
        gut = int(response.split("wait")[0][2:])
        right = gut == sum(terms)
        waited = response.count(world.WAIT) > 0
        stats["wrong"] += not right
        stats["wait_after_wrong"] += waited and not right
        stats["wait_after_right"] += waited and right
        stats["final_right"] += world.grade_toy(response, str(sum(terms))).correct
        if waited:
            stats["waited"] += 1
            stats["waited_final_right"] += world.grade_toy(response, str(sum(terms))).correct
    return stats, count


@pytest.mark.parametrize("n", [2, 4, 6])
def test_plain_traces_follow_the_issue_probabilities(n):
    stats, count = _plain_stats(n)
    p_wrong = 0.15 + 0.10 * (n - 2)
    assert abs(stats["wrong"] / count - p_wrong) < 0.03
    assert abs(stats["wait_after_wrong"] / stats["wrong"] - 0.9) < 0.03
    assert abs(stats["wait_after_right"] / (count - stats["wrong"]) - 0.25) < 0.03
    assert stats["waited_final_right"] == stats["waited"]  # a re-derivation always ends right


def test_mixture_and_hinted_formats():
    rng = random.Random(2)
    traces = [world.sample_trace(rng) for _ in range(5000)]
    plain = [t for t in traces if t.hint is None]
    solution_hinted = [t for t in traces if t.hint is not None and "=" in t.hint]
    answer_hinted = [t for t in traces if t.hint is not None and "=" not in t.hint]
    assert abs(len(plain) / 5000 - 0.6) < 0.03
    assert abs(len(solution_hinted) / 5000 - 0.2) < 0.03
    for t in solution_hinted:  # answered at once, never a wait
        terms = world.parse_question(t.question)
        assert t.hint == world.clean_solution(terms) and t.response == f"A:{sum(terms)}"
    waited = [t for t in answer_hinted if world.WAIT in t.response]
    assert abs(len(waited) / len(answer_hinted) - 0.3) < 0.05
    for t in answer_hinted:
        s = sum(world.parse_question(t.question))
        assert t.hint == str(s) and t.response.startswith(f"A:{s}") and t.response.endswith(f"A:{s}")
    corrected = [t for t in plain if t.response.count(world.WAIT) > 1]
    assert corrected, "step errors are caught with a second wait"


def _imports_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(m for m in sys.modules if m.startswith('sd_bench')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_the_toy_grader_is_found_by_problem_kind_without_an_import_cycle():
    """Issue 13, layering: the math checker never imports the toy world, the toy world never imports the
    math checker; `sd_bench.grading` finds `grade_toy` by problem kind "toy" when a toy response is graded."""
    assert "sd_bench.toy.world" not in _imports_after("import sd_bench.answer")
    assert "sd_bench.answer" not in _imports_after("import sd_bench.toy.world")
    toy = _imports_after("import sd_bench.toy.cli, sd_bench.toy.pretrain, sd_bench.toy.model")
    assert not [m for m in toy if m.startswith(("sd_bench.reproduce", "sd_bench.train"))]  # a world, no stack
    from sd_bench import grading

    for response, gold in (("A:112wait12+34=46;46+56=102;A:102", "102"), ("A:112", "102")):
        assert grading.grade("toy", response, gold) == world.grade_toy(response, gold)
        assert grading.grade("toy", response, gold, rule="paper") == world.grade_toy(response, gold)
