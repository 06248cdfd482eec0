"""The miniature world: sums of two-digit numbers, with a "gut" answer that a wait hedges.

Why this design (issue 5, "design facts"): the paper's effect needs a model whose epistemic token is a *real*
hedge. Here the one-shot "gut" sum of n two-digit numbers is beyond a 1M-parameter model, while the
step-by-step re-derivation after `wait` is within reach: the committed base (sd_bench/toy/README.md, "The
committed base"; lm-eval `sd_toy_id` / `sd_toy_ood`, 256 problems x 4 samples) gets the gut answer right 18%
of the time on 3-4 terms and 6% on 5-6, the answer after a wait 76% and 63%, for an accuracy of 0.45 / 0.39.
A teacher that sees a correct solution never hedges, so distilling it removes the hedge and with it the
accuracy. A design in which errors are imitated per-step noise did not show the effect (prototype finding).

Text formats (characters; `wait` is one token, see `tokenizer.py`):

    plain prompt            Q:12+34+56
    solution-hinted prompt  Q:12+34+56|H:12+34=46;46+56=102;A:102
    answer-hinted prompt    Q:12+34+56|H:102
    answer start            "\\n" (the chat template's generation prompt)
    response                A:112wait12+34=46;46+56=102;A:102      (the LAST `A:` is graded)

Splits: in-domain (ID) n in {3, 4}; out-of-distribution (OOD) n in {5, 6}; pretraining n in {2..6}.
Pure Python (no torch): `sd_bench.grading` finds `grade_toy` by problem kind "toy" (the math checker,
`sd_bench.answer`, never imports this module).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from sd_bench.grading import Grade  # the registry finds `grade_toy` by problem kind "toy" (no import cycle)
from sd_bench.problems import Problem

WAIT = "wait"  # the epistemic token; its text is the paper's first marker so E(y) counts it
ID_N = (3, 4)
OOD_N = (5, 6)
PRETRAIN_N = (2, 3, 4, 5, 6)

# Pretraining trace probabilities (issue 5, design facts).
GUT_WRONG_BASE, GUT_WRONG_PER_TERM = 0.15, 0.10  # P(gut wrong) = 0.15 + 0.10 (n - 2)
ERROR_OFFSETS = (1, 2, 9, 10, 11)  # a wrong sum is off by one of these, either sign
P_WAIT_AFTER_WRONG_GUT, P_WAIT_AFTER_RIGHT_GUT = 0.9, 0.25
P_STEP_WRONG = 0.08  # a re-derived partial sum is wrong, then `wait` and the corrected step
P_FALSE_ALARM = 0.03  # `wait` after a right step, then the same step again
MIX_PLAIN, MIX_SOLUTION_HINT = 0.6, 0.2  # the rest (0.2) is answer-hinted
P_WAIT_ANSWER_HINTED = 0.3

EVAL_SIZE = 256
EVAL_SEED = 20260325  # the paper's v1 date: fixed eval sets, never trained on
COVERAGE_SIZES = (1, 8, 64)  # |D| of the narrow-coverage training sets; "broad" = fresh problems
BROAD_SIZE = 8192


# ---- problems -------------------------------------------------------------------------------------------


def question_text(terms: list[int]) -> str:
    return "+".join(str(t) for t in terms)


def parse_question(question: str) -> list[int]:
    """`"12+34+56"` -> `[12, 34, 56]`; the toy prompt is the bare sum."""
    try:
        terms = [int(t) for t in question.strip().split("+")]
    except ValueError as exc:
        raise ValueError(f"toy question {question!r} is not a sum of integers like '12+34+56'") from exc
    return terms


def clean_derivation(terms: list[int]) -> str:
    """`12+34=46;46+56=102;`: running partial sums, no mistakes, no waits."""
    steps, total = [], terms[0]
    for t in terms[1:]:
        steps.append(f"{total}+{t}={total + t};")
        total += t
    return "".join(steps)


def clean_solution(terms: list[int]) -> str:
    """A correct solution as a demonstration: the clean derivation and the final answer.

    This is exactly the hint text of the solution-hinted pretraining prompts, so
    `sdpo_teacher_prompt(prompt, problem.solution)` renders to the format the base learned.
    """
    return f"{clean_derivation(terms)}A:{sum(terms)}"


def make_problem(terms: list[int], split: str, index: int) -> Problem:
    q = question_text(terms)
    return Problem(
        id=f"toy-{split}-{index:05d}",
        question=q,
        prompt=q,
        answer=str(sum(terms)),
        solution=clean_solution(terms),
        kind="toy",
        source=f"sd_bench.toy/{split}",
        extra={"n": len(terms)},
    )


def _random_terms(rng: random.Random, ns: tuple[int, ...]) -> list[int]:
    return [rng.randint(10, 99) for _ in range(rng.choice(ns))]


def _unique_problems(split: str, ns: tuple[int, ...], count: int, seed, exclude: set[str]) -> list[Problem]:
    rng = random.Random(f"sd-bench-toy/{split}/{seed}")  # str seeds are stable across Python versions
    seen, out = set(exclude), []
    while len(out) < count:
        terms = _random_terms(rng, ns)
        q = question_text(terms)
        if q in seen:
            continue
        seen.add(q)
        out.append(make_problem(terms, split, len(out)))
    return out


def toy_problems(split: str, n: int | None = None, seed: int = EVAL_SEED) -> list[Problem]:
    """Seeded problem sets, kind "toy".

    split: "id" / "ood" (held-out evaluation; default 256 problems with the fixed seed), "train" (ID-length
    problems disjoint from the ID eval set; `n` = |D|, e.g. 1, 8, 64, or BROAD_SIZE for broad coverage),
    "pretrain" (n in {2..6}, for inspection only: pretraining draws fresh problems).
    """
    if split == "id":
        return _unique_problems("id", ID_N, EVAL_SIZE if n is None else n, seed, set())
    if split == "ood":
        return _unique_problems("ood", OOD_N, EVAL_SIZE if n is None else n, seed, set())
    if split == "train":
        held_out = {p.question for p in toy_problems("id")}
        return _unique_problems("train", ID_N, BROAD_SIZE if n is None else n, seed, held_out)
    if split == "pretrain":
        return _unique_problems("pretrain", PRETRAIN_N, 1024 if n is None else n, seed, set())
    raise ValueError(f"unknown toy split {split!r}: use 'id', 'ood', 'train' or 'pretrain'")


def coverage_set(size: int | str, seed: int = 0) -> list[Problem]:
    """The coverage sweep's training set (paper Sec. 6.2, seen_{1,8,64,...}): |D| = 1, 8, 64 or "broad"."""
    if size == "broad":
        return toy_problems("train", BROAD_SIZE, seed)
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"coverage size {size!r}: use a positive integer (1, 8, 64) or 'broad'")
    return toy_problems("train", size, seed)


