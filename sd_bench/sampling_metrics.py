"""Per-problem metrics of k sampled responses: unbiased pass@k and majority vote (maj@k).

Why here: lm-eval scoring, `sd-bench report` (pass@k curves) and the exports all need the same estimators.
- pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on Code", eq. 1): with n samples of
  which c are correct, the unbiased estimate of P(at least one of k draws without replacement is correct) is
  1 - C(n-c, k) / C(n, k); computed as the product form 1 - prod_{i=n-c+1}^{n} (1 - k/i) (their numpy code),
  which never builds the big binomials. pass@n is [c > 0]; pass@1 is c / n.
- maj@k: the answer given most often among the k responses (responses without an answer do not vote; a tie
  goes to the answer seen first), scored by the verdict its first response got. The answers are compared
  after a normalisation the caller gives (one per grading rule), not by equivalence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

PASS_AT_KS = (1, 2, 4, 8, 16)  # issue 9: every k in this list up to the number of samples


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (k <= n)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    estimate = 1.0
    for i in range(n - c + 1, n + 1):
        estimate *= 1.0 - k / i
    return 1.0 - estimate


def pass_at_ks(n: int, c: int) -> dict[int, float]:
    """pass@k for every k of PASS_AT_KS up to n."""
    return {k: pass_at_k(n, c, k) for k in PASS_AT_KS if k <= n}


def majority_correct(
    answers: Sequence[str | None], correct: Sequence[bool], normalize: Callable[[str], str] = str.strip
) -> float:
    """maj@k: 1.0 when the most frequent (normalised, non-empty) answer was graded correct, else 0.0."""
    votes: dict[str, int] = {}
    verdict: dict[str, bool] = {}
    for answer, ok in zip(answers, correct):
        if not answer:
            continue
        key = normalize(answer)
        votes[key] = votes.get(key, 0) + 1
        verdict.setdefault(key, bool(ok))
    if not votes:
        return 0.0
    best = max(votes.values())
    winner = next(key for key, v in votes.items() if v == best)  # dicts keep first-seen order: ties -> first
    return float(verdict[winner])
