"""Epistemic verbalization: the paper's E(y).

E(y) = sum over the 10 markers m of count(m, lower(y)), where count is the number of (non-overlapping)
case-insensitive SUBSTRING occurrences over the whole response, thinking included (paper, Sec. 3), so
"checking" counts for `check` and "unlikely" counts for `likely`. Pure Python: imported by lm-eval scoring.
"""

from __future__ import annotations

# The paper's 10 markers, in the paper's order.
MARKERS: tuple[str, ...] = (
    "wait",
    "hmm",
    "perhaps",
    "maybe",
    "actually",
    "alternatively",
    "seems",
    "might",
    "likely",
    "check",
)


def marker_counts(text: str) -> dict[str, int]:
    """Per-marker substring counts of `text`, case-insensitive, in MARKERS order."""
    lowered = text.lower()
    return {marker: lowered.count(marker) for marker in MARKERS}


def epistemic_count(text: str) -> int:
    """E(y): the summed marker counts of one response."""
    return sum(marker_counts(text).values())
