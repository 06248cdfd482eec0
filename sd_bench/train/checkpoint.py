"""Atomic checkpoints and exact resume.

A checkpoint is written to `.checkpoint-<step>.tmp-<pid>/`, every file fsynced, then renamed to
`checkpoint-<step>/` (rename is atomic on one filesystem). Only folders named `checkpoint-<int>` that hold
`trainer_state.pt` are ever picked up, so a half-written checkpoint (killed mid-write) is invisible.

Contents: the model (`model/`: a full HF folder, or the PEFT adapter for LoRA, loadable on its own) in the
MASTER dtype (float32 under mixed precision, sd_bench.train.lm), so a resume continues from the exact
weights; `final/` is written in the recipe's `model.dtype` instead. `trainer_state.pt`: optimizer, scheduler,
step, data-sampler position, EMA teacher weights; `rng-rank<r>.pt`: the RNG states (python, numpy, torch) of
every process. Under FSDP the weights, the optimizer state (keyed by parameter name) and an EMA teacher are
gathered to rank 0 first (sd_bench.train.distributed), so a checkpoint holds full tensors whatever the
process count and resumes under another count or engine.

No pickled code (issue 8): the state files hold only tensors, numbers, strings, lists, tuples and dicts
(the numpy RNG state as a tensor), and are read with `torch.load(weights_only=True)`, whose unpickler
refuses any other global (numpy's array constructors are allowed, for RNG files of the earlier format): a
crafted `trainer_state.pt` (an `os.system` payload) is refused with one line naming it, never run.
Weights are safetensors.
"""

from __future__ import annotations

import errno
import os
import pickle
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from sd_bench.train.distributed import full_state_dict, is_sharded, load_full_state_dict
from sd_bench.train.lm import is_lora, save_dtype

