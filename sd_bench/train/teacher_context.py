"""The teacher's input for each context c (PAPER.md "Teacher contexts", "SDPO teacher prompt").

teacher ids = chat_template(sdpo_teacher_prompt(problem prompt, demonstration)) + generation prompt,
followed by the student's response ids appended unchanged. For c = none the teacher's prompt is the
student's prompt (teacher equals student up to weights).

Demonstrations by context:
  none               -> no demonstration
  answer             -> the gold answer (the lowest rung of context richness)
  reference_solution -> the dataset's solution (OPSD-style); problems without one get no loss
  sibling            -> c = s: a successful sibling rollout of the same prompt (reward >= 0.5), never the
                        sample itself; samples without one get no loss (paper)
  sibling_nothink    -> c = s\\think: that sibling with its <think>...</think> removed (prompts.strip_think)
  regenerated        -> c = y_r: a response the model regenerates while conditioned on s (hint prompt)
Which successful sibling: the first in sampling order other than the sample itself. The paper does not
say how one is chosen among several; this choice is deterministic and never picks the sample itself.
"""

from __future__ import annotations

from sd_bench.prompts import hint_prompt, render, sdpo_teacher_prompt, strip_think

CONTEXTS = ("none", "answer", "reference_solution", "sibling", "sibling_nothink", "regenerated")
NEEDS_SIBLING = ("sibling", "sibling_nothink", "regenerated")
_SLOT = "\x00DEMONSTRATION\x00"


def successful_sibling(rewards: list[float], index: int, threshold: float = 0.5) -> int | None:
    """Index (within the group) of the first sample other than `index` with reward >= threshold."""
    for j, r in enumerate(rewards):
        if j != index and r >= threshold:
            return j
    return None


def regeneration_prompt(problem_prompt: str, solution: str) -> str:
    """c = y_r: the user turn under which the model regenerates a response while seeing s (Table 1's hint)."""
    return hint_prompt(problem_prompt, solution)


def demonstration(
    context: str,
    *,
    answer: str = "",
    solution: str | None = None,
    sibling: str | None = None,
    regenerated: str | None = None,
) -> str | None:
    """The demonstration text for one sample, or None when this sample gets no loss."""
    if context == "none":
        return ""
    if context == "answer":
        return answer
    if context == "reference_solution":
        return solution or None
    if context == "sibling":
        return sibling
    if context == "sibling_nothink":
        return strip_think(sibling) if sibling is not None else None
    if context == "regenerated":
        return regenerated
    raise ValueError(f"teacher.context: unknown context {context!r}; expected one of {', '.join(CONTEXTS)}")


def teacher_prompt_ids(
    tokenizer,
    problem_prompt: str,
    demo: str,
    *,
    context: str,
    max_prompt_tokens: int,
    template_kwargs: dict | None = None,
) -> tuple[list[int], int]:
    """(teacher prompt ids ending with the generation prompt, number of demonstration tokens kept).

    When the prompt exceeds `max_prompt_tokens`, the demonstration is cut from the right (paper: truncated on
    the right, never dropping the problem): the template is split around the demonstration and only the
    demonstration's tokens are shortened, so the problem and the closing instruction always survive. If even
    an empty demonstration does not fit, the prompt is kept whole (the problem is never dropped).
    """
    kwargs = template_kwargs or {}
    if context == "none":
        ids = tokenizer(render(tokenizer, problem_prompt, **kwargs), add_special_tokens=False)["input_ids"]
        return ids, 0
    full = tokenizer(
        render(tokenizer, sdpo_teacher_prompt(problem_prompt, demo), **kwargs), add_special_tokens=False
    )["input_ids"]
    demo_ids = tokenizer(demo, add_special_tokens=False)["input_ids"]
    if len(full) <= max_prompt_tokens:
        return full, len(demo_ids)
    before, after = render(tokenizer, sdpo_teacher_prompt(problem_prompt, _SLOT), **kwargs).split(_SLOT)
    before_ids = tokenizer(before, add_special_tokens=False)["input_ids"]
    after_ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    budget = max(0, max_prompt_tokens - len(before_ids) - len(after_ids))
    return before_ids + demo_ids[:budget] + after_ids, min(budget, len(demo_ids))
