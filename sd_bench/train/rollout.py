"""Rollouts: sample n responses per prompt and return their token ids and sampling log-probs.

`Rollouts` is the interface the on-policy loop uses; `HFRollouts` implements it with one batched
KV-cache sampling loop over every prompt x n (CPU, tests, fallback). A vLLM engine lives in
`rollout_vllm.py` behind the same interface.

Why per-row random streams, seeded by (run seed, step, prompt index) and the sample index: a prompt's
samples then do not depend on which other prompts share the batch or on which process draws them. That is
what makes a resumed run equal an uninterrupted one and 2 processes equal 1.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class Sample:
    """One rollout. `logprobs[i]` = log pi_rollout(response_ids[i] | prefix) under the distribution the
    token was actually sampled from (temperature, top-k and top-p applied): the numerator-free side of the
    importance ratio and of the rollout-vs-trainer log-prob gap metric."""

    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    prompt_index: int = 0  # index of the prompt in the generate() call (samples are grouped by prompt)


class Rollouts(Protocol):
    def generate(
        self,
        prompts: list[list[int]],
        *,
        n: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        seeds: list[int],
        top_k: int | None = None,
    ) -> list[Sample]:
        """len(prompts) * n samples, prompt by prompt (all n of prompt 0 first). `seeds[i]` seeds prompt i.
        `top_k`: keep the k most probable tokens before top-p (None: all). Each prompt's `max_new_tokens` is
        clamped to the model's context minus that prompt, with one warning (`clamp_new_tokens`)."""
        ...

    def sync_weights(self, model) -> None:
        """Make the engine sample from `model`'s current weights (after each optimizer update; every rank)."""
        ...

    def release(self) -> None:
        """Generation for this step is over: free what the engine can give back to training until the next
        sync (vLLM sleep mode, `rollout.vllm_sleep`); a no-op for engines that share the trainer's weights."""
        ...


def sample_seed(run_seed: int, step: int, prompt_index: int) -> int:
    """A per-(run, step, global prompt index) seed, independent of batching and process count."""
    return (run_seed * 1_000_003 + step * 10_007 + prompt_index) % (2**63 - 1)


class HFRollouts:
    """Batched ancestral sampling with a KV cache on the training model itself (so sync_weights has nothing
    to copy): all prompts x n rows in one loop, one forward per generated position.

    Why this and not `generate` per prompt: on the toy world (64 rollouts of ~20 tokens) one `generate` call
    per prompt spent most of a training step in per-call overhead; one batched loop is several times faster
    (benchmarks/RESULTS.md "HF rollouts (CPU)").

    Determinism: row (prompt i, sample j) draws its tokens by inverse-CDF sampling with its own uniforms,
    `torch.rand(max_new_tokens)` from a generator seeded by (seeds[i], j). So a row's tokens depend only on
    its prompt, its seed and the weights, never on which other rows share the batch or the process (a
    resumed run equals an uninterrupted one; 2 processes equal 1), up to float rounding of the logits under
    a different batch shape (~1e-7, far below the gap between two cumulative probabilities in practice).
    Prompts are left-padded with explicit position ids; finished rows (a stop token) leave the batch and the
    KV cache at once, since most toy responses stop long before the limit.
    """

    def __init__(self, model, tokenizer, stop_ids: list[int] | None = None):
        self.model, self.tokenizer = model, tokenizer
        eos = tokenizer.eos_token_id
        self.stop_ids = sorted(set(stop_ids or []) | {eos})
        self._warned: set = set()  # clamp_new_tokens warns once per engine

    def sync_weights(self, model) -> None:
        self.model = model

    def release(self) -> None:
        """Nothing to free: the rollouts run on the training model itself."""

    @torch.no_grad()
    def generate(self, prompts, *, n, temperature, top_p, max_new_tokens, seeds, top_k=None) -> list[Sample]:
        if len(seeds) != len(prompts):
            raise ValueError(f"HFRollouts.generate: {len(prompts)} prompts but {len(seeds)} seeds")
        from sd_bench.train.model import causal_lm  # a LoRA model: the CausalLM with the adapter in place

        context = getattr(causal_lm(self.model).config, "max_position_embeddings", None)
        limits = [clamp_new_tokens(max_new_tokens, len(p), context, self._warned) for p in prompts]
        max_new_tokens = max(limits)
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        rows = [(i, j) for i in range(len(prompts)) for j in range(n)]
        uniforms = torch.stack([row_uniforms(seeds[i], j, max_new_tokens) for i, j in rows]).to(device)
        try:
            tokens, logprobs = sample_batched(
                causal_lm(self.model),
                [prompts[i] for i, _ in rows],
                uniforms,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                max_new_tokens=max_new_tokens,
                stop_ids=self.stop_ids,
                pad_id=self._pad_id(),
                limits=[limits[i] for i, _ in rows],
            )
        finally:
            self.model.train(was_training)
        return [
            Sample(list(prompts[i]), tokens[r], logprobs[r], prompt_index=i) for r, (i, _) in enumerate(rows)
        ]

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return self.tokenizer.eos_token_id if pad is None else pad


