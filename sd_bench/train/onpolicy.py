"""On-policy training: SDPO (self-distillation under a richer teacher context) and GRPO (the paper's baseline).

`train()` reads as: `setup` (model, teacher, engine, optimizer, data, resume), then per training step

    rollout = rollout_phase(trainer, step)    samples (n per prompt, temperature 1.0) and their sampling
                                              log-probs; rewards; who learns from what (sdpo: a teacher
                                              input per sample with a demonstration; grpo: advantages);
                                              old log-probs by the trainer, the rollout-correction weights
                                              and the remedies' loss mask
    update  = update_phase(trainer, rollout)  one optimizer step per mini-batch of prompts (micro-batches:
                                              teacher forward no-grad, student forward, chunked loss,
                                              backward; DDP/FSDP sum the gradients); then, once per step,
                                              the EMA teacher update, the lr schedule step, the sampler sync
    StepMetrics(...).record(dist) -> metrics.jsonl; a warning when no sample has carried a loss for
    NO_LOSS_PATIENCE steps; a checkpoint every `save_every` steps; a summary line at the end.

The paper's rules, each from its code (github beanie00/self-distillation-analysis at 5c51051, a verl fork;
docs/PARITY.md "Training: loss, reward, teacher, schedule" lists them with their tests):
  * aggregation (loss.aggregation=seq_mean_token_mean): per mini-batch, the mean over ALL its rollouts of
    each sequence's token-mean (losses.aggregation_weights; verl dp_actor.py `update_policy`).
  * rollout correction (loss.rollout_is=token): each token's loss x min(pi_old / pi_rollout, 2)
    (losses.rollout_correction_weights); GRPO's dual clip at 3 (losses.grpo_loss).
  * one optimizer step per mini-batch, also for a mini-batch where no sample has a loss (a zero gradient:
    AdamW still moves by its moments and weight decay), the EMA teacher once per step after all
    mini-batches, the lr schedule stepped once per step (verl fsdp_workers.py `update_actor`).

Paper: PAPER.md "Training recipes" (lr 1e-5 SDPO / 1e-6 GRPO, 256 prompts x 8, mini-batch 128, JSD alpha
0.5 top-100 + tail, IS clip 2, frozen teacher, clip 0.2 / 0.28). Launch: `sd-bench train sdpo ...` (one
process) or `torchrun --nproc-per-node N -m sd_bench.cli train ...` / `accelerate launch ...` (data
parallel: DDP for LoRA, FSDP for full fine-tuning, see distributed.py).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sd_bench import markers
from sd_bench.problems import Problem
from sd_bench.prompts import render
from sd_bench.train import checkpoint, teacher_context
from sd_bench.train.batching import chunks, response_hidden, save_final
from sd_bench.train.config import TrainConfig
from sd_bench.train.distributed import (
    Dist,
    Engine,
    clip_grad_norm,
    load_optimizer_state_dict,
    optimizer_state_dict,
    resolve_strategy,
)
from sd_bench.train.losses import (
    aggregation_weights,
    grpo_advantages,
    grpo_loss,
    marker_mass_from_hidden,
    marker_token_ids,
    marker_token_mask,
    rollout_correction_weights,
    sd_loss_from_hidden,
    token_logprobs_from_hidden,
)
from sd_bench.train.model import Teacher, load_model, resolve_model_path, trainable_parameters
from sd_bench.train.rollout import Rollouts, Sample, make_rollouts, sample_seed
from sd_bench.train.runtime import (
    MetricsLog,
    Sampler,
    Timer,
    build_optimizer,
    build_scheduler,
    peak_memory_mib,
    seed_everything,
    setup_distributed,
)
from sd_bench.train.training_data import load_training_problems

# A run whose steps carry no loss for this many steps in a row says so (issue 8: training that cannot learn).
NO_LOSS_PATIENCE = 5

# -------------------------------------------------------------------------------------------- reward


def reward(kind: str, problem: Problem, response: str) -> float:
    """The training reward `data.reward` of one response: it decides which rollouts are demonstrations
    (sdpo) and the advantages (grpo).

    paper: math problems by the paper's training reward (sd_bench.reward.paper_reward: the last `\\boxed{`
        within the last 100 characters equals the gold or math-verify says so; verl/utils/reward_score/
        feedback/math.py), other kinds (toy) by their own checker (sd_bench.grading);
    grade: sd-bench's evaluation checker (sd_bench.grading, math-verify after the last `</think>`);
    contains_answer: the gold string occurs anywhere (a smoke-test reward for a random tiny model).
    """
    if kind == "contains_answer":
        return float(problem.answer in response)
    if kind == "paper" and problem.kind == "math":
        from sd_bench.reward import paper_reward

        return paper_reward(response, problem.answer)
    from sd_bench import grading

    rule = "paper" if kind == "paper" else grading.DEFAULT_RULE
    return float(grading.grade(problem.kind, response, problem.answer, rule=rule).correct)


# ------------------------------------------------------------------------------------- batching


@dataclass
class Item:
    """One rollout that takes part in the update."""

    prompt_ids: list[int]
    response_ids: list[int]
    rollout_logprobs: list[float]
    group: int  # local prompt index
    teacher_prompt_ids: list[int] = field(default_factory=list)  # sdpo
    demo_tokens: int = 0
    advantage: float = 0.0  # grpo
    old_logprobs: torch.Tensor | None = None
    # min(pi_old / pi_rollout, threshold) per token (loss.rollout_is=token); None: no correction
    rollout_weight: torch.Tensor | None = None
    loss_mask: list[float] | None = None  # the remedies' mask (LossMask); None: every token counts

    def has_loss(self, algorithm: str) -> bool:
        """Whether this sample can move the weights: sdpo items all have a demonstration; grpo needs A != 0."""
        return algorithm != "grpo" or self.advantage != 0.0


class LossMask:
    """The remedies' token mask, the one place where `loss.exclude_markers` and `loss.marker_mass_threshold`
    (neither in the paper; sdpo only) turn into 0 / 1 per response token:

        m_t = 0  if token t is part of an epistemic marker                      (loss.exclude_markers)
        m_t = 0  if the policy puts >= threshold probability on marker tokens at t  (marker_mass_threshold)
        m_t = 1  otherwise

    Items carry the result as `Item.loss_mask`; the loss multiplies it into its token mask and keeps the
    aggregation's denominators (every response token), so the other tokens' contributions are unchanged.
    """

    def __init__(self, cfg: TrainConfig, tokenizer, device):
        on = cfg.algorithm == "sdpo"
        self.exclude_markers = on and cfg.loss.exclude_markers
        self.threshold = cfg.loss.marker_mass_threshold if on else None
        self.tokenizer = tokenizer
        self.marker_ids = None  # vocabulary ids of the markers, for the marker mass
        if self.threshold is not None:
            vocab = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=True)
            self.marker_ids = torch.tensor(marker_token_ids(vocab), dtype=torch.long, device=device)
        self._text: dict[int, str] = {}  # decoded text of each token id, once

    @property
    def needs_marker_mass(self) -> bool:
        return self.marker_ids is not None and len(self.marker_ids) > 0

    def __call__(
        self, response_ids: list[int], marker_mass: torch.Tensor | None = None
    ) -> list[float] | None:
        """m_t for one response, or None when no remedy is on. `marker_mass` [len]: the policy's marker
        probability per position (losses.marker_mass_from_hidden), needed when `needs_marker_mass`."""
        mask = None
        if self.exclude_markers:
            for t in response_ids:
                if t not in self._text:
                    self._text[t] = self.tokenizer.decode([t], skip_special_tokens=True)
            mask = marker_token_mask([self._text[t] for t in response_ids])
        if self.needs_marker_mass:
            keep = (marker_mass < self.threshold).float().tolist()
            mask = [a * b for a, b in zip(mask or [1.0] * len(keep), keep)]
        return mask


# ------------------------------------------------------------------------------------------ train


@dataclass
class Trainer:
    """Everything the loop uses, built once by `setup`."""

    cfg: TrainConfig
    run_dir: Path
    dist: Dist
    model: torch.nn.Module
    tokenizer: object
    teacher: Teacher | None
    engine: Engine
    params: list
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sampler: Sampler
    problems: list[Problem]
    rollouts: Rollouts
    loss_mask: LossMask
    start: int  # the first step to run (> 0 on resume)

    @property
    def sdpo(self) -> bool:
        return self.cfg.algorithm == "sdpo"

    @property
    def local_prompts(self) -> int:
        return self.cfg.rollout.prompts_per_step // self.dist.world_size

    @property
    def local_mini_batch(self) -> int:
        return self.cfg.optim.mini_batch_size // self.dist.world_size


def train(cfg: TrainConfig, run_dir: Path, *, resume: bool = False) -> Path:
    """Run the on-policy loop into `run_dir`; return the `final/` folder."""
    t = setup(cfg, Path(run_dir), resume)
    log = MetricsLog(
        t.run_dir,
        enabled=t.dist.main,
        resume_step=t.start,
        wandb=cfg.run.log_wandb,
        tensorboard=cfg.run.log_tensorboard,
        trackio=cfg.run.log_trackio,
        config=None,
    )
    progress = _progress(t.start, cfg.run.max_steps, t.dist.main)
    watch = LossWatch()
    for step in range(t.start, cfg.run.max_steps):
        timer = Timer()
        rollout = rollout_phase(t, step)
        update = update_phase(t, rollout)
        record = StepMetrics(step + 1, rollout, update, timer.seconds(), cfg.algorithm).record(t.dist)
        log.write(record)
        warning = watch.observe(step + 1, record["samples_with_loss"])
        if warning and t.dist.main:
            print(warning, file=sys.stderr)
        progress.update(1)
        progress.set_postfix(loss=f"{record['loss']:.3g}", score=f"{record['score']:.2f}")
        if (step + 1) % cfg.run.save_every == 0 or step + 1 == cfg.run.max_steps:
            save_checkpoint(t, step + 1, update.sampler_state)
    progress.close()
    log.close()
    if t.dist.main and watch.steps:
        print(watch.summary(), file=sys.stderr)
    return save_final(t.run_dir, t.model, t.tokenizer, t.dist)


def setup(cfg: TrainConfig, run_dir: Path, resume: bool) -> Trainer:
    """Model, teacher, data-parallel engine, optimizer, schedule, data sampler, rollout engine; resumed from
    the latest checkpoint when `resume`."""
    dist = setup_distributed()
    sdpo = cfg.algorithm == "sdpo"
    if dist.main:
        resolve_model_path(cfg.model, run_dir)  # builds the tiny model once, before other ranks load it
    dist.barrier()
    seed_everything(cfg.run.seed)  # the same LoRA init on every rank (an EMA teacher copies it before DDP)
    model, tokenizer, _ = load_model(cfg.model, run_dir, dist.device)
    if dist.rank:
        seed_everything(cfg.run.seed + dist.rank)  # then rank-local randomness
    problems = load_training_problems(cfg.data, tokenizer, cfg.model.template_kwargs, verbose=dist.main)
    teacher = Teacher(model, cfg.teacher.mode, cfg.teacher.ema_rate) if sdpo else None  # copy before sharding
    engine = Engine(
        model,
        dist,
        resolve_strategy(cfg.distributed.strategy, cfg.model.finetune),
        cfg.distributed.find_unused_parameters,
    )
    if teacher is not None:
        teacher.prepare(engine.prepare_copy)
    params = [p for _, p in trainable_parameters(model)]  # FSDP: this rank's shards
    optimizer = build_optimizer(params, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.betas)
    scheduler = build_scheduler(optimizer, cfg.optim.warmup_steps)
    sampler = Sampler(len(problems), cfg.run.seed)

    start = 0
    latest = checkpoint.latest_checkpoint(run_dir) if resume else None
    if latest is not None:
        state = checkpoint.load_checkpoint(latest, model=model, rank=dist.rank)
        load_optimizer_state_dict(model, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        if teacher is not None:
            teacher.load_state_dict(state["teacher"])
        start = state["step"]
        if dist.main:
            print(f"resuming from {latest} (step {start})")

    G = cfg.rollout.prompts_per_step
    if G % dist.world_size or cfg.optim.mini_batch_size % dist.world_size:
        raise ValueError(
            f"rollout.prompts_per_step={G} and optim.mini_batch_size={cfg.optim.mini_batch_size} "
            f"must be divisible by the number of processes ({dist.world_size})"
        )
    return Trainer(
        cfg=cfg,
        run_dir=run_dir,
        dist=dist,
        model=model,
        tokenizer=tokenizer,
        teacher=teacher,
        engine=engine,
        params=params,
        optimizer=optimizer,
        scheduler=scheduler,
        sampler=sampler,
        problems=problems,
        rollouts=make_rollouts(cfg.rollout, model, tokenizer),
        loss_mask=LossMask(cfg, tokenizer, dist.device),
        start=start,
    )


# ---------------------------------------------------------------------------------- rollout phase


@dataclass
class Rollout:
    """What one step's rollout phase produced (this process's share)."""

    samples: list[Sample]
    texts: list[str]
    rewards: list[float]
    items: list[Item]  # the samples that take part in the update, with old log-probs and weights
    truncated: list[bool]  # per sample: no stop token at rollout.max_new_tokens (the reward still grades it)
    gap_sum: float = 0.0  # sum over item tokens of log pi_old - log pi_rollout
    gap_abs_sum: float = 0.0
    gap_max: float = 0.0  # max over item tokens of |log pi_old - log pi_rollout|


def rollout_phase(t: Trainer, step: int) -> Rollout:
    """Prompts -> samples -> rewards -> items (teacher inputs or advantages) -> old log-probs, rollout
    correction weights and loss masks. All no-grad and rank-local (generate stops at different lengths on
    each rank): under FSDP the weights are gathered once for all of it."""
    cfg, tokenizer = t.cfg, t.tokenizer
    # the same global draw on every process; each global mini-batch of prompts is split across processes,
    # so every optimizer update sees the same prompts whatever the process count
    indices = t.sampler.take(cfg.rollout.prompts_per_step)
    mb, local_mb = cfg.optim.mini_batch_size, t.local_mini_batch
    mine = [
        m + t.dist.rank * local_mb + i
        for m in range(0, cfg.rollout.prompts_per_step, mb)
        for i in range(local_mb)
    ]
    batch = [t.problems[indices[i]] for i in mine]
    tk = cfg.model.template_kwargs
    prompt_ids = [
        tokenizer(render(tokenizer, p.prompt, **tk), add_special_tokens=False)["input_ids"] for p in batch
    ]
    n = cfg.rollout.n
    with t.engine.inference():
        samples = t.rollouts.generate(
            prompt_ids,
            n=n,
            temperature=cfg.rollout.temperature,
            top_p=cfg.rollout.top_p,
            top_k=cfg.rollout.top_k,
            max_new_tokens=cfg.rollout.max_new_tokens,
            seeds=[sample_seed(cfg.run.seed, step, i) for i in mine],
        )
        texts = tokenizer.batch_decode([s.response_ids for s in samples], skip_special_tokens=True)
        rewards = [reward(cfg.data.reward, batch[s.prompt_index], x) for s, x in zip(samples, texts)]
        if t.sdpo:
            items = _sdpo_items(cfg, tokenizer, t.rollouts, batch, samples, texts, rewards, mine, step)
        else:
            adv = grpo_advantages(torch.tensor(rewards), n).tolist()
            items = [
                Item(s.prompt_ids, s.response_ids, s.logprobs, s.prompt_index, advantage=a)
                for s, a in zip(samples, adv)
            ]
        t.rollouts.release()  # generation is over: vLLM sleep mode (rollout.vllm_sleep) frees its GPU memory
        gaps = old_logprobs(t, items)  # for these passes and the update, until sync_weights
    stop_ids = set(getattr(t.rollouts, "stop_ids", None) or [tokenizer.eos_token_id])
    truncated = [is_truncated(s.response_ids, cfg.rollout.max_new_tokens, stop_ids) for s in samples]
    return Rollout(samples, texts, rewards, items, truncated, *gaps)


def is_truncated(response_ids: list[int], max_new_tokens: int, stop_ids: set[int]) -> bool:
    """A response cut by the length limit: `max_new_tokens` long and not ending in a stop token (the
    reward still grades it; `truncated_rewarded` counts how often it calls one correct)."""
    return len(response_ids) >= max_new_tokens and response_ids[-1] not in stop_ids


@torch.no_grad()
def old_logprobs(t: Trainer, items: list[Item]) -> tuple[float, float, float]:
    """The trainer's log-probs of the sampled tokens before any update (verl's old_log_prob recomputation:
    the PPO / IS ratio's denominator), the rollout-correction weights min(pi_old / pi_rollout, threshold),
    and the remedies' loss mask. Returns the rollout-vs-trainer log-prob gap: its sum, the sum of |gap|
    and the max |gap| over the items' tokens."""
    cfg = t.cfg
    gap_sum = gap_abs_sum = gap_max = 0.0
    for micro in chunks(items, cfg.optim.micro_batch_size):
        h, w, tok = response_hidden(
            t.model,
            [i.prompt_ids for i in micro],
            [i.response_ids for i in micro],
            t.tokenizer.pad_token_id,
            t.dist.device,
        )
        lp = token_logprobs_from_hidden(
            h, w, tok, temperature=cfg.rollout.temperature, chunk_size=cfg.loss.chunk_size
        )
        lengths = [len(i.response_ids) for i in micro]
        masses = [None] * len(micro)
        if t.loss_mask.needs_marker_mass:
            mass = marker_mass_from_hidden(
                h,
                w,
                t.loss_mask.marker_ids,
                temperature=cfg.rollout.temperature,
                chunk_size=cfg.loss.chunk_size,
            )
            masses = mass.split(lengths)
        for item, part, mass in zip(micro, lp.split(lengths), masses):
            item.old_logprobs = part
            rollout_lp = torch.tensor(item.rollout_logprobs, device=part.device)
            if cfg.loss.rollout_is == "token":
                item.rollout_weight = rollout_correction_weights(
                    part, rollout_lp, cfg.loss.rollout_is_threshold
                )
            item.loss_mask = t.loss_mask(item.response_ids, mass)
            diff = part - rollout_lp
            gap_sum += float(diff.sum())
            gap_abs_sum += float(diff.abs().sum())
            gap_max = max(gap_max, float(diff.abs().max())) if len(diff) else gap_max
    return gap_sum, gap_abs_sum, gap_max


