"""Which checker grades a response: one registry by problem kind and grading rule.

Why one registry: lm-eval scoring, the trainer's reward, the reproduction's tables and the exports all grade
responses; they name a problem kind ("math", "toy") and a rule, never a checker module, so a new kind or
rule is one `register` call and the light core never imports an optional world (the toy grader is found by
name, only when a toy problem is graded). Checkers import `Grade` from here, nothing else.

Rules (issue 12, rule 4; PAPER.md "Evaluation protocol"):
- "math_verify" (default, metric `acc`): sd-bench's checker, `sd_bench.answer.grade_math_verify`: the
  answer region after the LAST `</think>`, the last balanced `\\boxed{}`, math-verify equivalence;
- "paper" (metric `acc_paper`): the paper's own evaluation code, `sd_bench.paper_answer.grade_paper`: the
  region after the FIRST `<think>...</think>` (else the whole response), the last "boxed", the paper's
  normalisation and sympy comparison.
Toy problems have one checker (`sd_bench.toy.world.grade_toy`, exact integer match) under both rules, so
their `acc_paper` equals `acc`.
"""

from __future__ import annotations

from dataclasses import dataclass

RULES = ("math_verify", "paper")
DEFAULT_RULE = "math_verify"
# The metric suffix of each rule in lm-eval results and tables: acc / acc_paper, pass_at_k / pass_at_k_paper.
METRIC_SUFFIX = {"math_verify": "", "paper": "_paper"}


@dataclass(frozen=True)
class Grade:
    """One graded response: `extracted` is the final answer found (None when there is none)."""

    correct: bool
    extracted: str | None


# (kind, rule) -> "module:function" taking (response, gold) and returning a Grade; imported on first use.
_GRADERS: dict[tuple[str, str], str] = {}
_resolved: dict[tuple[str, str], object] = {}


def register(kind: str, target: str, rules: tuple[str, ...] = RULES) -> None:
    """Grade problems of `kind` with the function named `target` ("module:function") under `rules`."""
    for rule in rules:
        _GRADERS[(kind, rule)] = target
        _resolved.pop((kind, rule), None)


register("math", "sd_bench.answer:grade_math_verify", ("math_verify",))
register("math", "sd_bench.paper_answer:grade_paper", ("paper",))
register("toy", "sd_bench.toy.world:grade_toy")


def kinds() -> list[str]:
    return sorted({kind for kind, _ in _GRADERS})


def grade(kind: str, response: str, gold: str, rule: str = DEFAULT_RULE) -> Grade:
    """Grade one response to a problem of `kind` under `rule` ("math_verify" or "paper")."""
    key = (kind, rule)
    fn = _resolved.get(key)
    if fn is None:
        target = _GRADERS.get(key)
        if target is None:
            if rule not in RULES:
                raise ValueError(f"grade(): unknown grading rule {rule!r}; expected one of {RULES}")
            raise ValueError(f"grade(): unknown problem kind {kind!r}; expected one of {kinds()}")
        from sd_bench.bounded import resolve

        fn = _resolved[key] = resolve(target)
    return fn(response, str(gold))
