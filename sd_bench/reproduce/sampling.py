"""The one sampler of `sd-bench reproduce` (Table 1's probes, Table 2's traces): the trainer's rollouts.

Why the trainer's and not a sampler of our own: the responses that select problems and make traces are then
drawn by the code that draws the on-policy rollouts (sd_bench.train.rollout: `HFRollouts`, batched KV-cache
inverse-CDF sampling with per-(prompt, sample) random streams; `VLLMRollouts`, the same interface on an
in-process vLLM engine synced from the loaded weights), at every scale. A prompt's samples depend only on its
seed (`rollout.sample_seed(seed, salt, problem index)`), never on the batch it shares.

Also here: which folder or hub id a stage's model reference loads (`resolve_model`), the backend and dtype
choices, and freeing accelerator memory between stages.
"""

from __future__ import annotations

import gc
import json
import re
from pathlib import Path

CHECKPOINT_NAME = re.compile(r"^checkpoint-\d+$")  # sd_bench/train/checkpoint.py: checkpoint-<step>/model/
# HFRollouts call size: rows (prompts x samples) x max_new_tokens <= this many cached positions. One call
# per 4,096 toy rows was ~4x faster on a CPU core than calls of 256 (the toy world's 96-token limit); a
# 32k-token paper response gets ~12 rows per call, so the KV cache stays bounded.
HF_ROW_TOKENS = 400_000


def vllm_context(model: str, wanted: int) -> int:
    """vLLM's max_model_len for `wanted` tokens (prompt + response), cut to the model's own context: vLLM
    refuses a longer one (max_position_embeddings), and the samplers then clamp max_new_tokens to fit."""
    from sd_bench.lm_eval_tasks import model_context_length

    context = model_context_length({"pretrained": model})
    return wanted if context is None else min(wanted, context)


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:  # noqa: BLE001  missing, or installed without a usable backend
        return False
    return True


def backend(choice: str) -> str:
    if choice == "auto":
        return "vllm" if vllm_available() else "hf"
    if choice == "vllm" and not vllm_available():
        raise RuntimeError("--set sampler=vllm but `import vllm` fails; install vllm or use sampler=hf")
    return choice


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def dtype(choice: str) -> str:
    return ("bfloat16" if device() == "cuda" else "float32") if choice == "auto" else choice


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def resolve_model(out_dir: Path, ref: str) -> tuple[str, str | None, str | None]:
    """(model to load, revision, LoRA adapter folder or None) for a stage's model reference.

    `runs/<cond>/final` under the output folder: a full HF folder, or a PEFT adapter whose base is named in
    its adapter_config.json. `runs/<cond>/checkpoint-<N>`: the trainer keeps the weights in its `model/`
    subfolder beside the optimizer and RNG state. An absolute folder (the toy base) loads as it is;
    `org/name@rev` is a hub id at a revision.
    """
    local = Path(ref) if Path(ref).is_absolute() else out_dir / ref
    if local.exists():
        if CHECKPOINT_NAME.match(local.name) and (local / "model").is_dir():
            local = local / "model"
        if (local / "adapter_config.json").is_file():
            base = json.loads((local / "adapter_config.json").read_text()).get("base_model_name_or_path")
            if not base:
                raise RuntimeError(f"{local}/adapter_config.json: no base_model_name_or_path")
            return base, None, str(local)
        if not (local / "config.json").is_file():
            raise FileNotFoundError(f"{local} has no config.json or adapter_config.json")
        return str(local), None, None
    name, _, rev = ref.rpartition("@") if "@" in ref else (ref, "", "")
    return name, rev or None, None


def sample(
    model_ref: str,
    out_dir: Path,
    turns: list[str],
    *,
    n: int,
    temperature: float,
    top_p: float,
    top_k: int | None,
    max_new_tokens: int,
    seed: int,
    salt: int,
    thinking: bool,
    sampler: str,
    dtype_name: str,
    gpu_memory_utilization: float = 0.85,
    indices: list[int] | None = None,
) -> list[list[tuple[str, int]]]:
    """n responses per user turn as (text, tokens); tokens = the response's token count without the stop
    token (PAPER.md "Response length": no special tokens). Turn i is problem `indices[i]` of the stage
    (default i), seeded by sample_seed(seed, salt, indices[i]); its sample j is the same for any n > j."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sd_bench.prompts import render
    from sd_bench.reproduce.io import quiet_progress
    from sd_bench.train.rollout import HFRollouts, sample_seed

    name, rev, adapter = resolve_model(out_dir, model_ref)
    if adapter:
        raise RuntimeError(f"sampling from a LoRA adapter ({adapter}) is not supported; merge it first")
    quiet_progress()
    tok = AutoTokenizer.from_pretrained(name, revision=rev)
    lm = AutoModelForCausalLM.from_pretrained(name, revision=rev, dtype=getattr(torch, dtype(dtype_name)))
    lm = lm.to(device()).eval()
    kw = {} if thinking else {"enable_thinking": False}
    prompts = [tok(render(tok, t, **kw), add_special_tokens=False)["input_ids"] for t in turns]
    seeds = [sample_seed(seed, salt, i) for i in (range(len(turns)) if indices is None else indices)]
    decoding = {"n": n, "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens}
    if top_k is not None:
        decoding["top_k"] = top_k
    engine = None
    try:
        if backend(sampler) == "vllm":
            from sd_bench.lm_eval_tasks import PROMPT_RESERVE
            from sd_bench.train.rollout_vllm import VLLMRollouts

            longest = max(len(p) for p in prompts)
            engine = VLLMRollouts(
                lm,
                tok,
                model_path=name,
                max_model_len=vllm_context(name, longest + max_new_tokens + PROMPT_RESERVE),
                gpu_memory_utilization=gpu_memory_utilization,
                seed=seed,
            )
            step = len(prompts)  # one call: the engine schedules its own batches
        else:
            engine = HFRollouts(lm, tok)
            step = max(1, HF_ROW_TOKENS // (n * max_new_tokens))
        samples = []
        for a in range(0, len(prompts), step):
            samples += engine.generate(prompts[a : a + step], seeds=seeds[a : a + step], **decoding)
        stops = set(getattr(engine, "stop_ids", []) or [tok.eos_token_id])
    finally:
        if engine is not None and hasattr(engine, "close"):
            engine.close()
        del lm, engine
        free_memory()
    out: list[list[tuple[str, int]]] = [[] for _ in turns]
    for i, s in enumerate(samples):
        ids = s.response_ids[:-1] if s.response_ids and s.response_ids[-1] in stops else s.response_ids
        out[i // n].append((tok.decode(ids, skip_special_tokens=True), len(ids)))
    return out
