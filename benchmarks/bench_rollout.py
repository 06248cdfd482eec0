"""HF rollouts on CPU: tokens/s of the old per-prompt `generate` loop vs the batched KV-cache sampler.

    python benchmarks/bench_rollout.py                 # toy base + tiny random Qwen3, 1 thread, ~1 minute

Why: on the toy world the trainer's step time was dominated by rollouts (one `generate` call per prompt, for
per-prompt seeding). `before` reproduces that loop verbatim; `after` is sd_bench.train.rollout.HFRollouts
(all prompts x n in one loop, per-row random streams). Workload: the toy trainer's, 8 prompts x 8 rollouts,
temperature 1.0, top_p 1.0; max 64 new tokens on the toy base (responses stop at EOS, ~20 tokens), 32 on the
tiny random Qwen3 (which rarely stops). tokens/s = generated response tokens (stop token included) / wall s,
best of `--repeats`.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from sd_bench.train.rollout import HFRollouts, Sample


def before(model, tokenizer, prompts, n, max_new_tokens, seeds, stop_ids):
    """The pre-batching HFRollouts.generate: one `generate` call per prompt, seeded per prompt."""
    samples = []
    model.eval()
    with torch.no_grad():
        for index, (prompt, seed) in enumerate(zip(prompts, seeds)):
            input_ids = torch.tensor([prompt] * n)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                out = model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    do_sample=True,
                    temperature=1.0,
                    top_p=1.0,
                    top_k=0,
                    max_new_tokens=max_new_tokens,
                    eos_token_id=stop_ids,
                    pad_token_id=tokenizer.pad_token_id,
                    output_scores=True,
                    return_dict_in_generate=True,
                )
            new = out.sequences[:, len(prompt) :]
            scores = torch.stack(out.scores, dim=1).float().log_softmax(-1)
            token_lp = scores.gather(-1, new.unsqueeze(-1)).squeeze(-1)
            for row in range(n):
                ids = new[row].tolist()
                length = next((i + 1 for i, t in enumerate(ids) if t in stop_ids), len(ids))
                samples.append(Sample(list(prompt), ids[:length], token_lp[row, :length].tolist(), index))
    return samples


def measure(fn, repeats: int) -> tuple[float, int]:
    best, tokens = float("inf"), 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        samples = fn()
        best = min(best, time.perf_counter() - t0)
        tokens = sum(len(s.response_ids) for s in samples)
    return best, tokens


def bench(name: str, path: Path, user_turns: list[str], max_new: int, n: int, repeats: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sd_bench.prompts import render

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompts = [tok(render(tok, t), add_special_tokens=False)["input_ids"] for t in user_turns]
    seeds = list(range(len(prompts)))
    engine = HFRollouts(model, tok)
    row = {"model": name, "prompts": len(prompts), "n": n, "max_new_tokens": max_new}
    for label, fn in [
        ("before", lambda: before(model, tok, prompts, n, max_new, seeds, engine.stop_ids)),
        (
            "after",
            lambda: engine.generate(
                prompts, n=n, temperature=1.0, top_p=1.0, max_new_tokens=max_new, seeds=seeds
            ),
        ),
    ]:
        seconds, tokens = measure(fn, repeats)
        row[label] = {
            "seconds": round(seconds, 3),
            "tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 1),
        }
    row["speedup"] = round(row["after"]["tokens_per_s"] / row["before"]["tokens_per_s"], 2)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from sd_bench.tiny_model import build_tiny_qwen3
    from sd_bench.toy import BASE_DIR, world

    toy_turns = [p.prompt for p in world.coverage_set("broad", seed=0)[:8]]
    rows = [bench("toy base (0.86M)", Path(BASE_DIR), toy_turns, 64, 8, args.repeats)]
    with tempfile.TemporaryDirectory() as tmp:
        tiny = build_tiny_qwen3(Path(tmp) / "tiny")
        tiny_turns = [
            f"What is {a} + {b}?" for a, b in [(1, 2), (2, 5), (3, 4), (1, 7), (4, 4), (2, 3), (5, 1), (3, 6)]
        ]
        rows.append(bench("tiny random Qwen3", tiny, tiny_turns, 32, 8, args.repeats))
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s)"
    )
    print("| model | rollouts | before tok/s | after tok/s | speedup |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['prompts']} x {r['n']}, max {r['max_new_tokens']} | "
            f"{r['before']['tokens_per_s']} ({r['before']['seconds']} s) | "
            f"{r['after']['tokens_per_s']} ({r['after']['seconds']} s) | {r['speedup']}x |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
