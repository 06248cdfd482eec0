"""Rollouts: sample n responses per prompt and return their token ids and sampling log-probs.

`Rollouts` is the interface the on-policy loop uses; `HFRollouts` implements it with transformers'
`generate` (CPU, tests, fallback). A vLLM engine lives in `rollout_vllm.py` behind the same interface.

Why one generate call per prompt, seeded by (run seed, step, prompt index): the n samples of one prompt
have equal length, so no padding enters the computation, and a prompt's samples do not depend on which
other prompts share the batch or on which process draws them. That is what makes a resumed run equal an
uninterrupted one and 2 processes equal 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class Sample:
    """One rollout. `logprobs[i]` = log pi_rollout(response_ids[i] | prefix) under the distribution the
    token was actually sampled from (temperature and top-p applied): the numerator-free side of the
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
    ) -> list[Sample]:
        """len(prompts) * n samples, prompt by prompt (all n of prompt 0 first). `seeds[i]` seeds prompt i."""
        ...

    def sync_weights(self, model) -> None:
        """Make the engine sample from `model`'s current weights (after each optimizer update)."""
        ...


def sample_seed(run_seed: int, step: int, prompt_index: int) -> int:
    """A per-(run, step, global prompt index) seed, independent of batching and process count."""
    return (run_seed * 1_000_003 + step * 10_007 + prompt_index) % (2**63 - 1)


class HFRollouts:
    """transformers `generate` on the training model itself (so sync_weights has nothing to copy)."""

    def __init__(self, model, tokenizer, stop_ids: list[int] | None = None):
        self.model, self.tokenizer = model, tokenizer
        eos = tokenizer.eos_token_id
        self.stop_ids = sorted(set(stop_ids or []) | {eos})

    def sync_weights(self, model) -> None:
        self.model = model

    @torch.no_grad()
    def generate(self, prompts, *, n, temperature, top_p, max_new_tokens, seeds) -> list[Sample]:
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        samples: list[Sample] = []
        try:
            for index, (prompt, seed) in enumerate(zip(prompts, seeds)):
                input_ids = torch.tensor([prompt] * n, device=device)
                with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
                    torch.manual_seed(seed)
                    out = self.model.generate(
                        input_ids=input_ids,
                        attention_mask=torch.ones_like(input_ids),
                        do_sample=True,
                        temperature=temperature,
                        top_p=top_p,
                        top_k=0,
                        max_new_tokens=max_new_tokens,
                        eos_token_id=self.stop_ids,
                        pad_token_id=self.tokenizer.pad_token_id,
                        output_scores=True,
                        return_dict_in_generate=True,
                    )
                new = out.sequences[:, len(prompt):]
                # processed scores = the warped (temperature, top-p) logits the token was drawn from
                scores = torch.stack(out.scores, dim=1).float().log_softmax(-1)
                token_lp = scores.gather(-1, new.unsqueeze(-1)).squeeze(-1)
                for row in range(n):
                    ids = new[row].tolist()
                    length = len(ids)
                    for i, t in enumerate(ids):
                        if t in self.stop_ids:
                            length = i + 1  # keep the stop token: the model learns to stop
                            break
                    samples.append(
                        Sample(list(prompt), ids[:length], token_lp[row, :length].tolist(), prompt_index=index)
                    )
        finally:
            self.model.train(was_training)
        return samples


def make_rollouts(backend: str, model, tokenizer) -> Rollouts:
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
        return VLLMRollouts(model, tokenizer)
    raise ValueError(f"rollout.backend: unknown backend {backend!r} (hf | vllm)")
