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
    """(model, tokenizer, base_path): a causal LM (peft-wrapped for LoRA) in train mode, and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_path = resolve_model_path(cfg, output_dir)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=DTYPES[cfg.dtype]).to(device)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
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
    model.train()
    return model, tokenizer, base_path


def is_lora(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def causal_lm(model):
    """The *ForCausalLM inside a peft wrapper (LoRA layers are injected in place, so they stay active)."""
    return model.get_base_model() if is_lora(model) else model


def trainable_parameters(model) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def hidden_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """(final hidden states [B, T, H] after the last norm, lm_head weight [V, H]) of one forward pass.

    Under a data-parallel engine (sd_bench.train.distributed) the pass must go through the engine's forward:
    `model` is then the DDP wrapper of `HiddenStates`, or an FSDP root carrying `sd_hidden_states`."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model(input_ids, attention_mask)
    lm = causal_lm(model)
    engine_forward = getattr(lm, "sd_hidden_states", None)
    if engine_forward is not None:
        return engine_forward(input_ids, attention_mask)
    out = lm.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state, lm.get_output_embeddings().weight


class Teacher:
    """The teacher's weights. State lives here (the EMA copy), hence a class.

    - frozen: the initial weights (paper: EMA rate 0.0). LoRA: the same model with the adapter disabled
      (peft's `disable_adapter()`), no second copy. Full FT: a frozen deepcopy.
    - ema: theta_T <- (1 - r) theta_T + r theta_S after each optimizer update (paper ablation r = 0.05).
      LoRA: an EMA copy of the adapter weights only, swapped into the model for the teacher's forward.
      Full FT: an EMA deepcopy.
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
        """After each optimizer update: the EMA step (a no-op for frozen and live)."""
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