# ----------------------------------------------------------------------------------- update phase


@dataclass
class Update:
    """What one step's update phase did (loss and statistics are this process's sums)."""

    loss_sum: float = 0.0  # sum of micro-batch losses; their sum over processes is the mini-batch loss
    grad_norms: list[float] = field(default_factory=list)  # one per mini-batch
    optimizer_steps: int = 0  # mini-batches whose update was applied (a finite gradient norm)
    stat_sums: dict[str, float] = field(default_factory=dict)  # loss statistics x tokens
    tokens_trained: float = 0.0
    lr: float = 0.0
    sampler_state: dict = field(default_factory=dict)


def update_phase(t: Trainer, rollout: Rollout) -> Update:
    """One optimizer step per mini-batch of prompts (paper: 256 prompts, mini-batch 128 -> 2), then once per
    training step: the EMA teacher update (verl dp_actor.py `update_policy` -> `_update_teacher` after the
    mini-batch loop), the lr schedule step (fsdp_workers.py `update_actor`), the rollout engine's weights."""
    out = Update()
    for mb_start in range(0, t.local_prompts, t.local_mini_batch):
        mb_items = [i for i in rollout.items if mb_start <= i.group < mb_start + t.local_mini_batch]
        mini_batch_step(t, mb_items, out)
    if t.teacher is not None and out.optimizer_steps:  # verl: `if did_update: self._update_teacher()`
        t.teacher.update(t.model)
    out.lr = t.scheduler.get_last_lr()[0]
    t.scheduler.step()
    # every rank; under FSDP the vLLM sync gathers one tensor at a time (no full gather of the model here)
    t.rollouts.sync_weights(t.model)
    out.sampler_state = t.sampler.state_dict()
    return out


