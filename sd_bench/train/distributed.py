"""Data parallelism with the engines torch ships: DDP for LoRA, FSDP2 (`fully_shard`) for full fine-tuning.

Launch: `torchrun --nproc-per-node N -m sd_bench.cli train ...` or
`accelerate launch --multi_gpu --num_processes N -m sd_bench.cli train ...` (accelerate hands this to
torch.distributed.run; it also works on a CPU-only machine, with gloo). Both set RANK / WORLD_SIZE /
LOCAL_RANK / MASTER_ADDR / MASTER_PORT. Note: `accelerate launch --cpu --num_processes N` starts ONE process
(accelerate runs several CPU processes only through MPI, `--mpirun_hostfile`). Backend: gloo on CPU, nccl on
GPU. One process: no engine at all. `distributed.strategy` picks the engine: auto = ddp for LoRA, fsdp for
full fine-tuning (ddp also works for full fine-tuning while a replica fits in one device's memory).

Every process samples its shard of each global mini-batch; the engine makes the update equal to the one a
single process would make on the whole mini-batch. Why each piece is here:

- The losses take final hidden states and the lm_head weight (sd_bench.train.losses never builds
  [tokens, vocab] logits), so the gradient forward is not the HF module's `forward`. It must still go
  through the engine, or DDP never arms its gradient hooks and FSDP never gathers the root's weights:
  DDP wraps `HiddenStates(model)`; FSDP registers `sd_hidden_states` on the root with
  `register_fsdp_forward_method`. `sd_bench.train.model.hidden_states` dispatches to either.
- Each micro-batch loss is divided by the mini-batch's GLOBAL token count (token-mean over all processes),
  so the gradient we want is the SUM over processes. Both engines average by default: DDP gets a sum
  comm hook, FSDP `set_gradient_divide_factor(1.0)` with sum-only comms.
- Ranks hold different numbers of samples (SDPO drops samples without a successful sibling), but each
  engine forward/backward is a collective: every rank must run as many. The loops pad to the global maximum
  number of micro-batches with zero-weighted dummy micro-batches (`micro_batch_count`).
- Teacher passes are no-grad and never go through DDP: the LoRA frozen teacher is peft's
  `disable_adapter()` on the unwrapped model, the LoRA EMA teacher swaps adapter weights in place.
- No-grad work whose count differs between ranks (HF `generate` stops at different lengths, per-rank
  log-prob passes) must not be a collective: DDP runs it on the unwrapped model; FSDP gathers every weight
  once (`inference()`), runs locally, then reshards.
- Full-FT teacher copy (frozen / EMA) under FSDP: sharded exactly like the student (`prepare_copy`), so it
  costs 1/N of a model per process, and the EMA update theta_T <- (1 - r) theta_T + r theta_S is a local
  op on matching shards. Its forwards are collectives (the padding keeps their counts equal). Under DDP and
  with one process it is a plain replica.
- Checkpoints: the full state dict is gathered to rank 0 on CPU (`full_state_dict`), so `final/` and
  `checkpoint-*/model/` stay plain HF folders; the optimizer state likewise (keyed by parameter name), and
  both are loaded back shard by shard on resume.

- Mixed precision (float32 masters, bfloat16 compute; sd_bench.train.lm): FSDP2's `MixedPrecisionPolicy`
  (`fully_shard_decoder`); DDP and one process: the cast hooks of `sd_bench.train.lm.cast_for_compute`.

FSDP2 runs on CPU with gloo in torch 2.13, mixed precision included (tests/test_train_multiprocess.py:
2 processes == 1). vLLM rollouts under several processes: one engine per rank, FSDP2 shards gathered one tensor
at a time (sd_bench.train.rollout_vllm; tests/test_vllm_multiprocess.py: 2 processes == 1 on CPU). Not done:
FSDP + LoRA (refused by config validation and by `Engine`, naming the supported combinations), CPU offload,
HSDP.
"""

from __future__ import annotations

import contextlib
import os
import types
from dataclasses import dataclass, field

import torch

from sd_bench.train.lm import causal_lm, compute_dtype, hidden_forward, is_lora, remove_compute_cast


