"""Atomic checkpoints and exact resume.

A checkpoint is written to `.checkpoint-<step>.tmp-<pid>/`, every file fsynced, then renamed to
`checkpoint-<step>/` (rename is atomic on one filesystem). Only folders named `checkpoint-<int>` that hold
`trainer_state.pt` are ever picked up, so a half-written checkpoint (killed mid-write) is invisible.

Contents: the model (`model/`: a full HF folder, or the PEFT adapter for LoRA, loadable on its own), and
`trainer_state.pt`: optimizer, scheduler, step, data-sampler position, EMA teacher weights, and the RNG
states (python, numpy, torch) of every process (`rng-rank<r>.pt`). Under FSDP the weights, the optimizer
state (keyed by parameter name) and an EMA teacher are gathered to rank 0 first (sd_bench.train.distributed),
so a checkpoint holds full tensors whatever the process count and resumes under another count or engine.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from sd_bench.train.distributed import full_state_dict, is_sharded, load_full_state_dict
from sd_bench.train.model import is_lora

_NAME = re.compile(r"^checkpoint-(\d+)$")


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
        elif path.is_dir():
            _fsync_dir(path)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_weights(model) -> dict | None:
    """FSDP-sharded model: its full state dict on rank 0 (call on EVERY rank: a collective); else None."""
    return full_state_dict(model) if is_sharded(model) else None


def save_weights(model, tokenizer, folder: Path, state_dict: dict | None = None) -> None:
    """HF-loadable weights: a full model folder, or a PEFT adapter folder; the tokenizer beside them.
    `state_dict`: the gathered weights of an FSDP-sharded model (see `gather_weights`)."""
    folder.mkdir(parents=True, exist_ok=True)
    if state_dict is None:
        model.save_pretrained(folder)
    else:
        model.save_pretrained(folder, state_dict=state_dict)
        # FSDP2 swaps the class to `FSDP<Name>`; HF writes the class name as the architecture (vLLM and
        # lm-eval read it), so write the original one back
        name = type(model).__name__.removeprefix("FSDP")
        model.config.architectures = [next(c for c in type(model).__mro__ if c.__name__ == name).__name__]
        model.config.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def load_weights(model, folder: Path) -> None:
    """Load weights saved by `save_weights` into an already-built model (same architecture / LoRA config)."""
    from safetensors.torch import load_file

    if is_lora(model):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
        return
    state = {}
    for file in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(file)))
    missing, unexpected = load_full_state_dict(model, state, strict=False)  # FSDP: each rank keeps its shard
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [
        k
        for k in missing
        if k not in tied and not (k == "lm_head.weight" and model.config.tie_word_embeddings)
    ]
    if missing or unexpected:
        raise RuntimeError(
            f"{folder}: weights do not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )


def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    model,
    tokenizer,
    trainer_state: dict,
    rank: int = 0,
    world_size: int = 1,
    barrier=lambda: None,
    keep: int | None = None,
) -> Path:
    """Write checkpoint-<step>/ atomically. Every rank calls it (each saves its RNG; FSDP gathers the
    weights); rank 0 writes the rest. `trainer_state` must already hold full (gathered) states."""
    run_dir = Path(run_dir)
    final = run_dir / f"checkpoint-{step}"
    tmp = run_dir / f".checkpoint-{step}.tmp"
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    barrier()
    torch.save(rng_state(), tmp / f"rng-rank{rank}.pt")
    weights = gather_weights(model)  # FSDP: every rank takes part; rank 0 gets the full weights
    barrier()
    if rank == 0:
        save_weights(model, tokenizer, tmp / "model", state_dict=weights)
        torch.save({**trainer_state, "step": step, "world_size": world_size}, tmp / "trainer_state.pt")
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(run_dir)  # make the rename itself durable
        if keep:
            for old in list_checkpoints(run_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    run_dir = Path(run_dir)
    found = []
    for path in run_dir.glob("checkpoint-*"):
        match = _NAME.match(path.name)
        if match and (path / "trainer_state.pt").is_file():
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(path: Path, *, model, rank: int = 0) -> dict:
    """Restore weights and this rank's RNG; return trainer_state (optimizer etc. are restored by the loop)."""
    path = Path(path)
    load_weights(model, path / "model")
    state = torch.load(path / "trainer_state.pt", weights_only=False)
    rng_file = path / f"rng-rank{rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return state
