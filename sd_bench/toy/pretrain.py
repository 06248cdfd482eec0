"""Pretrain the toy base: `sd-bench toy pretrain [--steps N] [--output DIR] [--seed S]`.

Why pretraining and not a hand-made model: the base must *hedge* the way a reasoning model does. Trained
on the issue-5 mixture (`world.sample_trace`: 60% plain, 20% solution-hinted, 20% answer-hinted traces),
the model's gut sum stays mostly wrong while its re-derivation after `wait` is mostly right, and with a
solution in context it learns to answer at once without a wait: the two behaviours whose trade-off
self-distillation exposes.

Recipe (issue 5): AdamW lr 1.5e-3, linear warm-up then cosine decay, batches of 64 fresh problems,
~2,600 steps; the loss covers the hint text and the response (with its EOS), not the question.
Reads top to bottom: setup, `for step in range(steps)`, save (atomically, with provenance.json).
"""

from __future__ import annotations

import json
import math
import platform
import random
import sys
import time
from pathlib import Path

from sd_bench import atomic
from sd_bench.toy import world
from sd_bench.toy.tokenizer import build_tokenizer, save_tokenizer, user_text

DEFAULT_STEPS = 2600
LR, WARMUP, BATCH, WEIGHT_DECAY, CLIP = 1.5e-3, 100, 64, 0.01, 1.0
MIN_LR_FRACTION = 0.1  # cosine decays to 10% of the peak: a departure-free detail the issue leaves open


def lr_at(step: int, steps: int, peak: float = LR, warmup: int = WARMUP) -> float:
    """Linear warm-up over `warmup` steps, then cosine from `peak` down to MIN_LR_FRACTION * peak."""
    warmup = min(warmup, max(1, steps // 10))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress)))


def encode_trace(tok, trace: world.Trace) -> tuple[list[int], list[int]]:
    """Token ids and loss mask (1 = trained) of one trace: `Q:q[|H:hint]` `\\n` `response` EOS.

    The tokenizer is character-level, so encoding the pieces separately equals encoding the whole text.
    """
    question = tok.encode(user_text(trace.question), add_special_tokens=False)
    hint = [] if trace.hint is None else tok.encode("|H:" + trace.hint, add_special_tokens=False)
    start = tok.encode("\n", add_special_tokens=False)
    response = tok.encode(trace.response, add_special_tokens=False) + [tok.eos_token_id]
    hint_mask = [0, 0, 0] + [1] * (len(hint) - 3) if hint else []  # `|H:` itself is part of the prompt
    ids = question + hint + start + response
    mask = [0] * len(question) + hint_mask + [0] * len(start) + [1] * len(response)
    return ids, mask


ROW = 128  # packed row length: the longest pretraining trace is ~125 tokens


def make_batch(tok, rng: random.Random, batch: int = BATCH):
    """A batch of `batch` fresh traces, packed into rows with a block-diagonal causal mask.

    Packing (each trace restarts its positions and attends only to itself) gives exactly the per-trace
    logits of an unpacked batch while computing on ~2x fewer tokens than right padding; on 2 shared CPU
    cores this halves pretraining time. Labels are -100 outside the loss mask and on padding.
    Returns (input_ids_R_T, position_ids_R_T, attention_R_1_T_T (bool), labels_R_T).
    """
    import torch

    encoded = sorted(
        (encode_trace(tok, world.sample_trace(rng)) for _ in range(batch)), key=lambda e: -len(e[0])
    )
    width = max(ROW, len(encoded[0][0]))
    rows: list[list[tuple[list[int], list[int]]]] = []
    for item in encoded:  # first-fit decreasing
        for row in rows:
            if sum(len(ids) for ids, _ in row) + len(item[0]) <= width:
                row.append(item)
                break
        else:
            rows.append([item])
    n_rows = len(rows)
    input_ids = torch.full((n_rows, width), tok.pad_token_id, dtype=torch.long)
    positions = torch.zeros((n_rows, width), dtype=torch.long)
    labels = torch.full((n_rows, width), -100, dtype=torch.long)
    doc = torch.full((n_rows, width), -1, dtype=torch.long)  # padding forms one causal block of its own
    for r, row in enumerate(rows):
        offset = 0
        for d, (ids, mask) in enumerate(row):
            span = slice(offset, offset + len(ids))
            input_ids[r, span] = torch.tensor(ids)
            positions[r, span] = torch.arange(len(ids))
            labels[r, span] = torch.tensor([t if m else -100 for t, m in zip(ids, mask)])
            doc[r, span] = d
            offset += len(ids)
    causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
    attention = (doc[:, :, None] == doc[:, None, :]) & causal
    return input_ids, positions, attention[:, None], labels


def save_atomic(model, tok, output: Path, provenance: dict) -> None:
    """Write the folder next to `output`, then swap it in, so a reader never sees half a model."""
    with atomic.atomic_dir(output) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        save_tokenizer(tok, tmp)
        (tmp / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")


def _versions() -> dict:
    import tokenizers
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }


def pretrain(
    output: str | Path,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    threads: int | None = None,
    save_every: int = 0,
    log=print,
) -> dict:
    """Train a fresh toy base for `steps` steps and save it to `output`. Returns the provenance dict."""
    import torch

    from sd_bench.toy.model import build_model

    if steps < 1:
        raise ValueError(f"toy pretrain: steps must be >= 1, got {steps}")
    atomic.check_output_dir(output)  # a folder sd-bench did not write is refused now, not at the first save
    if threads:
        torch.set_num_threads(threads)
    tok = build_tokenizer()
    model = build_model(seed=seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=WEIGHT_DECAY)
    rng = random.Random(f"sd-bench-toy/pretrain-traces/{seed}")
    t0, history, ema = time.time(), [], None

    def provenance(step_done: int) -> dict:
        return {
            "command": " ".join(["sd-bench", *sys.argv[1:]]) if sys.argv else "",
            "steps": step_done,
            "steps_planned": steps,
            "seed": seed,
            "batch": BATCH,
            "lr": LR,
            "warmup": WARMUP,
            "wall_time_s": round(time.time() - t0, 1),
            "threads": torch.get_num_threads(),
            "final_loss": history[-1]["loss"] if history else None,
            "final_loss_ema": ema,
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "versions": _versions(),
            "loss_curve": history[:: max(1, len(history) // 50)],
        }

    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps)
        input_ids, positions, attention, labels = make_batch(tok, rng)
        loss = model(
            input_ids=input_ids, position_ids=positions, attention_mask=attention, labels=labels
        ).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        value = loss.item()
        ema = value if ema is None else 0.98 * ema + 0.02 * value
        history.append({"step": step + 1, "loss": round(value, 4)})
        if (step + 1) % 50 == 0 or step == 0:
            log(
                f"step {step + 1}/{steps} loss {value:.4f} ema {ema:.4f} lr {lr_at(step, steps):.2e} "
                f"elapsed {time.time() - t0:.0f}s"
            )
        if save_every and (step + 1) % save_every == 0 and step + 1 < steps:
            save_atomic(model, tok, Path(output), provenance(step + 1))
    prov = provenance(steps)
    save_atomic(model, tok, Path(output), prov)
    log(f"saved {output} ({steps} steps, {prov['wall_time_s']}s, final loss {prov['final_loss']})")
    return prov
