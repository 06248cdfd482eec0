"""What a training launch will be, before it starts: processes, data-parallel engine, rollout engine, and the
memory each GPU needs for the training state (for `sd-bench reproduce --dry-run`; issue 10).

The memory estimate counts what the trainer keeps per GPU, from the parameter count P and the engine
(sd_bench.train.distributed), in bytes:
- FSDP2 (full fine-tuning over N processes): master weights, gradients and AdamW's two moments, all in
  `model.master_dtype` and sharded: (1 + 1 + 2) x P x bytes(master) / N; a frozen / EMA teacher copy (SDPO,
  teacher.mode != live) sharded the same way: P x bytes(master) / N; plus the peak of the rollout phase,
  where `Engine.inference()` gathers the whole model in the compute dtype for the rank-local log-prob passes:
  P x bytes(model.dtype).
- DDP / one process, full fine-tuning: the same state unsharded (N = 1), no gather peak.
- DDP / one process, LoRA: the frozen base in `model.dtype` (P x bytes(dtype)); the adapter and its AdamW state
  are small (rank r: ~2 r (d_in + d_out) per adapted matrix) and not counted.
- vLLM rollouts (`rollout.backend=vllm`): `rollout.gpu_memory_utilization` of each GPU on top (its weights
  in the compute dtype and its KV cache); with `rollout.vllm_sleep` it is given back during updates.
Activations (micro-batch size x sequence length dependent) are not counted: the figure is a floor.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import asdict, dataclass

from sd_bench.train.config import TrainConfig

_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class Launch:
    processes: int
    strategy: str  # none (one process) | ddp | fsdp
    rollout_backend: str  # hf | vllm
    rollout_engines: str  # where rollouts run, in words
    parameters: int | None  # P, when known
    train_state_gib_per_gpu: float | None  # the estimate of the module docstring (None: P unknown)
    vllm_fraction_per_gpu: float  # rollout.gpu_memory_utilization (0 for hf rollouts)

    def line(self) -> str:
        """One line for a dry-run listing."""
        memory = (
            "memory unknown (parameter count unknown)"
            if self.train_state_gib_per_gpu is None
            else f"~{self.train_state_gib_per_gpu:.1f} GiB/GPU training state"
        )
        if self.vllm_fraction_per_gpu:
            memory += f" + vLLM {self.vllm_fraction_per_gpu:.0%} of each GPU"
        return (
            f"{self.processes} process{'es' if self.processes > 1 else ''}, strategy {self.strategy}, "
            f"rollouts {self.rollout_backend} ({self.rollout_engines}), {memory}"
        )

    def as_dict(self) -> dict:
        return asdict(self)


def processes_from_launcher(launcher: str | None) -> int:
    """Processes a launcher prefix starts: `torchrun --nproc-per-node 4 --nnodes 2 ...` -> 8;
    `accelerate launch --num_processes 4` -> 4 (accelerate counts all machines); none -> 1."""
    if not launcher:
        return 1
    words = shlex.split(launcher)

    def value(*names: str) -> str | None:
        for i, word in enumerate(words):
            for name in names:
                if word == name and i + 1 < len(words):
                    return words[i + 1]
                if word.startswith(name + "="):
                    return word.split("=", 1)[1]
        return None

    per_node = value("--nproc-per-node", "--nproc_per_node")
    if per_node is not None:
        nnodes = value("--nnodes") or "1"
        low = re.split(r"[:]", nnodes)[-1]  # elastic "MIN:MAX": the most it can be
        return int(per_node) * int(low) if per_node.isdigit() and low.isdigit() else 1
    total = value("--num_processes", "--num-processes")
    return int(total) if total and total.isdigit() else 1


def describe(cfg: TrainConfig, world_size: int, parameters: int | None = None) -> Launch:
    """The launch `cfg` gets with `world_size` processes; `parameters` = the model's parameter count P (None:
    read from the model's config.json when it is local or cached, else unknown)."""
    from sd_bench.train.distributed import resolve_strategy

    strategy = resolve_strategy(cfg.distributed.strategy, cfg.model.finetune) if world_size > 1 else "none"
    if parameters is None:
        parameters = count_parameters(cfg.model.path)
    vllm = cfg.rollout.backend == "vllm" and cfg.algorithm != "sft"
    if cfg.algorithm == "sft":
        engines = "none: SFT trains on a traces file"
    elif vllm:
        engines = "one vLLM engine per process, synced after every update"
        if cfg.rollout.vllm_sleep:
            engines += ", asleep during updates"
    else:
        engines = "HF sampling on the training model"
    return Launch(
        processes=world_size,
        strategy=strategy,
        rollout_backend="-" if cfg.algorithm == "sft" else cfg.rollout.backend,
        rollout_engines=engines,
        parameters=parameters,
        train_state_gib_per_gpu=None
        if parameters is None
        else train_state_bytes(cfg, strategy, world_size, parameters) / 2**30,
        vllm_fraction_per_gpu=cfg.rollout.gpu_memory_utilization if vllm else 0.0,
    )


def train_state_bytes(cfg: TrainConfig, strategy: str, world_size: int, parameters: int) -> float:
    """Bytes per GPU of the training state (module docstring)."""
    compute = _BYTES[cfg.model.dtype]
    if cfg.model.finetune == "lora":
        return parameters * compute
    master = _BYTES[getattr(cfg.model, "master_dtype", cfg.model.dtype)]
    shards = world_size if strategy == "fsdp" else 1
    teacher = cfg.algorithm == "sdpo" and cfg.teacher.mode != "live"
    state = (4 + (1 if teacher else 0)) * parameters * master / shards
    return state + (parameters * compute if strategy == "fsdp" else 0)


def count_parameters(model_path: str) -> int | None:
    """P from the model's config alone (built on the meta device: no weights read, nothing downloaded); None
    when the config is not local or in the Hugging Face cache (or is the smoke scale's `tiny`)."""
    if model_path == "tiny":
        return None
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(model_path, local_files_only=True)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        return sum(p.numel() for p in model.parameters())
    except (OSError, ValueError, ImportError):
        return None