def mini_batch_step(t: Trainer, mb_items: list[Item], out: Update) -> None:
    """Accumulate the gradient of one mini-batch's loss over its micro-batches, clip, take the AdamW step.

    The paper steps even when no sample of the mini-batch has a loss (verl dp_actor.py `update_policy`:
    the loss is 0, its gradient 0, `_optimizer_step` runs whenever the norm is finite), so AdamW moves the
    weights by its moments and weight decay; so does this (no forward pass is needed for a zero gradient).
    """
    cfg, dist, engine = t.cfg, t.dist, t.engine
    pad_id = t.tokenizer.pad_token_id
    tokens_global = dist.all_reduce_sum(sum(len(i.response_ids) for i in mb_items))
    sequences_global = cfg.optim.mini_batch_size * cfg.rollout.n  # every rollout counts (paper)
    t.optimizer.zero_grad(set_to_none=False)
    if tokens_global == 0:  # no sample in this mini-batch has a loss on any process
        _zero_missing_grads(t.params)
    else:
        micros = list(chunks(mb_items, cfg.optim.micro_batch_size))
        count = engine.micro_batch_count(len(micros))  # every rank runs as many engine passes
        for k in range(count):
            with engine.accumulate(sync=k == count - 1):
                if k >= len(micros):  # padding: a zero-weighted pass, so the collectives line up
                    dummy = [_dummy_item(pad_id)]
                    loss, _ = _micro_loss(
                        cfg,
                        t.model,
                        t.teacher,
                        dummy,
                        torch.zeros(1),
                        pad_id,
                        dist.device,
                        engine.train_module,
                    )
                    (loss * 0.0).backward()
                    continue
                weights = token_weights(cfg, micros[k], sequences_global, tokens_global, dist.device)
                loss, stats = _micro_loss(
                    cfg, t.model, t.teacher, micros[k], weights, pad_id, dist.device, engine.train_module
                )
                loss.backward()
            out.loss_sum += float(loss.detach())
            micro_tokens = sum(len(i.response_ids) for i in micros[k])
            for key, v in stats.items():
                out.stat_sums[key] = out.stat_sums.get(key, 0.0) + v * micro_tokens
            out.tokens_trained += micro_tokens
    norm = clip_grad_norm(t.params, cfg.optim.grad_clip)
    out.grad_norms.append(norm)
    if math.isfinite(norm):
        t.optimizer.step()
        out.optimizer_steps += 1
    else:  # paper (dp_actor.py `_optimizer_step`): a non-finite gradient norm skips the update
        t.optimizer.zero_grad(set_to_none=False)
        if dist.main:
            print(
                f"warning: gradient norm {norm} is not finite; this mini-batch's update is skipped",
                file=sys.stderr,
            )


