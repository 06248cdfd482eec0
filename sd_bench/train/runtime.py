"""What both training loops need around the model: seeds, optimizer and schedule, the data sampler, the
metrics log.

Multi-process (torchrun / accelerate launch): `Dist`, `setup_distributed` and the DDP / FSDP engines live in
sd_bench.train.distributed; `Dist` and `setup_distributed` are re-exported here for existing imports.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sd_bench.train.distributed import Dist, setup_distributed  # noqa: F401  (re-exported)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizer(params, lr: float, weight_decay: float, betas) -> torch.optim.Optimizer:
    """AdamW (paper: wd 0.01). foreach=False keeps the update order identical across runs and processes."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas), foreach=False)


def warmup_factor(step: int, warmup_steps: int) -> float:
    """The learning-rate multiplier of training step `step` (0-based): linear from 0 at step 0 to 1 at step
    `warmup_steps`, then 1 (constant).

    Paper code: verl/utils/torch_functional.py `get_constant_schedule_with_warmup` (`current_step /
    max(1, num_warmup_steps)` while below the warmup, else 1.0), built in verl/workers/fsdp_workers.py
    `_build_model_optimizer` from `optim.lr_warmup_steps=10` (experiments/math/run_math_sdpo.sh) and stepped
    once per training step, after the update, in `update_actor`. So with 10 warmup steps step 0 trains at
    lr 0 (its AdamW moments still accumulate), step k < 10 at k/10 of the lr, step 10 on at the full lr.
    """
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return step / warmup_steps


def build_scheduler(optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """`warmup_factor` as a LambdaLR; call `.step()` once per training step (after all its mini-batches)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_factor(step, warmup_steps))


def warmup_warning(total_steps: int, warmup_steps: int) -> str | None:
    """The one warning for a run too short to reach its learning rate (None when it does)."""
    if warmup_steps <= 0 or total_steps > warmup_steps:
        return None
    reached = warmup_factor(total_steps - 1, warmup_steps)
    return (
        f"warning: this run has {total_steps} training step(s) but optim.warmup_steps={warmup_steps}: its "
        f"last step trains at {reached:.0%} of optim.lr and it never reaches the full learning rate "
        f"(step 0 trains at lr 0, as the paper's verl schedule does); raise run.max_steps above "
        f"{warmup_steps} or lower optim.warmup_steps"
    )


class Sampler:
    """Epoch-wise shuffled indices with a resumable position (the data sampler's state in checkpoints).

    An epoch is a random permutation of all rows, as verl's RandomSampler over the dataset is
    (verl/trainer/main_ppo.py `create_rl_sampler`, data.shuffle true); with the Hub file's repeats a problem
    can occur more than once in a step, as in the paper's runs."""

    def __init__(self, size: int, seed: int, shuffle: bool = True):
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.epoch, self.position = 0, 0
        self._cached: tuple[int, list[int]] | None = None  # (epoch, order): 1.79M rows at paper scale

    def _order(self) -> list[int]:
        if self._cached is not None and self._cached[0] == self.epoch:
            return self._cached[1]
        if not self.shuffle:
            order = list(range(self.size))
        else:
            g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        self._cached = (self.epoch, order)
        return order

    def take_within_epoch(self, count: int) -> list[int]:
        """Up to `count` indices, never crossing into the next epoch: an epoch's last batch is short, so each
        item is drawn exactly once per epoch (SFT epochs). An exhausted epoch rolls over first."""
        if self.position >= self.size:
            self.epoch, self.position = self.epoch + 1, 0
        need = min(count, self.size - self.position)
        out = self._order()[self.position : self.position + need]
        self.position += need
        return out

    def take(self, count: int) -> list[int]:
        out: list[int] = []
        while len(out) < count:
            if self.position >= self.size:
                self.epoch, self.position = self.epoch + 1, 0
            order = self._order()
            need = min(count - len(out), self.size - self.position)
            out.extend(order[self.position : self.position + need])
            self.position += need
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]


def kept_records(path: Path, resume_step: int) -> list[str]:
    """The lines of metrics.jsonl that a run resumed at `resume_step` keeps: records of steps <= resume_step.

    A line that is not a JSON object (a torn last line from a kill mid-write, or damage) is dropped with one
    warning naming the file and line, so a damaged log never makes a run impossible to resume. Steps after
    the checkpoint are dropped (they are redone). Lines are split on "\n" only (JSON may hold U+2028)."""
    kept, bad = [], []
    for n, line in enumerate(path.read_bytes().decode("utf-8", errors="replace").split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            bad.append(n)
            continue
        if not isinstance(record, dict):
            bad.append(n)
        elif record.get("step", 0) <= resume_step:
            kept.append(line)
    if bad:
        print(
            f"warning: {path}: dropped {len(bad)} unreadable line(s) (line {', '.join(map(str, bad[:5]))}; "
            "a torn write from an interrupted run)",
            file=sys.stderr,
        )
    return kept


class MetricsLog:
    """metrics.jsonl (one object per step), plus wandb / tensorboard / trackio when enabled and installed.

    trackio (PyPI `trackio`, local-first, works offline) writes under `<run_dir>/trackio` unless TRACKIO_DIR
    is set; `trackio show --project sd-bench` (with that TRACKIO_DIR) opens its dashboard."""

    def __init__(
        self,
        run_dir: Path,
        *,
        enabled: bool,
        resume_step: int = 0,
        wandb: bool = False,
        tensorboard: bool = False,
        trackio: bool = False,
        config: dict | None = None,
    ):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.wandb = self.tb = self.trackio = None
        if not enabled:
            return
        if self.path.exists():  # resume: drop steps after the checkpoint (they will be redone)
            kept = kept_records(self.path, resume_step)
            tmp = self.path.with_name(self.path.name + ".tmp-resume")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, self.path)
        if wandb:
            try:
                import wandb as wandb_module

                self.wandb = wandb_module.init(config=config, dir=str(run_dir), resume="allow")
            except ImportError:
                print("wandb is not installed; logging to metrics.jsonl only")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except ImportError:
                print("tensorboard is not installed; logging to metrics.jsonl only")
        if trackio:
            os.environ.setdefault("TRACKIO_DIR", str(Path(run_dir).resolve() / "trackio"))  # read at import
            try:
                import trackio as trackio_module
            except ImportError:
                print("trackio is not installed (pip install trackio); logging to metrics.jsonl only")
            else:
                # no system-metrics thread (auto_log_*): the trainer logs its own memory and speed
                self.trackio = trackio_module.init(
                    project="sd-bench",
                    name=Path(run_dir).resolve().name,
                    config=config,
                    resume="allow",
                    auto_log_cpu=False,
                    auto_log_gpu=False,
                )

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record, sort_keys=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        numeric = {k: v for k, v in record.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        if self.wandb is not None:
            self.wandb.log(numeric, step=record["step"])
        if self.tb is not None:
            for k, v in numeric.items():
                self.tb.add_scalar(k, v, record["step"])
        if self.trackio is not None:  # `step` is trackio's own (reserved) key
            self.trackio.log({k: v for k, v in numeric.items() if k != "step"}, step=record["step"])

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
        if self.tb is not None:
            self.tb.close()
        if self.trackio is not None:
            self.trackio.finish()


def peak_memory_mib(device: torch.device) -> float:
    """Peak GPU memory allocated, or this process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Timer:
    def __init__(self):
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.start