# ---- pretraining traces ---------------------------------------------------------------------------------


def _wrong(rng: random.Random, value: int) -> int:
    off = rng.choice(ERROR_OFFSETS) * rng.choice((-1, 1))
    return value + off if value + off >= 0 else value - off


def gut_answer(rng: random.Random, terms: list[int]) -> int:
    p_wrong = GUT_WRONG_BASE + GUT_WRONG_PER_TERM * (len(terms) - 2)
    return _wrong(rng, sum(terms)) if rng.random() < p_wrong else sum(terms)


def noisy_derivation(rng: random.Random, terms: list[int]) -> str:
    """The re-derivation after a wait: each wrong partial sum is caught (`wait`) and redone."""
    out, total = [], terms[0]
    for t in terms[1:]:
        right = total + t
        if rng.random() < P_STEP_WRONG:
            out.append(f"{total}+{t}={_wrong(rng, right)};{WAIT}")
        elif rng.random() < P_FALSE_ALARM:
            out.append(f"{total}+{t}={right};{WAIT}")
        out.append(f"{total}+{t}={right};")
        total = right
    return "".join(out)


@dataclass(frozen=True)
class Trace:
    """One pretraining example: `prompt` + `hint` form the user turn, `response` the assistant turn.

    `hint` is None for plain prompts. The loss covers the hint and the response (issue 5).
    """

    question: str
    hint: str | None
    response: str


def plain_response(rng: random.Random, terms: list[int]) -> str:
    gut = gut_answer(rng, terms)
    p_wait = P_WAIT_AFTER_RIGHT_GUT if gut == sum(terms) else P_WAIT_AFTER_WRONG_GUT
    if rng.random() >= p_wait:
        return f"A:{gut}"
    return f"A:{gut}{WAIT}{noisy_derivation(rng, terms)}A:{sum(terms)}"


def sample_trace(rng: random.Random, ns: tuple[int, ...] = PRETRAIN_N) -> Trace:
    """A pretraining example from the mixture: 60% plain, 20% solution-hinted, 20% answer-hinted."""
    terms = _random_terms(rng, ns)
    q, s = question_text(terms), sum(terms)
    u = rng.random()
    if u < MIX_PLAIN:
        return Trace(q, None, plain_response(rng, terms))
    if u < MIX_PLAIN + MIX_SOLUTION_HINT:
        return Trace(q, clean_solution(terms), f"A:{s}")  # never a wait
    if rng.random() < P_WAIT_ANSWER_HINTED:
        return Trace(q, str(s), f"A:{s}{WAIT}{clean_derivation(terms)}A:{s}")
    return Trace(q, str(s), f"A:{s}")


# ---- grading --------------------------------------------------------------------------------------------

_ANSWER = re.compile(r"A:(-?\d+)")


def extract_answer(response: str) -> str | None:
    """The number after the LAST `A:` (the gut answer counts only when no re-derivation follows)."""
    found = _ANSWER.findall(response)
    if not found:
        return None
    return found[-1].lstrip("0") or "0"


def grade_toy(response: str, gold: str) -> Grade:
    extracted = extract_answer(response)
    gold_norm = str(gold).strip().lstrip("0") or "0"
    return Grade(correct=extracted is not None and extracted == gold_norm, extracted=extracted)