def token_weights(
    cfg: TrainConfig, micro: list[Item], num_sequences: int, num_tokens: float, device=None
) -> torch.Tensor:
    """w_t for the micro-batch's tokens: the aggregation's 1 / denominator (loss.aggregation) x the
    rollout-correction weight (loss.rollout_is). The loss of the micro-batch is sum_t m_t w_t l_t."""
    w = aggregation_weights(
        [len(i.response_ids) for i in micro],
        cfg.loss.aggregation,
        num_sequences=num_sequences,
        num_tokens=num_tokens,
        device=device,
    )
    if any(i.rollout_weight is not None for i in micro):
        w = w * torch.cat(
            [
                i.rollout_weight.float().to(w.device)
                if i.rollout_weight is not None
                else torch.ones(len(i.response_ids), device=w.device)
                for i in micro
            ]
        )
    return w


def _zero_missing_grads(params: list) -> None:
    """A zero gradient where none exists yet (a step before any backward), so AdamW steps every parameter
    as verl's does after a zero-loss backward."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)


def save_checkpoint(t: Trainer, done: int, sampler_state: dict) -> None:
    trainer_state = {
        "optimizer": optimizer_state_dict(t.model, t.optimizer),  # FSDP: gathered on rank 0
        "scheduler": t.scheduler.state_dict(),
        "sampler": sampler_state,
        "teacher": t.teacher.state_dict() if t.teacher else {},  # EMA copy: gathered too
    }
    checkpoint.save_checkpoint(
        t.run_dir,
        done,
        model=t.model,
        tokenizer=t.tokenizer,
        trainer_state=trainer_state,
        rank=t.dist.rank,
        world_size=t.dist.world_size,
        barrier=t.dist.barrier,
        keep=t.cfg.run.keep_checkpoints,
    )


def _sdpo_items(cfg, tokenizer, rollouts, batch, samples, texts, rewards, mine, step) -> list[Item]:
    """Teacher prompts per sample for the configured context. A sample without a demonstration gets no item:
    no loss, though it still counts (as 0) in the paper's aggregation (verl: `self_distillation_mask` 0)."""
    n, context = cfg.rollout.n, cfg.teacher.context
    regenerated: dict[tuple[int, int], str] = {}
    if context == "regenerated":  # c = y_r: regenerate once per (prompt, chosen sibling), conditioned on s
        wanted = sorted(
            {
                (g, j)
                for g in range(len(batch))
                for i in range(n)
                if (
                    j := teacher_context.successful_sibling(
                        rewards[g * n : (g + 1) * n], i, cfg.teacher.success_threshold
                    )
                )
                is not None
            }
        )
        if wanted:
            tk = cfg.model.template_kwargs
            prompts = [
                tokenizer(
                    render(
                        tokenizer,
                        teacher_context.regeneration_prompt(batch[g].prompt, texts[g * n + j]),
                        **tk,
                    ),
                    add_special_tokens=False,
                )["input_ids"]
                for g, j in wanted
            ]
            regen = rollouts.generate(
                prompts,
                n=1,
                temperature=cfg.rollout.temperature,
                top_p=cfg.rollout.top_p,
                top_k=cfg.rollout.top_k,
                max_new_tokens=cfg.teacher.regenerate_max_new_tokens or cfg.rollout.max_new_tokens,
                seeds=[sample_seed(cfg.run.seed + 1, step, mine[g] * n + j) for g, j in wanted],
            )
            regen_texts = tokenizer.batch_decode([s.response_ids for s in regen], skip_special_tokens=True)
            regenerated = dict(zip(wanted, regen_texts))
    items = []
    for k, (s, text) in enumerate(zip(samples, texts)):
        g, i = divmod(k, n)
        problem = batch[g]
        j = teacher_context.successful_sibling(rewards[g * n : (g + 1) * n], i, cfg.teacher.success_threshold)
        sibling = texts[g * n + j] if j is not None else None
        demo = teacher_context.demonstration(
            context,
            answer=problem.answer,
            solution=problem.solution,
            sibling=sibling,
            regenerated=regenerated.get((g, j)),
        )
        if demo is None:
            continue  # paper: no successful sibling -> self_distillation_mask 0, no loss
        ids, demo_tokens = teacher_context.teacher_prompt_ids(
            tokenizer,
            problem.prompt,
            demo,
            context=context,
            max_prompt_tokens=cfg.teacher.max_prompt_tokens,
            template_kwargs=cfg.model.template_kwargs,
        )
        items.append(
            Item(s.prompt_ids, s.response_ids, s.logprobs, g, teacher_prompt_ids=ids, demo_tokens=demo_tokens)
        )
    return items


