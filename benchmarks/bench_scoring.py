"""Per-response scoring cost of the lm-eval plugin (answer extraction + math-verify + markers + token count).

Why: scoring must stay far below generation cost (a 10k-token response takes seconds to generate).
Targets (issue 2): median < 5 ms per response, worst case < 5 s, on one core.

Responses are synthesised: thinking text with the paper's markers, inline LaTeX, a `</think>` and a boxed
answer (half correct, half wrong), 2k-40k characters, against the real gold answers of MATH500 / AIME
(SD_BENCH_DATA_DIR or the pinned download) when available; plus pathological outputs (100k characters, no
closing braces, thousands of boxes, sympy-hard LaTeX). Tokens are counted with a byte-level BPE trained here on
the MATH500 problems and solutions (16k vocabulary, ~0.4 tokens per character, near a real model's tokenizer;
no Hub access needed), or with the tiny 512-entry BPE of `sd_bench.tiny_model` when the data is unavailable
(~0.6 tokens per character: slower, so conservative).

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
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one core: no rayon threads in the count

from sd_bench.lm_eval_tasks import score_responses

FILLER = [
    "Wait, let me check this again.", "Hmm, perhaps I made an arithmetic slip.", "Maybe we should try $x = 3$.",
    "Actually, the discriminant is $b^2 - 4ac = 49 - 40 = 9$.", "Alternatively, use $\\frac{a+b}{2} \\ge \\sqrt{ab}$.",
    "It seems the sum $\\sum_{k=1}^{n} k^2 = \\frac{n(n+1)(2n+1)}{6}$ applies.", "This might be wrong.",
    "So the area is $\\frac{1}{2} \\cdot 6 \\cdot 8 = 24$.", "Likely the answer is an integer.",
    "Let me verify: $3^4 = 81$ and $81 \\bmod 7 = 4$.", "Therefore $\\angle ABC = 60^\\circ$.",
    "We have $\\left( x - \\frac{1}{x} \\right)^2 = x^2 - 2 + \\frac{1}{x^2}$.",
]
FALLBACK_GOLDS = ["540", "70", "27", "\\left( 3, \\frac{\\pi}{2} \\right)", "\\frac{14}{3}", "3\\sqrt{13}", "p - q"]


def bench_tokenizer() -> tuple[str, str]:
    """(folder with tokenizer.json, description)."""
    folder = Path(tempfile.mkdtemp(prefix="bench-tok-"))
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        from sd_bench.data import load_problems

        texts = [f"{p.question}\n{p.solution or ''}" for p in load_problems("math500")]
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(texts, trainer=trainers.BpeTrainer(
            vocab_size=16000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
        tok.save(str(folder / "tokenizer.json"))
        return str(folder), f"byte-level BPE trained on MATH500 ({tok.get_vocab_size()} entries)"
    except Exception:  # noqa: BLE001  no data: the tiny tokenizer still measures the code path
        from sd_bench.tiny_model import build_tokenizer

        build_tokenizer().save_pretrained(folder)
        return str(folder), "tiny 512-entry BPE (sd_bench.tiny_model)"


def golds() -> list[str]:
    try:
        from sd_bench.data import load_problems

        return [p.answer for s in ("math500", "aime24", "aime25", "amc23") for p in load_problems(s)]
    except Exception as exc:  # noqa: BLE001  no data: the benchmark still runs on a fixed list
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


def timed(text: str, gold: str, tokenizer: str, clock=time.process_time) -> float:
    """Seconds to score one response. CPU time by default: the machine is shared, wall time is noisy."""
    t0 = clock()
    score_responses([text], gold, tokenizer)
    return clock() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    tokenizer, tok_label = bench_tokenizer()
    rng = random.Random(args.seed)
    gold_list = golds()
    timed(realistic(rng, "1"), "1", tokenizer)  # warm-up: imports, tokenizer load

    pairs = [(g, realistic(rng, g)) for g in (rng.choice(gold_list) for _ in range(args.n))]
    chars = [len(t) for _, t in pairs]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, 1 used; "
          f"Python {platform.python_version()}; tokenizer: {tok_label}")
    print(f"realistic: n={len(pairs)}, {min(chars)}-{max(chars)} chars (median {int(statistics.median(chars))})")
    from sd_bench.lm_eval_tasks import token_counter

    count = token_counter(tokenizer)
    # First pass is cold (each gold parsed by math-verify for the first time), as in a real run.
    for label, fn, clock in (
        ("full scoring, CPU time (cold caches)", lambda g, t: score_responses([t], g, tokenizer), time.process_time),
        ("full scoring, wall time", lambda g, t: score_responses([t], g, tokenizer), time.perf_counter),
        ("  of which token count, CPU time", lambda g, t: count(t), time.process_time),
        ("scoring without tokens, CPU time", lambda g, t: score_responses([t], g, ""), time.process_time),
    ):
        ms = []
        for gold, text in pairs:
            t0 = clock()
            fn(gold, text)
            ms.append((clock() - t0) * 1000)
        ms.sort()
        p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
        print(f"  {label:38s} median {statistics.median(ms):6.2f} ms  p99 {p99:7.2f} ms  max {ms[-1]:8.2f} ms")
    print("pathological (one response each; wall time, with tokens):")
    worst = 0.0
    for name, text in PATHOLOGICAL.items():
        t = timed(text, "1", tokenizer, time.perf_counter)
        worst = max(worst, t)
        print(f"  {name:22s} {len(text):>7d} chars  {t * 1000:9.1f} ms")
    print(f"worst pathological: {worst:.2f} s (target < 5 s)")


if __name__ == "__main__":
    main()
