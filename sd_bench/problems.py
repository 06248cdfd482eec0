"""The one record every part of sd-bench passes around: a problem with its gold answer."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    """One problem.

    `prompt` is the user-turn text the student sees (for the paper's math sets: the problem followed by
    "Please reason step by step, ..."); `question` is the raw problem text without that instruction.
    `kind` selects the answer checker: "math" (last \\boxed{} + math-verify) or "toy" (the miniature world).
    """

    id: str
    question: str
    prompt: str
    answer: str
    solution: str | None = None
    kind: str = "math"
    source: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)