_NAME = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or must not be read; the message names the folder and the fix."""


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
    """Every RNG of this process as plain values and tensors (loadable with weights_only=True)."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),  # (version, tuple of ints, None): plain values
        "numpy": {
            "kind": kind,
            "key": torch.from_numpy(key.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    if isinstance(n, dict):
        n = (n["kind"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    np.random.set_state(n)  # else the tuple of checkpoints written before the pickle-free format
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_weights(model) -> dict | None:
    """FSDP-sharded model: its full state dict on rank 0 (call on EVERY rank: a collective); else None."""
    return full_state_dict(model) if is_sharded(model) else None


def save_weights(
    model, tokenizer, folder: Path, state_dict: dict | None = None, *, master: bool = False
) -> None:
    """HF-loadable weights: a full model folder, or a PEFT adapter folder; the tokenizer beside them.
    `state_dict`: the gathered weights of an FSDP-sharded model (see `gather_weights`).

    `master=False` (final/): in the recipe's `model.dtype` (`lm.save_dtype`), the dtype the paper's code
    saves its HF checkpoints in. `master=True` (checkpoint-*/model): the weights as they train (float32
    masters), so a resume is exact."""
    folder.mkdir(parents=True, exist_ok=True)
    dtype = None if master else save_dtype(model)
    if dtype is not None:
        state = model.state_dict() if state_dict is None else state_dict
        if any(t.is_floating_point() and t.dtype != dtype for t in state.values()):
            cast: dict[tuple, torch.Tensor] = {}  # tied weights stay one tensor (HF then saves it once)
            state_dict = {}
            for k, t in state.items():
                if t.is_floating_point():
                    same = (t.data_ptr(), tuple(t.shape), t.stride())
                    t = cast[same] if same in cast else cast.setdefault(same, t.to(dtype))
                state_dict[k] = t
        else:
            dtype = None  # already in the recipe's dtype
    if state_dict is None:
        model.save_pretrained(folder)
    else:
        model.save_pretrained(folder, state_dict=state_dict)
    config = getattr(model, "config", None)
    if not is_lora(model) and (is_sharded(model) or dtype is not None):
        # FSDP2 swaps the class to `FSDP<Name>`; HF writes the class name as the architecture (vLLM and
        # lm-eval read it), so write the original one back. HF also writes the LIVE weights' dtype
        # (the float32 masters) into config.json: write the dtype of the saved weights.
        name = type(model).__name__.removeprefix("FSDP")
        live = config.dtype
        config.architectures = [next(c for c in type(model).__mro__ if c.__name__ == name).__name__]
        if dtype is not None:
            config.dtype = str(dtype).removeprefix("torch.")
        config.save_pretrained(folder)
        config.dtype = live
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
    weights); rank 0 writes the rest. `trainer_state` must already hold full (gathered) states.

    `keep` (run.keep_checkpoints): None keeps all; N >= 1 keeps the N newest, never the one just written.
    A full disk (ENOSPC) removes the partial folder and raises one line naming the folder and the free space.
    """
    if keep is not None and keep < 1:
        raise CheckpointError(f"run.keep_checkpoints={keep}: use null (keep all) or a number >= 1")
    run_dir = Path(run_dir)
    final = run_dir / f"checkpoint-{step}"
    tmp = run_dir / f".checkpoint-{step}.tmp"
    with _no_space_is_one_line(run_dir, tmp, step, cleanup=rank == 0):
        if rank == 0:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        barrier()
        torch.save(rng_state(), tmp / f"rng-rank{rank}.pt")
        weights = gather_weights(model)  # FSDP: every rank takes part; rank 0 gets the full weights
        barrier()
        if rank == 0:
            save_weights(model, tokenizer, tmp / "model", state_dict=weights, master=True)
            torch.save({**trainer_state, "step": step, "world_size": world_size}, tmp / "trainer_state.pt")
            _fsync_tree(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(run_dir)  # make the rename itself durable
            if keep is not None:
                for old in list_checkpoints(run_dir)[:-keep]:
                    if old != final:  # a stale higher-numbered folder must not outrank the new one
                        shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


class _no_space_is_one_line:
    """ENOSPC while writing a checkpoint: remove the partial `.checkpoint-<step>.tmp` and raise one line."""

    def __init__(self, run_dir: Path, tmp: Path, step: int, cleanup: bool):
        self.run_dir, self.tmp, self.step, self.cleanup = run_dir, tmp, step, cleanup

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if not isinstance(exc, OSError) or exc.errno != errno.ENOSPC:
            return False
        if self.cleanup:
            shutil.rmtree(self.tmp, ignore_errors=True)
        free = shutil.disk_usage(self.run_dir).free
        raise CheckpointError(
            f"{self.run_dir}: no space left on device while writing checkpoint-{self.step} "
            f"({free / 2**20:.0f} MiB free); nothing was kept of it. Free space there (or raise "
            "run.save_every / set run.keep_checkpoints) and rerun with --resume"
        ) from None


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


# What numpy's own pickles name, allowed so that `rng-rank*.pt` files written before the pickle-free format
# (the numpy RNG state as a tuple holding an ndarray) still resume: an array rebuilt from a dtype and bytes,
# no callable beyond numpy's constructors.
_NUMPY_GLOBALS = [np.ndarray, np.dtype, np.array(0).__reduce__()[0], type(np.dtype(np.uint32))]


def load_state_file(path: Path):
    """A checkpoint state file, read without running pickled code (`weights_only=True`): one line refuses
    anything beyond tensors, plain values and numpy arrays (a crafted file is never executed)."""
    try:
        with torch.serialization.safe_globals(_NUMPY_GLOBALS):
            return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:
        try:  # lists the globals the file names, without running any of them
            names = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(path)) or "unknown"
        except Exception:  # noqa: BLE001  (a file too broken to list: the refusal stands)
            names = "unreadable"
        raise CheckpointError(
            f"{path}: refused to load: it names Python objects beyond tensors and plain values ({names[:200]}), "
            "which sd-bench never writes; remove that checkpoint folder if you did not write it"
        ) from None


def load_checkpoint(path: Path, *, model, rank: int = 0) -> dict:
    """Restore weights and this rank's RNG; return trainer_state (optimizer etc. are restored by the loop).
    The state is read (and a crafted file refused) before any weight is touched."""
    path = Path(path)
    state = load_state_file(path / "trainer_state.pt")
    rng_file = path / f"rng-rank{rank}.pt"
    rng = load_state_file(rng_file) if rng_file.is_file() else None
    load_weights(model, path / "model")
    if rng is not None:
        set_rng_state(rng)
    return state