def row_uniforms(seed: int, sample: int, count: int) -> torch.Tensor:
    """The uniforms [count] (float64) that row (prompt seed, sample index) samples its tokens with."""
    gen = torch.Generator().manual_seed((seed * 1_000_033 + sample) % (2**63 - 1))
    return torch.rand(count, generator=gen, dtype=torch.float64)


def clamp_new_tokens(max_new_tokens: int, prompt_tokens: int, context: int | None, warned: set) -> int:
    """`max_new_tokens`, cut so that prompt + response fit the model's context (max_position_embeddings):
    past it a model's positions are undefined (lm-eval and vLLM refuse). The paper's rollout server does the
    same (verl/workers/rollout/vllm_rollout/vllm_async_server.py `generate`: max_tokens clamped to
    max_position_embeddings - len(prompt_ids)). One warning per engine names both numbers; a prompt that
    alone fills the context is an error."""
    if context is None or prompt_tokens + max_new_tokens <= context:
        return max_new_tokens
    room = context - prompt_tokens
    if room < 1:
        raise ValueError(
            f"a prompt of {prompt_tokens} tokens fills the model's context of {context} tokens "
            "(max_position_embeddings); lower data.max_prompt_tokens / teacher.max_prompt_tokens"
        )
    if "clamp" not in warned:
        warned.add("clamp")
        print(
            f"warning: rollout.max_new_tokens={max_new_tokens} + a prompt of {prompt_tokens} tokens exceeds "
            f"the model's context of {context} tokens (max_position_embeddings); generating at most "
            f"{room} new tokens for it (lower rollout.max_new_tokens to silence this)",
            file=sys.stderr,
        )
    return room


