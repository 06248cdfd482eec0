"""What the trainer needs to know about an HF / peft causal LM, below both the engines and the model setup:
unwrapping peft, the hidden-state forward, and mixed precision on one process.

Layering (no cycle): lm <- distributed (the engines) <- model (load, Teacher) <- checkpoint.

Mixed precision, the paper's rule [verl/workers/fsdp_workers.py `_build_model_optimizer`: the actor is loaded
in float32 and wrapped with FSDP `MixedPrecision(param_dtype=bf16, reduce_dtype=fp32, buffer_dtype=fp32)`]:
the trainable ("master") weights and AdamW's state are float32, every forward and backward computes with
bfloat16 copies of the weights, and gradients arrive in the float32 masters. Under torchrun, FSDP2's
`MixedPrecisionPolicy` does this (sd_bench.train.distributed). On one process and under DDP,
`cast_for_compute` does the same thing: a forward pre-hook on every module with weights puts bfloat16 casts
of its float32 parameters in their place for the duration of the module's forward (a post-hook puts the
masters back). The casts are autograd ops, so the bfloat16 gradient of each cast flows back, cast to float32,
into the master's `.grad`. Why hooks and not `torch.autocast`: autocast casts only matmul inputs and leaves
the residual stream, embeddings and norms in float32, which is not what FSDP's parameter casting computes;
the hooks compute exactly what FSDP2 computes, so 1 process == 2 processes holds under mixed precision too.
Per-module hooks (not one context around the whole forward) also run again when activation checkpointing
recomputes a layer in the backward. Buffers (rotary tables) stay float32, as FSDP's `buffer_dtype=fp32`.
"""

from __future__ import annotations

import torch


def is_lora(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def causal_lm(model):
    """The *ForCausalLM inside a peft wrapper (LoRA layers are injected in place, so they stay active)."""
    return model.get_base_model() if is_lora(model) else model


def compute_dtype(model) -> torch.dtype:
    """The dtype forwards compute in: the `cast_for_compute` dtype, else the dtype of the weights."""
    lm = causal_lm(model)
    return getattr(lm, "sd_compute_dtype", None) or next(lm.parameters()).dtype


def save_dtype(model) -> torch.dtype:
    """The dtype of `final/` (the recipe's `model.dtype`), set by `sd_bench.train.model.load_model`."""
    return getattr(causal_lm(model), "sd_save_dtype", None) or compute_dtype(model)


def hidden_forward(lm, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """(final hidden states [B, T, H] after the last norm, lm_head weight [V, H]) in the compute dtype.

    The lm_head is applied by the losses (chunked), outside any module forward, so its weight is cast here:
    the same bfloat16 weight FSDP's mixed precision hands out (a no-op when it already is)."""
    out = lm.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    head = lm.get_output_embeddings().weight
    dtype = getattr(lm, "sd_compute_dtype", None)
    return out.last_hidden_state, head if dtype is None or head.dtype == dtype else head.to(dtype)


class _CastParams:
    """Forward pre-hook: the module's floating parameters replaced by casts to `dtype` during its forward.

    A class (not a closure) so `copy.deepcopy` of a model (the teacher copy) gets hooks of its own."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype

    def __call__(self, module, args):
        masters = {}
        for name, p in module._parameters.items():
            if p is not None and p.is_floating_point() and p.dtype != self.dtype:
                masters[name] = p
                module._parameters[name] = p.to(self.dtype)  # differentiable: grads reach the master
        module.__dict__.setdefault("_sd_masters", []).append(masters)


def _restore_params(module, args, output):
    stack = module.__dict__.get("_sd_masters")
    if stack:
        module._parameters.update(stack.pop())
    return output


def cast_for_compute(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Compute every forward of `model` with `dtype` copies of its weights (module docstring). Idempotent."""
    remove_compute_cast(model)
    for module in model.modules():
        if any(p is not None and p.is_floating_point() for p in module._parameters.values()):
            module.register_forward_pre_hook(_CastParams(dtype))
            module.register_forward_hook(_restore_params, always_call=True)
    causal_lm(model).sd_compute_dtype = dtype


def remove_compute_cast(model: torch.nn.Module) -> None:
    """Drop the hooks of `cast_for_compute` (FSDP2's mixed-precision policy takes over; see distributed)."""
    for module in model.modules():
        for key, hook in list(module._forward_pre_hooks.items()):
            if isinstance(hook, _CastParams):
                del module._forward_pre_hooks[key]
        for key, hook in list(module._forward_hooks.items()):
            if hook is _restore_params:
                del module._forward_hooks[key]
                module._forward_hooks_always_called.pop(key, None)