def _dummy_item(pad_id: int) -> Item:
    """A one-token stand-in for a rank with fewer micro-batches than another (its loss is multiplied by 0)."""
    return Item([pad_id], [pad_id], [0.0], -1, teacher_prompt_ids=[pad_id], old_logprobs=torch.zeros(1))


def _micro_loss(cfg, model, teacher, micro: list[Item], weights, pad_id: int, device, train_module=None):
    """Loss of one micro-batch, sum_t m_t w_t l_t with `weights` w [tokens] from `token_weights` (so the sum
    of micro-batch gradients over micro-batches and processes is the mini-batch loss's gradient) and m the
    remedies' loss mask. `model`: the plain model (teacher passes, no grad, never through DDP);
    `train_module`: the engine's, for the student pass (default `model`)."""
    train_module = model if train_module is None else train_module
    responses = [i.response_ids for i in micro]
    old = torch.cat([i.old_logprobs for i in micro]).to(device)
    weights = torch.as_tensor(weights, dtype=torch.float32).to(device)
    temperature = cfg.rollout.temperature
    mask = torch.tensor(
        [m for i in micro for m in (i.loss_mask or [1.0] * len(i.response_ids))],
        dtype=torch.float32,
        device=device,
    )
    if cfg.algorithm == "grpo":
        h, w, t = response_hidden(train_module, [i.prompt_ids for i in micro], responses, pad_id, device)
        logp = token_logprobs_from_hidden(h, w, t, temperature=temperature, chunk_size=cfg.loss.chunk_size)
        adv = torch.cat([torch.full((len(i.response_ids),), i.advantage) for i in micro]).to(device)
        return grpo_loss(
            logp,
            old,
            adv,
            mask,
            clip_low=cfg.loss.clip_low,
            clip_high=cfg.loss.clip_high,
            clip_ratio_c=cfg.loss.clip_ratio_c,
            weight=weights,
        )
    # teacher first: an EMA-LoRA teacher swaps weights in place, which must not touch the student's graph
    with torch.no_grad(), teacher.weights(model) as teacher_model:
        th, tw, _ = response_hidden(
            teacher_model, [i.teacher_prompt_ids for i in micro], responses, pad_id, device
        )
        tw = tw.detach().clone() if teacher.mode == "ema" and teacher.lora else tw.detach()
    sh, sw, t = response_hidden(train_module, [i.prompt_ids for i in micro], responses, pad_id, device)
    return sd_loss_from_hidden(
        sh,
        sw,
        th,
        tw,
        t,
        mask,
        old,
        alpha=cfg.loss.alpha,
        top_k=cfg.loss.top_k,
        is_clip=cfg.loss.is_clip,
        mode=cfg.loss.kind,
        temperature=temperature,
        chunk_size=cfg.loss.chunk_size,
        weight=weights,
    )


