"""What both training loops (on-policy and SFT) do with token ids around the model: pad a micro-batch and take
the hidden states that predict each response token, cut lists into micro-batches, and save `final/`.

Shared here so the SFT loop never imports the on-policy loop's internals (issue 13, layering).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from sd_bench.train import checkpoint
from sd_bench.train.model import hidden_states


def response_hidden(model, prompts: list[list[int]], responses: list[list[int]], pad_id: int, device):
    """Final hidden states at the positions that predict each response token, flattened: [N, H], head [V, H],
    targets [N]. Sequences are right-padded, so positions are 0..len-1 whatever the batch."""
    seqs = [p + r for p, r in zip(prompts, responses)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(seqs), width), dtype=torch.long, device=device)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.tensor(s, device=device)
        mask[row, : len(s)] = 1
    hidden, head = hidden_states(model, ids, mask)
    parts = [
        hidden[row, len(p) - 1 : len(p) + len(r) - 1] for row, (p, r) in enumerate(zip(prompts, responses))
    ]
    targets = torch.tensor([t for r in responses for t in r], dtype=torch.long, device=device)
    return torch.cat(parts), head, targets


def chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def save_final(run_dir: Path, model, tokenizer, dist) -> Path:
    """final/: a full HF folder (full FT) or a PEFT adapter folder (LoRA), with the tokenizer; atomic."""
    final = Path(run_dir) / "final"
    weights = checkpoint.gather_weights(model)  # FSDP: a collective on every rank; rank 0 gets the weights
    if dist.main:
        tmp = Path(run_dir) / ".final.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        checkpoint.save_weights(model, tokenizer, tmp, state_dict=weights)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    dist.barrier()
    return final
