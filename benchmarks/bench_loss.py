"""Chunked SD loss vs a naive full-logits implementation of the same loss: peak memory, time, agreement.

    python benchmarks/bench_loss.py [--json] [--tokens 1024] [--hidden 1024] [--vocab 151936] [--weight-grad]

The loss is the paper's SDPO loss (PAPER.md "Training recipes"): generalized JSD alpha 0.5 over the
student's top-100 tokens + tail bucket, importance ratio clipped at 2, token-mean; forward AND backward
(gradient w.r.t. the student's hidden states; with --weight-grad also w.r.t. the lm_head, as in full
fine-tuning with the lm_head trainable).

"naive" is written here independently of sd_bench/train/losses.py, the way SDPO's verl code does it: full
[tokens, vocab] logits for student and teacher, fp32 log-softmax, gather at the student's top-k.

How memory is measured (CPU, honest for torch, which tracemalloc cannot see): each variant runs in a fresh
subprocess; after building its inputs (hidden states, lm_head weight) the worker reads the process's
resident-set high-water mark (resource.getrusage ru_maxrss), runs forward+backward once, reads it again,
and reports the difference: the extra resident memory the loss needed at its peak, gradients included.
Time is the process CPU time of that same single forward+backward with one torch thread (--threads): on a
shared machine wall time mostly measures the neighbours; wall time is reported beside it.
The last line of --json output is one JSON object: ours_peak_mib, naive_peak_mib, max_abs_diff, ours_s,
naive_s (CPU seconds; max_abs_diff covers the loss value and every gradient element), plus the wall times,
threads, chunk size and whether the lm_head was differentiated.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

ALPHA, TOP_K, IS_CLIP = 0.5, 100, 2.0  # PAPER.md "Training recipes": SDPO alpha 0.5, top-100 + tail, clip 2


def _rss_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def naive_loss(h_s, w, h_t, ids, mask, logp_old):
    """SDPO's loss on full logits (verl compute_self_distillation_loss structure), written out densely."""
    import torch

    logp_s = torch.log_softmax((h_s @ w.T).float(), dim=-1)
    with torch.no_grad():
        logp_t = torch.log_softmax((h_t @ w.T).float(), dim=-1)
    idx = logp_s.detach().topk(TOP_K, dim=-1).indices
    ls, lt = logp_s.gather(-1, idx), logp_t.gather(-1, idx)

    def tail(x):
        log_mass = torch.logsumexp(x, -1, keepdim=True).clamp(max=-1e-7)
        return torch.cat([x, torch.log(-torch.expm1(log_mass))], -1)

    ls, lt = tail(ls), tail(lt)
    log_m = torch.logsumexp(
        torch.stack([ls + torch.log(torch.tensor(1 - ALPHA)), lt + torch.log(torch.tensor(ALPHA))]), 0
    )
    kl_t = (lt.exp() * (lt - log_m)).sum(-1)
    kl_s = (ls.exp() * (ls - log_m)).sum(-1)
    per_token = ALPHA * kl_t + (1 - ALPHA) * kl_s
    tok = logp_s.gather(-1, ids[:, None]).squeeze(-1)
    ratio = torch.exp((tok.detach() - logp_old).clamp(-20, 20)).clamp(max=IS_CLIP)
    return (per_token * ratio * mask).sum() / mask.sum().clamp(min=1)


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n, h, v = args.tokens, args.hidden, args.vocab
    w = torch.randn(v, h).mul_(h**-0.5)  # in place: no second [V, H] temporary
    w.requires_grad_(args.weight_grad)
    h_s = torch.randn(n, h, requires_grad=True)
    h_t = torch.randn(n, h)
    ids = torch.randint(0, v, (n,))
    mask = torch.ones(n)
    mask[-n // 8 :] = 0  # a padded tail, as in a real batch
    logp_old = torch.full((n,), -12.0) + torch.randn(n)
    from sd_bench.train.losses import sd_loss_from_hidden

    params = [h_s] + ([w] if args.weight_grad else [])
    base = _rss_peak_mib()
    t0, c0 = time.perf_counter(), time.process_time()
    if args.variant == "ours":
        loss, _ = sd_loss_from_hidden(
            h_s,
            w,
            h_t,
            w,
            ids,
            mask,
            logp_old,
            alpha=ALPHA,
            top_k=TOP_K,
            is_clip=IS_CLIP,
            chunk_size=args.chunk,
        )
    else:
        loss = naive_loss(h_s, w, h_t, ids, mask, logp_old)
    loss.backward()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = _rss_peak_mib() - base
    torch.save({"loss": loss.detach(), "grads": [p.grad for p in params]}, args.out)
    print(json.dumps({"peak_mib": peak, "cpu_s": cpu, "wall_s": wall, "loss": loss.item()}))


def _run(variant: str, args, out: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        variant,
        "--out",
        out,
        "--tokens",
        str(args.tokens),
        "--hidden",
        str(args.hidden),
        "--vocab",
        str(args.vocab),
        "--threads",
        str(args.threads),
    ]
    cmd += ["--chunk", str(args.chunk)] if args.chunk else []
    cmd += ["--weight-grad"] if args.weight_grad else []
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, env=os.environ.copy())
    if res.returncode != 0:
        raise SystemExit(f"bench_loss: {variant} worker failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="end with one JSON line")
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--chunk", type=int, default=0, help="tokens per chunk (0: losses.default_chunk_size)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker (1: CPU time = work)")
    ap.add_argument("--weight-grad", action="store_true", help="also differentiate the lm_head (full FT)")
    ap.add_argument("--worker", choices=["ours", "naive"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        args.variant = args.worker
        return worker(args)

    import torch

    from sd_bench.train.losses import default_chunk_size

    with tempfile.TemporaryDirectory() as tmp:
        res, saved = {}, {}
        for variant in ("naive", "ours"):
            out = os.path.join(tmp, f"{variant}.pt")
            res[variant] = _run(variant, args, out)
            saved[variant] = torch.load(out)
    diffs = [(saved["ours"]["loss"] - saved["naive"]["loss"]).abs().max().item()]
    diffs += [(a - b).abs().max().item() for a, b in zip(saved["ours"]["grads"], saved["naive"]["grads"])]
    summary = {
        "ours_peak_mib": round(res["ours"]["peak_mib"], 1),
        "naive_peak_mib": round(res["naive"]["peak_mib"], 1),
        "max_abs_diff": max(diffs),
        "ours_s": round(res["ours"]["cpu_s"], 3),
        "naive_s": round(res["naive"]["cpu_s"], 3),
        "ours_wall_s": round(res["ours"]["wall_s"], 3),
        "naive_wall_s": round(res["naive"]["wall_s"], 3),
        "threads": args.threads,
        "chunk": args.chunk or default_chunk_size(args.vocab),
        "weight_grad": args.weight_grad,
    }
    from tabulate import tabulate

    print(
        f"SD loss fwd+bwd: {args.tokens} tokens, hidden {args.hidden}, vocab {args.vocab}, "
        f"top-{TOP_K}+tail JSD alpha {ALPHA}, IS clip {IS_CLIP}, lm_head grad: {args.weight_grad}, "
        f"threads {args.threads}"
    )
    rows = [
        [
            v,
            f"{res[v]['peak_mib']:.0f}",
            f"{res[v]['cpu_s']:.2f}",
            f"{res[v]['wall_s']:.2f}",
            f"{res[v]['loss']:.6f}",
        ]
        for v in ("naive", "ours")
    ]
    print(tabulate(rows, headers=["variant", "peak MiB (RSS over inputs)", "CPU s", "wall s", "loss"]))
    ratio = summary["naive_peak_mib"] / max(summary["ours_peak_mib"], 1e-9)
    print(
        f"peak ratio naive/ours {ratio:.1f}x (target >= 8), time ours/naive "
        f"{summary['ours_s'] / summary['naive_s']:.2f} (target <= 1), "
        f"max |diff| {summary['max_abs_diff']:.2e} (target <= 1e-4; loss and every gradient element)"
    )
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