# ---------------------------------------------------------------------------------------- metrics


@dataclass
class StepMetrics:
    """One training step's record for metrics.jsonl: this process's rollout and update, summed over
    processes by `record`, then turned into means."""

    step: int
    rollout: Rollout
    update: Update
    seconds: float
    algorithm: str

    def record(self, dist: Dist) -> dict:
        ro, up = self.rollout, self.update
        counts = [markers.marker_counts(x) for x in ro.texts]
        with_loss = [i for i in ro.items if i.has_loss(self.algorithm)]
        sums = {
            "samples": len(ro.samples),
            "reward": sum(ro.rewards),
            "response_tokens": sum(len(s.response_ids) for s in ro.samples),
            "truncated": sum(ro.truncated),
            "truncated_rewarded": sum(1 for tr, r in zip(ro.truncated, ro.rewards) if tr and r > 0),
            "epistemic": sum(sum(c.values()) for c in counts),
            "items": len(ro.items),
            "with_loss": len(with_loss),
            "item_tokens": sum(len(i.response_ids) for i in ro.items),
            "teacher_prompt_tokens": sum(len(i.teacher_prompt_ids) for i in ro.items),
            "demo_tokens": sum(i.demo_tokens for i in ro.items),
            "loss": up.loss_sum,
            "tokens_trained": up.tokens_trained,
            "gap": ro.gap_sum,
            "gap_abs": ro.gap_abs_sum,
            **{f"m_{m}": sum(c[m] for c in counts) for m in markers.MARKERS},
            **{f"s_{k}": v for k, v in up.stat_sums.items() if not k.endswith("/tokens")},
        }
        sums = {k: dist.all_reduce_sum(v) for k, v in sorted(sums.items())}
        ns, ni = max(sums["samples"], 1), max(sums["items"], 1)
        trained = max(sums["tokens_trained"], 1)
        stats = {k[2:]: v / trained for k, v in sums.items() if k.startswith("s_")}
        kl = stats.get("sd/kl_k3", stats.get("grpo/kl_k1_old", 0.0))
        return {
            "step": self.step,
            # the sum of micro-batch losses over a step is the sum of its mini-batch losses (a mini-batch
            # without any loss counts as 0): report the mean per optimizer step
            "loss": sums["loss"] / max(len(up.grad_norms), 1),
            "score": sums["reward"] / ns,
            "response_tokens": sums["response_tokens"] / ns,
            "truncated": sums["truncated"] / ns,  # fraction of samples that hit max_new_tokens
            "truncated_rewarded": sums["truncated_rewarded"],  # of those, how many the reward counted correct
            "epistemic_count": sums["epistemic"] / ns,
            **{f"marker/{m}": sums[f"m_{m}"] / ns for m in markers.MARKERS},
            "kl": kl,
            "grad_norm": max(up.grad_norms) if up.grad_norms else 0.0,
            "optimizer_steps": up.optimizer_steps,
            "lr": up.lr,
            "tokens_per_s": sums["response_tokens"] / max(self.seconds, 1e-9),
            "step_seconds": self.seconds,
            "peak_mem_mib": peak_memory_mib(dist.device),
            "samples_with_loss": sums["with_loss"],
            "teacher_context_tokens": sums["teacher_prompt_tokens"] / ni,
            "demonstration_tokens": sums["demo_tokens"] / ni,
            "logprob_gap": sums["gap"] / max(sums["item_tokens"], 1),
            "logprob_gap_abs": sums["gap_abs"] / max(sums["item_tokens"], 1),
            "logprob_gap_max": dist.all_reduce_max(ro.gap_max),  # per token: vLLM vs trainer within 1e-4?
            **stats,
        }


@dataclass
class LossWatch:
    """Training that cannot learn says so (issue 8): a warning when `patience` steps in a row had no
    sample with a loss (sdpo: no successful sibling anywhere; grpo: equal rewards in every group), and a
    summary of the steps that did."""

    patience: int = NO_LOSS_PATIENCE
    steps: int = 0
    steps_with_loss: int = 0
    streak: int = 0

    def observe(self, step: int, samples_with_loss: float) -> str | None:
        """Count one step; the warning line once per streak, when it reaches `patience`."""
        self.steps += 1
        if samples_with_loss > 0:
            self.steps_with_loss += 1
            self.streak = 0
            return None
        self.streak += 1
        if self.streak != self.patience:
            return None
        return (
            f"warning: steps {step - self.patience + 1}-{step}: no sample carried a loss ({self.patience} "
            "steps in a row: sdpo needs a correct sibling rollout, grpo unequal rewards in a group), so the "
            "weights only drift with AdamW's moments; check data.reward and rollout.max_new_tokens, or "
            "train on problems the model sometimes solves"
        )

    def summary(self) -> str:
        return f"train: {self.steps_with_loss}/{self.steps} steps had a sample with a loss"


def _progress(start: int, total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="step", disable=not enabled)
