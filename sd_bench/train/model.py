"""Model setup shared by both loops: load (hub id, local folder or the tiny model), LoRA or full FT, the
teacher's weights (frozen / EMA / live), and the forward pass that returns final hidden states.

Why hidden states and not logits: the losses (sd_bench.train.losses) project hidden states through the
lm_head one chunk of tokens at a time, so [tokens, vocab] logits never exist for the whole batch.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import torch

from sd_bench.train.config import ModelConfig
from sd_bench.train.distributed import full_state_dict, load_full_state_dict, reshard
from sd_bench.train.lm import (  # causal_lm, is_lora, compute_dtype: also imported from here
    cast_for_compute,
    causal_lm,
    compute_dtype,
    hidden_forward,
    is_lora,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(cfg: ModelConfig, output_dir: Path) -> str:
    """`tiny` -> build sd_bench.tiny_model (seed 0) into <output>/tiny-model once; else the path or hub id."""
    if cfg.path != "tiny":
        return cfg.path
    from sd_bench.tiny_model import build_tiny_qwen3

    target = Path(output_dir) / "tiny-model"
    if not (target / "config.json").is_file():
        build_tiny_qwen3(target, seed=0)
    return str(target)


def load_model(cfg: ModelConfig, output_dir: Path, device: torch.device | str = "cpu"):
    """(model, tokenizer, base_path): a causal LM (peft-wrapped for LoRA) in train mode, and its tokenizer;
    loaded in `load_dtype(cfg)`, then `prepare_model`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_path = resolve_model_path(cfg, output_dir)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=load_dtype(cfg)).to(device)
    return prepare_model(model, cfg), tokenizer, base_path


def load_dtype(cfg: ModelConfig) -> torch.dtype:
    """The dtype the weights are read in: the master dtype for full fine-tuning (they all train), the
    compute dtype for LoRA (the frozen base never trains: a float32 copy would only cost memory)."""
    master = getattr(cfg, "master_dtype", None) or cfg.dtype
    return DTYPES[cfg.dtype if cfg.finetune == "lora" else master]


def prepare_model(model, cfg: ModelConfig):
    """Activation checkpointing, liger, LoRA and precision on a model already in `load_dtype(cfg)` (also
    for benchmarks/bench_step.py, which builds random models in memory). Returns the model in train mode.

    Precision (sd_bench.train.lm, the paper's FSDP mixed precision): the weights that train are held in
    `cfg.master_dtype` (float32), every forward computes in `cfg.dtype` (bfloat16), `final/` is written in
    `cfg.dtype`. Full fine-tuning computes through the cast hooks of `sd_bench.train.lm.cast_for_compute`.
    LoRA: adapters in the master dtype over a `cfg.dtype` base. master_dtype == dtype: no casts at all (pure
    bfloat16 AdamW: not the paper)."""
    dtype = DTYPES[cfg.dtype]
    master = DTYPES[getattr(cfg, "master_dtype", None) or cfg.dtype]
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if getattr(cfg, "liger", False):
        apply_liger(model)
    if cfg.finetune == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.lora_targets),
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
        for _, p in trainable_parameters(model):  # peft upcasts adapters of a bf16 base to fp32; be explicit
            p.data = p.data.to(master)
    if master != dtype and cfg.finetune != "lora":
        cast_for_compute(model, dtype)
    # LoRA needs no casts: the base is already in `dtype`, and peft computes float32 adapters in float32
    # (it casts the layer input to the adapter's dtype and the sum back to the base's)
    causal_lm(model).sd_save_dtype = dtype
    model.train()
    return model


def apply_liger(model) -> None:
    """`model.liger=true`: liger-kernel's fused RMSNorm, RoPE and SwiGLU in place of the HF modules (Triton
    kernels: CUDA only). The cross-entropy / lm_head kernels stay off: the losses project hidden states
    themselves (sd_bench.train.losses)."""
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError as err:
        raise RuntimeError(
            f"model.liger=true needs liger-kernel (pip install liger-kernel==0.8.5): {err}"
        ) from None
    _apply_liger_kernel_to_instance(
        model=model,
        rope=True,
        rms_norm=True,
        swiglu=True,
        cross_entropy=False,
        fused_linear_cross_entropy=False,
    )


