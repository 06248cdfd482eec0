"""Per-response scoring cost of the lm-eval plugin (both grading rules + markers + token counts).

Why: scoring must stay far below generation cost (a 10k-token response takes seconds to generate).
Targets (issue 2): median < 5 ms per response, worst case < 5 s, on one core.

Measured the way lm-eval calls the plugin: `process_results(doc, [[y_1..y_k]])` once per problem with all
k = 16 responses (both rules: math-verify and the paper's; one batched token count of the responses and
their thinking parts; one parse of the gold per rule), reported per response; and,
for comparison, each response scored alone (k = 1). math-verify's gold cache is cleared before each pass, as
in a fresh run. Responses are synthesised: thinking text with the paper's markers, inline LaTeX, a `</think>`
and a boxed answer (half correct, half wrong), 2k-40k characters, against the real gold answers of MATH500 /
AIME (SD_BENCH_DATA_DIR or the pinned download) when available; plus pathological outputs (100k characters,
no closing braces, thousands of boxes, sympy-hard LaTeX). Tokens are counted with a byte-level BPE trained
here on the MATH500 problems and solutions (vocabulary capped at 16k; ~6.8k entries are learned, ~0.4 tokens
per character, near a real model's tokenizer; no Hub access needed), or with the tiny 512-entry BPE of
`sd_bench.tiny_model` when the data is unavailable (~0.6 tokens per character: slower, so conservative).
CPU time of this process, pinned to one core (the machine is shared: wall time is noisy). The token count
is also timed the old way (`tokenizers` `encode_batch_fast`, before sd_bench.token_count) on the same texts
in the same run, for the ratio.

    python benchmarks/bench_scoring.py [--docs 40] [--k 16] [--seed 0] [--all-cores]
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
# One core by default: no rayon threads in the count. --all-cores lets the batched count use every core, as
# in an lm-eval run (which leaves TOKENIZERS_PARALLELISM unset): wall time then falls, CPU time does not.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true" if "--all-cores" in sys.argv else "false")

from sd_bench.lm_eval_tasks import score_responses

FILLER = [
    "Wait, let me check this again.",
    "Hmm, perhaps I made an arithmetic slip.",
    "Maybe we should try $x = 3$.",
    "Actually, the discriminant is $b^2 - 4ac = 49 - 40 = 9$.",
    "Alternatively, use $\\frac{a+b}{2} \\ge \\sqrt{ab}$.",
    "It seems the sum $\\sum_{k=1}^{n} k^2 = \\frac{n(n+1)(2n+1)}{6}$ applies.",
    "This might be wrong.",
    "So the area is $\\frac{1}{2} \\cdot 6 \\cdot 8 = 24$.",
    "Likely the answer is an integer.",
    "Let me verify: $3^4 = 81$ and $81 \\bmod 7 = 4$.",
    "Therefore $\\angle ABC = 60^\\circ$.",
    "We have $\\left( x - \\frac{1}{x} \\right)^2 = x^2 - 2 + \\frac{1}{x^2}$.",
]
FALLBACK_GOLDS = [
    "540",
    "70",
    "27",
    "\\left( 3, \\frac{\\pi}{2} \\right)",
    "\\frac{14}{3}",
    "3\\sqrt{13}",
    "p - q",
]


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
        tok.train_from_iterator(
            texts,
            trainer=trainers.BpeTrainer(
                vocab_size=16000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
            ),
        )
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
    parts.append(
        f"</think>\n\nThe computation above gives the result.\n\nTherefore the final answer is $\\boxed{{{answer}}}$."
    )
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


def summary(label: str, ms: list[float]) -> None:
    """One line: mean (= total / count: comparable between batched and single scoring), median, p99, max."""
    ms = sorted(ms)
    p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
    print(
        f"  {label:42s} mean {statistics.fmean(ms):6.2f}  median {statistics.median(ms):6.2f}  "
        f"p99 {p99:7.2f}  max {ms[-1]:8.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=40, help="problems; each gets k responses")
    parser.add_argument("--k", type=int, default=16, help="responses per problem (paper: 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--all-cores", action="store_true", help="no pinning; tokenizers may use every core")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and not args.all_cores:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    tokenizer, tok_label = bench_tokenizer()
    rng = random.Random(args.seed)
    gold_list = golds()
    timed(realistic(rng, "1"), "1", tokenizer)  # warm-up: imports, tokenizer load

    docs = []
    for _ in range(args.docs):
        gold = rng.choice(gold_list)
        docs.append(({"answer": gold, "tokenizer": tokenizer}, [realistic(rng, gold) for _ in range(args.k)]))
    chars = [len(t) for _, texts in docs for t in texts]
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
        f"{'all' if args.all_cores else 1} used; load average {load}; Python {platform.python_version()}; "
        f"tokenizer: {tok_label}"
    )
    print(
        f"realistic: {args.docs} problems x k={args.k} = {len(chars)} responses, {min(chars)}-{max(chars)} chars "
        f"(median {int(statistics.median(chars))})"
    )
    from tokenizers import Tokenizer

    from sd_bench.answer import _parse_gold
    from sd_bench.lm_eval_tasks import batch_token_counter, process_results
    from sd_bench.paper_answer import thinking_text

    fast = batch_token_counter(tokenizer)
    hf = Tokenizer.from_file(str(Path(tokenizer) / "tokenizer.json"))
    hf.no_padding()
    hf.no_truncation()

    def with_thinking(counter):
        """The texts process_results counts: the k responses and their thinking parts, in one call."""
        return lambda texts: counter(list(texts) + [t for t in map(thinking_text, texts) if t])

    count = with_thinking(fast)
    count_old = with_thinking(
        lambda ts: [len(e.ids) for e in hf.encode_batch_fast(ts, add_special_tokens=False)]
    )
    assert count([t for _, ts in docs[:4] for t in ts]) == count_old([t for _, ts in docs[:4] for t in ts])
    cpu, wall = time.process_time, time.perf_counter

    def batched(fn, texts, clock=cpu) -> float:
        """ms per response when the k responses of one problem are scored in one call (gold parsed once)."""
        _parse_gold.cache_clear()
        t0 = clock()
        fn(texts)
        return (clock() - t0) * 1000 / len(texts)

    def alone(fn, texts, clock=cpu) -> list[float]:
        """ms of each response scored in its own call (gold parsed once per problem, as above)."""
        _parse_gold.cache_clear()
        out = []
        for text in texts:
            t0 = clock()
            fn([text])
            out.append((clock() - t0) * 1000)
        return out

    names = ("b_full", "b_tok", "b_tok_old", "b_notok", "b_wall", "s_full", "s_tok", "s_tok_old", "s_wall")
    rows = {name: [] for name in names}
    for i, (doc, texts) in enumerate(docs):
        full = lambda ts, doc=doc: process_results(doc, [ts])
        notok = lambda ts, doc=doc: process_results(doc | {"tokenizer": ""}, [ts])
        # The two modes interleaved per problem, alternating which goes first, so that the load of this
        # shared machine drifts over both alike.
        for mode in ("b", "s") if i % 2 == 0 else ("s", "b"):
            if mode == "b":
                rows["b_full"].append(batched(full, texts))
                rows["b_tok"].append(batched(count, texts))
                rows["b_tok_old"].append(batched(count_old, texts))
                rows["b_notok"].append(batched(notok, texts))
                rows["b_wall"].append(batched(full, texts, wall))
            else:
                rows["s_full"] += alone(full, texts)
                rows["s_tok"] += alone(count, texts)
                rows["s_tok_old"] += alone(count_old, texts)
                rows["s_wall"] += alone(full, texts, wall)
    # Batched figures are one number per problem (its total / k): their median is that of per-problem MEAN
    # costs, which exceeds the median response's cost (lengths are log-uniform); compare modes by the mean.
    print(
        f"per response, the k={args.k} responses of a problem in one process_results call (as lm-eval "
        f"calls it; {args.docs} problems):"
    )
    summary("full scoring, CPU", rows["b_full"])
    summary("  of which token count (one batched call)", rows["b_tok"])
    summary("  token count the old way (tokenizers)", rows["b_tok_old"])
    summary("scoring without tokens (response_chars)", rows["b_notok"])
    summary("full scoring, wall time", rows["b_wall"])
    print(f"per response, each response in its own call ({len(chars)} responses):")
    summary("full scoring, CPU", rows["s_full"])
    summary("  of which token count", rows["s_tok"])
    summary("  token count the old way (tokenizers)", rows["s_tok_old"])
    ratio = statistics.fmean(rows["b_tok_old"]) / statistics.fmean(rows["b_tok"])
    print(f"token count, old way / new way (batched means): {ratio:.2f}x")
    summary("full scoring, wall time", rows["s_wall"])
    print("pathological (one response each; wall time, with tokens):")
    worst = 0.0
    for name, text in PATHOLOGICAL.items():
        t = timed(text, "1", tokenizer, time.perf_counter)
        worst = max(worst, t)
        print(f"  {name:22s} {len(text):>7d} chars  {t * 1000:9.1f} ms")
    print(f"worst pathological: {worst:.2f} s (target < 5 s)")


if __name__ == "__main__":
    main()