@dataclass
class Dist:
    """This process's place in the job (rank 0 of 1 without a launcher)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def _all_reduce(self, value: float, op: str) -> float:
        if self.world_size == 1:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t, op=getattr(torch.distributed.ReduceOp, op))
        return float(t.item())

    def all_reduce_sum(self, value: float) -> float:
        return self._all_reduce(value, "SUM")

    def all_reduce_max(self, value: float) -> float:
        return self._all_reduce(value, "MAX")


def setup_distributed() -> Dist:
    """Read RANK / WORLD_SIZE (torchrun, accelerate launch); gloo on CPU, nccl on GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    # `accelerate launch` with an FSDP config sets FSDP_CPU_RAM_EFFICIENT_LOADING=true by default, and then
    # transformers' from_pretrained leaves the weights EMPTY on every local rank but 0 (modeling_utils:
    # `is_fsdp_enabled() and not is_local_dist_rank_0()`), expecting accelerate's FSDP to broadcast them.
    # sd-bench shards the model itself from the full copy each rank loads: switch that off.
    if os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING", "").lower() in ("1", "true", "yes"):
        os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"
    return Dist(rank=rank, world_size=world, device=device)


def resolve_strategy(strategy: str, finetune: str) -> str:
    """`auto` -> ddp for LoRA, fsdp for full fine-tuning."""
    if strategy == "auto":
        return "ddp" if finetune == "lora" else "fsdp"
    return strategy


# ------------------------------------------------------------------------------ sharded-or-not helpers