def warp_logprobs(
    logits: torch.Tensor, temperature: float, top_p: float, top_k: int | None = None
) -> torch.Tensor:
    """log pi_rollout(. | prefix) over the last axis: softmax(logits / T), restricted to the top_k most
    probable tokens (None: all; ties with the k-th are kept, as transformers' TopKLogitsWarper does) and
    renormalised, then to the top-p nucleus of that (the smallest set of most probable tokens whose
    probability reaches top_p; at least one token) and renormalised; removed tokens get -inf. The order
    (temperature, top-k, top-p) is transformers' and vLLM's. top_p = 1 and top_k = None keep every token."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    if top_k is not None and top_k < logp.shape[-1]:
        kth = logp.topk(top_k, dim=-1).values[..., -1:]
        logp = torch.log_softmax(logp.masked_fill(logp < kth, float("-inf")), dim=-1)
    if top_p >= 1.0:
        return logp
    sorted_lp, order = logp.sort(dim=-1, descending=True)
    before = sorted_lp.exp().cumsum(-1) - sorted_lp.exp()  # probability of the tokens ranked above
    drop_sorted = before >= top_p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return torch.log_softmax(logp.masked_fill(drop, float("-inf")), dim=-1)


def _cache_keyword(model) -> str:
    # transformers >= 5.2x names the KV cache `cache`; older releases `past_key_values`
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def sample_batched(
    model,
    prompts: list[list[int]],
    uniforms: torch.Tensor,
    *,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    stop_ids: list[int],
    pad_id: int,
    top_k: int | None = None,
    limits: list[int] | None = None,
) -> tuple[list[list[int]], list[list[float]]]:
    """One row per prompt; row r's t-th token = the first token whose cumulative warped probability exceeds
    uniforms[r, t] (inverse CDF). Returns each row's tokens (the stop token kept: the model learns to stop)
    and their warped log-probs. `limits[r]` (<= max_new_tokens): row r's own token limit."""
    device = uniforms.device
    B = len(prompts)
    width = max(len(p) for p in prompts)
    ids = torch.full((B, width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((B, width), dtype=torch.long, device=device)
    for r, p in enumerate(prompts):
        ids[r, width - len(p) :] = torch.tensor(p, device=device)
        mask[r, width - len(p) :] = 1
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    stops = torch.tensor(stop_ids, device=device)
    out_tokens: list[list[int]] = [[] for _ in range(B)]
    out_lp: list[list[float]] = [[] for _ in range(B)]
    active = torch.arange(B, device=device)  # original row of each batch row
    limit = torch.tensor(limits if limits is not None else [max_new_tokens] * B, device=device)
    cache, cache_kw = None, _cache_keyword(model)
    for t in range(max_new_tokens):
        res = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{cache_kw: cache})
        cache = getattr(res, "cache", None) or res.past_key_values
        logp = warp_logprobs(res.logits[:, -1], temperature, top_p, top_k)
        cdf = logp.double().exp().cumsum(-1)
        u = uniforms[active, t].unsqueeze(-1) * cdf[:, -1:]  # scale by the total: rounding never overshoots
        nxt = torch.searchsorted(cdf, u, right=True).clamp(max=cdf.shape[-1] - 1).squeeze(-1)
        # a token of probability 0 (outside the nucleus) can only be hit by rounding at its edge: step back
        lp = logp.gather(-1, nxt[:, None]).squeeze(-1)
        while bool(torch.isinf(lp).any()):
            nxt = torch.where(torch.isinf(lp), nxt - 1, nxt)
            lp = logp.gather(-1, nxt[:, None]).squeeze(-1)
        for r, tok, l in zip(active.tolist(), nxt.tolist(), lp.tolist()):
            out_tokens[r].append(tok)
            out_lp[r].append(l)
        keep = ~torch.isin(nxt, stops) & (limit[active] > t + 1)
        if not bool(keep.any()):
            break
        ids, pos = nxt[:, None], pos[:, -1:] + 1
        mask = torch.cat([mask, torch.ones((len(active), 1), dtype=torch.long, device=device)], dim=1)
        if not bool(keep.all()):
            idx = torch.nonzero(keep).flatten()
            cache.reorder_cache(idx)  # index_select on every layer's keys and values
            active, ids, pos, mask = active[idx], ids[idx], pos[idx], mask[idx]
    return out_tokens, out_lp


def make_rollouts(rollout, model, tokenizer) -> Rollouts:
    """The engine `rollout.backend` names, set up from the `rollout` config section (config.RolloutConfig;
    the vLLM fields: gpu_memory_utilization, max_model_len, vllm_sleep, vllm_lora_mode)."""
    backend = rollout.backend
    if backend == "hf":
        return HFRollouts(model, tokenizer)
    if backend == "vllm":
        try:
            from sd_bench.train.rollout_vllm import VLLMRollouts
        except ImportError as exc:
            raise RuntimeError(
                "rollout.backend=vllm needs sd_bench/train/rollout_vllm.py and vllm installed "
                f"({exc}); use rollout.backend=hf"
            ) from exc
        return VLLMRollouts(
            model,
            tokenizer,
            lora_mode=rollout.vllm_lora_mode,
            max_model_len=rollout.max_model_len,
            gpu_memory_utilization=rollout.gpu_memory_utilization,
            sleep=rollout.vllm_sleep,
        )
    raise ValueError(f"rollout.backend: unknown backend {backend!r} (hf | vllm)")
