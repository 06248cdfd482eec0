"""The paper's training reward: is the boxed answer at the end of a rollout the ground truth?

Paper code (beanie00/self-distillation-analysis @ 5c51051, `verl/utils/reward_score/feedback/math.py`):
`compute_score` -> `verify` -> `is_correct_strict_box`. Rule, as that code does it:
1. only the last 100 characters of the response are searched (`pred[-100:]`);
2. in them, the last `\\boxed{` (`last_boxed_only_string`: `rfind`, then a brace count that treats every `{`
   and `}` alike, escaped or not); an unclosed box gives the empty answer;
3. reward 1.0 when that content equals the ground truth as a string, or else, when it is non-empty, when
   math-verify says so: `verify(parse(gold), parse(pred))` on the undelimited strings with math-verify's
   default extraction configs, inside a 5 s timeout (`timeout(seconds=5)`); any error means 0.0.
So a response whose box lies earlier than 100 characters from its end (a long tail after the answer, or a
box that was cut off by truncation) gets 0.0 even when the box is right: that is the paper's rule. The
evaluation rule (`sd_bench.grading`, rule "paper") is a different one.

Departure: the paper's timeout is a SIGALRM that only works in the main thread (elsewhere its `signal`
call raises and the `except` turns every math-verify check into 0.0); here the check is bounded in any
thread (`sd_bench.bounded`). Pure function, light core: no torch.
"""

from __future__ import annotations

from sd_bench.bounded import call_bounded

TAIL_CHARS = 100  # `pred = pred[-100:]` in is_correct_strict_box
TIMEOUT_S = 5.0  # `with timeout(seconds=5)` in verify
_BOX = "\\boxed{"


def boxed_in_tail(response: str) -> str | None:
    """Content of the last `\\boxed{...}` within the last TAIL_CHARS characters; "" when that box never
    closes; None when the tail holds no `\\boxed{` (`last_boxed_only_string` + `remove_boxed`)."""
    tail = response[-TAIL_CHARS:]
    start = tail.rfind(_BOX)
    if start < 0:
        return None
    depth = 0
    for i in range(start, len(tail)):  # at most TAIL_CHARS steps
        if tail[i] == "{":
            depth += 1
        elif tail[i] == "}":
            depth -= 1
            if depth == 0:
                return tail[start + len(_BOX) : i]
    return ""


def _math_verify_says_equal(pred: str, gold: str) -> bool:
    """math-verify on the bare strings, as the paper calls it (timeouts off: `call_bounded` bounds it)."""
    from math_verify import parse, verify

    gold_expr = parse(gold, parsing_timeout=None)
    pred_expr = parse(pred, parsing_timeout=None)
    return bool(verify(gold_expr, pred_expr, timeout_seconds=None))


def paper_reward(response: str, ground_truth: str) -> float:
    """1.0 when the paper's training reward accepts `response` for `ground_truth`, else 0.0."""
    pred = boxed_in_tail(response)
    if pred is None:
        return 0.0
    gold = str(ground_truth)
    if pred == gold:
        return 1.0
    if pred == "":
        return 0.0
    from sd_bench.answer import warm_up

    warm_up()  # math-verify's import is not charged to the first rollout's 5 s
    ok = call_bounded("sd_bench.reward:_math_verify_says_equal", (pred, gold), TIMEOUT_S, False)
    return 1.0 if ok else 0.0