def is_sharded(module: torch.nn.Module) -> bool:
    """True when FSDP2 has replaced the module's parameters by DTensor shards."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def _fsdp_modules(module: torch.nn.Module) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in module.modules() if isinstance(m, FSDPModule)]


def reshard(module: torch.nn.Module) -> None:
    """Free gathered weights (FSDP2 keeps the root's weights gathered after a forward); no-op otherwise."""
    for m in _fsdp_modules(module):
        m.reshard()


def full_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Plain tensors. Sharded: a collective (call on every rank); rank 0 gets the full dict on CPU, the other
    ranks {}. Not sharded: `module.state_dict()` (live tensors, not copies)."""
    if not is_sharded(module):
        return module.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dict(module: torch.nn.Module, state: dict[str, torch.Tensor], strict: bool = True):
    """Load a full (plain) state dict; a sharded module keeps its shard. Returns (missing, unexpected)."""
    if not is_sharded(module):
        return module.load_state_dict(state, strict=strict)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    return set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True, strict=strict))


def optimizer_state_dict(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Sharded: the full optimizer state keyed by parameter name, on rank 0 (collective); else the usual."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def load_optimizer_state_dict(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load either format into either kind of model, so a checkpoint resumes under another process count or
    engine: by position (one process, DDP) or by parameter name (FSDP's full optimizer state)."""
    by_name = any(isinstance(k, str) for k in state.get("state", {}))
    if not is_sharded(model) and not by_name:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    if not by_name:  # the optimizer was built over the trainable parameters in `named_parameters` order
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        groups = [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]
        state = {"state": {names[i]: v for i, v in state["state"].items()}, "param_groups": groups}

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """torch's clip (DTensor-aware: the norm of sharded grads is the global norm); returns the norm."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


# -------------------------------------------------------------------------------------------- engines


class HiddenStates(torch.nn.Module):
    """forward(ids, mask) -> (final hidden states [B, T, H], lm_head weight [V, H]): the module DDP wraps,
    so the loss's hidden-state entry point goes through DDP's forward (and its gradient hooks)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.inner = model

    def forward(self, input_ids, attention_mask):
        return hidden_forward(causal_lm(self.inner), input_ids, attention_mask)


def _sum_hook(process_group, bucket):  # no annotations: DDP checks them, and they are strings here
    """DDP comm hook: all-reduce SUM (DDP's default divides by the world size; our losses are already
    divided by the global token count)."""
    work = torch.distributed.all_reduce(bucket.buffer(), group=process_group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def fully_shard_decoder(lm: torch.nn.Module) -> torch.nn.Module:
    """FSDP2: one unit per decoder layer + the root (embeddings, final norm, lm_head), gradients summed.
    Expects the HF decoder-only layout (`lm.model.layers`: Qwen, Llama, Mistral, ...).

    Mixed precision: when the weights are float32 masters computing in bfloat16 (sd_bench.train.lm), the
    one-process cast hooks give way to FSDP2's `MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`,
    the paper's setting [verl/workers/fsdp_workers.py `_build_model_optimizer`: `MixedPrecision(param_dtype=
    bf16, reduce_dtype=fp32, buffer_dtype=fp32)`]: weights gathered and cast to bf16 for each forward and
    backward, gradients reduce-scattered in fp32 into the fp32 shards. Buffers are never cast by FSDP2."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    layers = getattr(getattr(lm, "model", None), "layers", None)
    if layers is None:
        raise ValueError(
            f"distributed.strategy=fsdp: {type(lm).__name__} has no `.model.layers`; "
            "use distributed.strategy=ddp"
        )
    master, dtype = next(lm.parameters()).dtype, compute_dtype(lm)
    remove_compute_cast(lm)  # FSDP's own hooks cast (they must see the shards, not casts of them)
    policy = MixedPrecisionPolicy()  # no casts
    if dtype != master:
        policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for layer in layers:
        fully_shard(layer, mp_policy=policy)
    lm.sd_hidden_states = types.MethodType(hidden_forward, lm)
    fully_shard(lm, mp_policy=policy)
    register_fsdp_forward_method(lm, "sd_hidden_states")
    for m in _fsdp_modules(lm):
        m.set_gradient_divide_factor(1.0)  # a plain SUM: our losses are already divided by the global tokens
        m.set_force_sum_reduction_for_comms(True)  # else factor 1 becomes PREMUL_SUM, which gloo lacks
    return lm


class Engine:
    """The training model as the data-parallel engine sees it.

    `model`: the HF / peft model (under FSDP its weights are sharded in place); use it for no-grad work
    inside `inference()`. `train_module`: what gradient forwards go through (DDP wrapper or the model).
    """

    def __init__(
        self, model: torch.nn.Module, dist: Dist, strategy: str, find_unused_parameters: bool = False
    ):
        self.model, self.dist = model, dist
        self.strategy = strategy if dist.world_size > 1 else "none"
        self.train_module = model
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            self.train_module = DistributedDataParallel(
                HiddenStates(model),
                device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
                broadcast_buffers=False,  # buffers (rotary tables) are equal; a broadcast per forward would
                # be a collective inside rank-local no-grad passes
                find_unused_parameters=find_unused_parameters,
            )
            self.train_module.register_comm_hook(None, _sum_hook)
        elif self.strategy == "fsdp":
            if is_lora(model):  # config validation refuses it first; this guards direct callers
                from sd_bench.train.config import FSDP_LORA_UNSUPPORTED, ConfigError

                raise ConfigError(f"Engine: {FSDP_LORA_UNSUPPORTED}")
            fully_shard_decoder(model)
        elif self.strategy != "none":
            raise ValueError(f"distributed.strategy: unknown engine {strategy!r} (auto | ddp | fsdp)")
        if dist.main and self.strategy != "none":
            import sys

            print(
                f"data parallel: {self.strategy} over {dist.world_size} processes "
                f"({torch.distributed.get_backend()})",
                file=sys.stderr,
            )

    def prepare_copy(self, copy: torch.nn.Module) -> torch.nn.Module:
        """A frozen/EMA teacher copy, made before the student was sharded: sharded the same way under FSDP."""
        return fully_shard_decoder(copy) if self.strategy == "fsdp" else copy

    @contextlib.contextmanager
    def accumulate(self, sync: bool):
        """Gradient accumulation over micro-batches. DDP: all-reduce only on the last micro-batch (`sync`);
        FSDP: reduce-scatter every micro-batch into the sharded gradient (keeps gradient memory sharded)."""
        if self.strategy == "ddp" and not sync:
            with self.train_module.no_sync():
                yield
        else:
            yield

    @contextlib.contextmanager
    def inference(self):
        """The model with all its weights local, for no-grad work run a different number of times per rank
        (generate, log-prob passes). FSDP: gather everything once (a collective), reshard on exit."""
        if self.strategy != "fsdp":
            yield self.model
            return
        modules = _fsdp_modules(self.model)
        for m in modules:
            m.unshard()
        inner = [m for m in modules if m is not self.model]  # the root keeps its default
        for m in inner:
            m.set_reshard_after_forward(False, recurse=False)
        try:
            yield self.model
        finally:
            for m in inner:
                m.set_reshard_after_forward(True, recurse=False)
            reshard(self.model)

    def micro_batch_count(self, local: int) -> int:
        """The number of micro-batches every rank must run: the maximum over ranks (engine forwards and
        backwards are collectives). One process: `local`."""
        if self.strategy == "none":
            return local
        return int(self.dist.all_reduce_max(local))
