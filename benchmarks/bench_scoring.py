"""Per-response scoring cost of the lm-eval plugin (answer extraction + math-verify + markers + token count).

Why: scoring must stay far below generation cost (a 10k-token response takes seconds to generate).
Targets (issue 2): median < 5 ms per response, worst case < 5 s, on one core.

Responses are synthesised: thinking text with the paper's markers, inline LaTeX, a `</think>` and a boxed
answer (half correct, half wrong), 2k-40k characters, against the real gold answers of MATH500 / AIME
(SD_BENCH_DATA_DIR or the pinned download) when available; plus pathological outputs (100k characters, no
closing braces, thousands of boxes, sympy-hard LaTeX). Tokens are counted with the tiny BPE tokenizer of
`sd_bench.tiny_model` (512-entry vocabulary: more tokens per character than a real one, so conservative).

    python benchmarks/bench_scoring.py [--n 300] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sd_bench.lm_eval_tasks import score_responses  # noqa: E402

FILLER = [
    "Wait, let me check this again.", "Hmm, perhaps I made an arithmetic slip.", "Maybe we should try $x = 3$.",
    "Actually, the discriminant is $b^2 - 4ac = 49 - 40 = 9$.", "Alternatively, use $\\frac{a+b}{2} \\ge \\sqrt{ab}$.",
    "It seems the sum $\\sum_{k=1}^{n} k^2 = \\frac{n(n+1)(2n+1)}{6}$ applies.", "This might be wrong.",
    "So the area is $\\frac{1}{2} \\cdot 6 \\cdot 8 = 24$.", "Likely the answer is an integer.",
    "Let me verify: $3^4 = 81$ and $81 \\bmod 7 = 4$.", "Therefore $\\angle ABC = 60^\\circ$.",
    "We have $\\left( x - \\frac{1}{x} \\right)^2 = x^2 - 2 + \\frac{1}{x^2}$.",
]
FALLBACK_GOLDS = ["540", "70", "27", "\\left( 3, \\frac{\\pi}{2} \\right)", "\\frac{14}{3}", "3\\sqrt{13}", "p - q"]


def golds() -> list[str]:
    try:
        from sd_bench.data import load_problems

        return [p.answer for s in ("math500", "aime24", "aime25", "amc23") for p in load_problems(s)]
    except Exception as exc:  # no data: the benchmark still runs on a fixed list
        print(f"(no paper data: {exc.__class__.__name__}; using {len(FALLBACK_GOLDS)} fixed golds)")
        return FALLBACK_GOLDS


def realistic(rng: random.Random, gold: str) -> str:
    target = int(2000 * 20 ** rng.random())  # log-uniform 2k-40k characters
    parts = ["<think>\n"]
    size = 0
    while size < target:
        s = rng.choice(FILLER)
        parts.append(s + (" " if rng.random() < 0.8 else "\n\n"))
        size += len(s) + 1
    answer = gold if rng.random() < 0.5 else str(rng.randint(1, 999))
    parts.append(f"</think>\n\nThe computation above gives the result.\n\nTherefore the final answer is $\\boxed{{{answer}}}$.")
    return "".join(parts)


PATHOLOGICAL = {
    "100k no box": "x" * 100_000,
    "100k then box": "Wait. " * 16_000 + "\\boxed{540}",
    "unbalanced boxes": "\\boxed{" * 20_000,
    "unbalanced closers": "}" * 50_000 + "{" * 50_000,
    "many think tags": "</think>" * 12_000,
    "tower exponent": "\\boxed{9^{9^{9^{9^{9}}}}}",
    "nested fractions": "\\boxed{" + "\\frac{1}{" * 300 + "2" + "}" * 300 + "}",
    "huge integral": "\\boxed{\\sum_{n=1}^{\\infty} n^{n^{n}} \\int_0^1 x^{x^{x^{x}}} dx}",
    "long answer": "\\boxed{" + "a+" * 400 + "a}",
    "many boxes": " ".join(f"\\boxed{{{i}}}" for i in range(10_000)),
}


def timed(text: str, gold: str, tokenizer: str) -> float:
    t0 = time.perf_counter()
    score_responses([text], gold, tokenizer)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    from sd_bench.tiny_model import build_tokenizer

    tok_dir = Path(tempfile.mkdtemp(prefix="bench-tok-"))
    build_tokenizer().save_pretrained(tok_dir)
    tokenizer = str(tok_dir)
    rng = random.Random(args.seed)
    gold_list = golds()
    timed(realistic(rng, "1"), "1", tokenizer)  # warm-up: imports, tokenizer load

    pairs = [(g, realistic(rng, g)) for g in (rng.choice(gold_list) for _ in range(args.n))]
    times = sorted(timed(text, gold, tokenizer) for gold, text in pairs)
    chars = [len(t) for _, t in pairs]
    ms = [t * 1000 for t in times]
    p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, 1 used; "
          f"Python {platform.python_version()}")
    print(f"realistic: n={len(ms)}, {min(chars)}-{max(chars)} chars (median {int(statistics.median(chars))}); "
          f"per response median {statistics.median(ms):.2f} ms, p99 {p99:.2f} ms, max {ms[-1]:.2f} ms, "
          f"mean {statistics.mean(ms):.2f} ms")
    print("pathological (one response each):")
    worst = 0.0
    for name, text in PATHOLOGICAL.items():
        t = timed(text, "1", tokenizer)
        worst = max(worst, t)
        print(f"  {name:22s} {len(text):>7d} chars  {t * 1000:9.1f} ms")
    print(f"worst pathological: {worst:.2f} s (target < 5 s); median target < 5 ms: "
          f"{'met' if statistics.median(ms) < 5 else 'NOT met'}")


if __name__ == "__main__":
    main()