def trainable_parameters(model) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def hidden_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """(final hidden states [B, T, H] after the last norm, lm_head weight [V, H]) of one forward pass, both in
    the compute dtype (sd_bench.train.lm: float32 masters, bfloat16 compute).

    Under a data-parallel engine (sd_bench.train.distributed) the pass must go through the engine's forward:
    `model` is then the DDP wrapper of `HiddenStates`, or an FSDP root carrying `sd_hidden_states`."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model(input_ids, attention_mask)
    lm = causal_lm(model)
    engine_forward = getattr(lm, "sd_hidden_states", None)
    if engine_forward is not None:
        return engine_forward(input_ids, attention_mask)
    return hidden_forward(lm, input_ids, attention_mask)


class Teacher:
    """The teacher's weights. State lives here (the EMA copy), hence a class.

    - frozen: the initial weights (paper: EMA rate 0.0). LoRA: the same model with the adapter disabled
      (peft's `disable_adapter()`), no second copy. Full FT: a frozen deepcopy held in the compute dtype.
    - ema: theta_T <- (1 - r) theta_T + r theta_S once per training step (paper ablation r = 0.05).
      LoRA: an EMA copy of the adapter weights only, swapped into the model for the teacher's forward.
      Full FT: an EMA deepcopy. Both accumulate in the masters' dtype (float32) and compute in bfloat16.
    - live: the current student weights (no copy).

    Several processes: build the Teacher before the engine shards the student, then `prepare(...)` the copy
    with the engine (FSDP shards it like the student, so the EMA update is a local op on matching shards).
    """

    def __init__(self, model, mode: str, ema_rate: float):
        self.mode, self.rate, self.lora = mode, ema_rate, is_lora(model)
        self.copy = None
        self.ema: dict[str, torch.Tensor] | None = None
        if mode in ("frozen", "ema") and not self.lora:
            self.copy = copy.deepcopy(model).eval()
            self.copy.requires_grad_(False)
            if mode == "frozen":  # held in the compute dtype: the forward computes exactly the same (it casts
                # the masters to that dtype anyway) at half the memory of float32 masters
                dtype = compute_dtype(model)
                for p in self.copy.parameters():  # parameters only: buffers (rotary tables) stay float32
                    p.data = p.data.to(dtype)
            # ema: the copy keeps the masters' dtype (float32): the accumulator of theta_T <- (1 - r) theta_T
            # + r theta_S, as in the paper's code (the EMA teacher is a float32 FSDP module there too)
        elif mode == "ema":
            self.ema = {n: p.detach().clone() for n, p in trainable_parameters(model)}

    def prepare(self, prepare_copy) -> None:
        """Give the full-FT copy to the data-parallel engine (`Engine.prepare_copy`); a no-op without copy."""
        if self.copy is not None:
            self.copy = prepare_copy(self.copy)

    @contextlib.contextmanager
    def weights(self, student):
        """A model whose forward is the teacher's (use under torch.no_grad)."""
        if self.copy is not None:
            # FSDP keeps the root's weights (embeddings, norm, lm_head) gathered after a forward; the loss
            # still reads the returned lm_head weight, so they are freed in `update`, after the backward
            yield self.copy
        elif self.mode == "frozen":
            with student.disable_adapter():
                yield student
        elif self.mode == "ema":
            params = dict(trainable_parameters(student))
            saved = {n: p.detach().clone() for n, p in params.items()}
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(self.ema[n])
            try:
                yield student
            finally:
                with torch.no_grad():
                    for n, p in params.items():
                        p.copy_(saved[n])
        else:
            yield student

    @torch.no_grad()
    def update(self, student) -> None:
        """Once per training step, after all its mini-batches (paper: dp_actor.py `update_policy` ->
        `_update_teacher`): the EMA step (a no-op for frozen and live)."""
        if self.copy is not None:
            reshard(self.copy)  # FSDP: back to shards, so the EMA step pairs shard with shard
        if self.mode != "ema":
            return
        student_params = dict(trainable_parameters(student))
        if self.ema is not None:
            for n, t in self.ema.items():
                t.lerp_(student_params[n].detach(), self.rate)
        else:
            for n, t in self.copy.named_parameters():
                if n in student_params:
                    t.lerp_(student_params[n].detach(), self.rate)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint must hold to resume exactly (empty for frozen LoRA and live)."""
        if self.ema is not None:
            return {n: t.clone() for n, t in self.ema.items()}
        if self.copy is not None and self.mode == "ema":  # sharded: gathered on rank 0 (a collective)
            return {n: t.clone() for n, t in full_state_dict(self.copy).items()}
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.ema is not None:
            for n, t in self.ema.items():
                t.copy_(state[n])
        elif self.copy is not None and self.mode == "ema":
            load_full_state_dict(self.copy, state)
