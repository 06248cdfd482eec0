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


def build_scheduler(optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over `warmup_steps` training steps, then constant (paper: warmup 10; verl's default)."""

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Sampler:
    """Epoch-wise shuffled indices with a resumable position (the data sampler's state in checkpoints)."""

    def __init__(self, size: int, seed: int, shuffle: bool = True):
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.epoch, self.position = 0, 0

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        return torch.randperm(self.size, generator=g).tolist()

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


class MetricsLog:
    """metrics.jsonl (one object per step), plus wandb / tensorboard when enabled and installed."""

    def __init__(
        self,
        run_dir: Path,
        *,
        enabled: bool,
        resume_step: int = 0,
        wandb: bool = False,
        tensorboard: bool = False,
        config: dict | None = None,
    ):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.wandb = self.tb = None
        if not enabled:
            return
        if self.path.exists():  # resume: drop steps after the checkpoint (they will be redone)
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
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

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
        if self.tb is not None:
            self.tb.close()


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
