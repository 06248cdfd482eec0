"""On-policy training: SDPO (self-distillation under a richer teacher context) and GRPO (the paper's baseline).

One visible loop, read top to bottom:

    for step in range(start, max_steps):
        prompts  <- the sampler's next `prompts_per_step` problems (this process's shard)
        samples  <- n rollouts per prompt (temperature 1.0), with their sampling log-probs
        rewards  <- grade each response against the gold answer
        sdpo: teacher input per sample = teacher prompt for the context + the student's response ids
        grpo: advantages = reward - group mean (no std)
        old log-probs <- trainer forward without grad (verl's recomputation; the IS ratio's denominator)
        for each mini-batch: (micro-batches: teacher forward no-grad, student forward, chunked loss,
                              backward; DDP/FSDP sum the gradients) -> clip -> AdamW step -> EMA teacher update
        log metrics.jsonl, checkpoint every `save_every` steps

Paper: PAPER.md "Training recipes" (lr 1e-5 SDPO / 1e-6 GRPO, 256 prompts x 8, mini-batch 128, JSD alpha 0.5
top-100 + tail, IS clip 2, frozen teacher, clip 0.2 / 0.28, token-mean). Launch: `sd-bench train sdpo ...`
(one process) or `torchrun --nproc-per-node N -m sd_bench.cli train ...` / `accelerate launch ...` (data
parallel: DDP for LoRA, FSDP for full fine-tuning, see distributed.py).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sd_bench import markers
from sd_bench.problems import Problem
from sd_bench.prompts import problem_prompt, render
from sd_bench.train import checkpoint, teacher_context
from sd_bench.train.config import DataConfig, TrainConfig
from sd_bench.train.distributed import (
    Engine,
    clip_grad_norm,
    load_optimizer_state_dict,
    optimizer_state_dict,
    resolve_strategy,
)
from sd_bench.train.losses import (
    grpo_advantages,
    grpo_loss,
    marker_mass_from_hidden,
    marker_token_ids,
    marker_token_mask,
    sd_loss_from_hidden,
    token_logprobs_from_hidden,
)
from sd_bench.train.model import Teacher, hidden_states, load_model, resolve_model_path, trainable_parameters
from sd_bench.train.rollout import make_rollouts, sample_seed
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

# ---------------------------------------------------------------------------------------------- data


def smoke_problems() -> list[Problem]:
    """8 one-digit sums: the `smoke` data set (answers are short, so `contains_answer` sees successes)."""
    out = []
    for i, (a, b) in enumerate([(1, 2), (2, 5), (3, 4), (1, 7), (4, 4), (2, 3), (5, 1), (3, 6)]):
        q = f"What is {a} + {b}?"
        out.append(
            Problem(
                id=f"smoke-{i}",
                question=q,
                prompt=problem_prompt(q),
                answer=str(a + b),
                solution=f"{a} + {b} = {a + b}, so the answer is \\boxed{{{a + b}}}.",
                kind="math",
                source="smoke",
            )
        )
    return out


def problems_from_jsonl(path: Path) -> list[Problem]:
    """{id, question|prompt, answer, solution?, kind?} per line."""
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        rec = json.loads(line)
        if "answer" not in rec or not ("question" in rec or "prompt" in rec):
            raise ValueError(
                f"{path}:{n}: a problem needs `answer` and `question` or `prompt`, got {sorted(rec)}"
            )
        question = rec.get("question") or rec["prompt"]
        out.append(
            Problem(
                id=str(rec.get("id", n)),
                question=question,
                prompt=rec.get("prompt") or problem_prompt(question),
                answer=str(rec["answer"]),
                solution=rec.get("solution"),
                kind=rec.get("kind", "math"),
                source=str(path),
            )
        )
    return out


def load_training_problems(cfg: DataConfig) -> list[Problem]:
    """`smoke`, a JSONL path, or a set name / parquet path for sd_bench.data.load_problems."""
    if cfg.name == "smoke":
        problems = smoke_problems()
    elif cfg.name.endswith((".jsonl", ".json")):
        problems = problems_from_jsonl(Path(cfg.name))
    else:
        from sd_bench.data import load_problems

        problems = list(load_problems(cfg.name))
    if cfg.max_problems is not None:
        problems = problems[: cfg.max_problems]
    if not problems:
        raise ValueError(f"data.name={cfg.name!r}: no problems loaded")
    return problems


def reward(kind: str, problem: Problem, response: str) -> float:
    """`grade`: the paper's checker (last \\boxed{} + math-verify); `contains_answer`: smoke-test reward."""
    if kind == "contains_answer":
        return float(problem.answer in response)
    from sd_bench.answer import grade

    return float(grade(problem.kind, response, problem.answer).correct)


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
    loss_mask: list[float] | None = None  # sdpo with loss.exclude_markers: 0 on marker tokens


def response_hidden(model, prompts: list[list[int]], responses: list[list[int]], pad_id: int, device):
    """Final hidden states at the positions that predict each response token, flattened: [N, H], head [V, H],
    targets [N]. Sequences are right-padded, so positions are 0..len-1 whatever the batch."""
    seqs = [p + r for p, r in zip(prompts, responses)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(seqs), width), dtype=torch.long, device=device)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.tensor(s, device=device)
        mask[row, : len(s)] = 1
    hidden, head = hidden_states(model, ids, mask)
    parts = [
        hidden[row, len(p) - 1 : len(p) + len(r) - 1] for row, (p, r) in enumerate(zip(prompts, responses))
    ]
    targets = torch.tensor([t for r in responses for t in r], dtype=torch.long, device=device)
    return torch.cat(parts), head, targets


def chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ------------------------------------------------------------------------------------------ train


def train(cfg: TrainConfig, run_dir: Path, *, resume: bool = False) -> Path:
    """Run the on-policy loop into `run_dir`; return the `final/` folder."""
    run_dir = Path(run_dir)
    dist = setup_distributed()
    sdpo = cfg.algorithm == "sdpo"
    if dist.main:
        resolve_model_path(cfg.model, run_dir)  # builds the tiny model once, before other ranks load it
    dist.barrier()
    seed_everything(cfg.run.seed)  # the same LoRA init on every rank (an EMA teacher copies it before DDP)
    model, tokenizer, _ = load_model(cfg.model, run_dir, dist.device)
    if dist.rank:
        seed_everything(cfg.run.seed + dist.rank)  # then rank-local randomness
    problems = load_training_problems(cfg.data)
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

    G, n = cfg.rollout.prompts_per_step, cfg.rollout.n
    if G % dist.world_size or cfg.optim.mini_batch_size % dist.world_size:
        raise ValueError(
            f"rollout.prompts_per_step={G} and optim.mini_batch_size={cfg.optim.mini_batch_size} "
            f"must be divisible by the number of processes ({dist.world_size})"
        )
    local_G, local_mb = G // dist.world_size, cfg.optim.mini_batch_size // dist.world_size
    rollouts = make_rollouts(cfg.rollout.backend, model, tokenizer)
    log = MetricsLog(
        run_dir,
        enabled=dist.main,
        resume_step=start,
        wandb=cfg.run.log_wandb,
        tensorboard=cfg.run.log_tensorboard,
        config=None,
    )
    tk = cfg.model.template_kwargs
    pad_id = tokenizer.pad_token_id
    temperature = cfg.rollout.temperature
    progress = _progress(start, cfg.run.max_steps, dist.main)
    marker_ids = None  # remedy 2: vocabulary ids of the epistemic markers
    if sdpo and cfg.loss.marker_mass_threshold is not None:
        vocab_texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=True)
        marker_ids = torch.tensor(marker_token_ids(vocab_texts), dtype=torch.long, device=dist.device)

    for step in range(start, cfg.run.max_steps):
        timer = Timer()
        # 1. prompts: the same global draw on every process. Each global mini-batch of prompts is split
        #    across processes, so every optimizer update sees the same prompts whatever the process count
        indices = sampler.take(G)
        mb = cfg.optim.mini_batch_size
        mine = [m + dist.rank * local_mb + i for m in range(0, G, mb) for i in range(local_mb)]
        batch = [problems[indices[i]] for i in mine]
        prompt_ids = [
            tokenizer(render(tokenizer, p.prompt, **tk), add_special_tokens=False)["input_ids"] for p in batch
        ]

        # 2-4 are rank-local no-grad work (generate stops at different lengths on each rank): under FSDP the
        #     weights are gathered once for all of it
        with engine.inference():
            # 2. rollouts and rewards
            samples = rollouts.generate(
                prompt_ids,
                n=n,
                temperature=temperature,
                top_p=cfg.rollout.top_p,
                max_new_tokens=cfg.rollout.max_new_tokens,
                seeds=[sample_seed(cfg.run.seed, step, i) for i in mine],
            )
            texts = tokenizer.batch_decode([s.response_ids for s in samples], skip_special_tokens=True)
            rewards = [reward(cfg.data.reward, batch[s.prompt_index], t) for s, t in zip(samples, texts)]

            # 3. who learns from what: teacher inputs (sdpo) or advantages (grpo)
            items: list[Item] = []
            if sdpo:
                items = _sdpo_items(cfg, tokenizer, rollouts, batch, samples, texts, rewards, mine, step)
            else:
                adv = grpo_advantages(torch.tensor(rewards), n).tolist()
                items = [
                    Item(s.prompt_ids, s.response_ids, s.logprobs, s.prompt_index, advantage=a)
                    for s, a in zip(samples, adv)
                ]

            # 4. old log-probs by the trainer (no grad): IS ratio / PPO ratio denominator and the log-prob gap
            gap_sum = gap_abs_sum = 0.0
            with torch.no_grad():
                for micro in chunks(items, cfg.optim.micro_batch_size):
                    h, w, t = response_hidden(
                        model,
                        [i.prompt_ids for i in micro],
                        [i.response_ids for i in micro],
                        pad_id,
                        dist.device,
                    )
                    lp = token_logprobs_from_hidden(
                        h, w, t, temperature=temperature, chunk_size=cfg.loss.chunk_size
                    )
                    lengths = [len(i.response_ids) for i in micro]
                    if marker_ids is not None and len(marker_ids):  # remedy 2: mask live-hedge positions
                        mass = marker_mass_from_hidden(
                            h, w, marker_ids, temperature=temperature, chunk_size=cfg.loss.chunk_size
                        )
                        for item, m in zip(micro, mass.split(lengths)):
                            keep = (m < cfg.loss.marker_mass_threshold).float().tolist()
                            item.loss_mask = [
                                a * b for a, b in zip(item.loss_mask or [1.0] * len(keep), keep)
                            ]
                    for item, part in zip(micro, lp.split(lengths)):
                        item.old_logprobs = part
                        diff = part - torch.tensor(item.rollout_logprobs, device=part.device)
                        gap_sum += float(diff.sum())
                        gap_abs_sum += float(diff.abs().sum())

        # 5. updates: one optimizer step per mini-batch of prompts (paper: 256 prompts, mini-batch 128)
        loss_sum, grad_norms, stat_sums, tokens_trained = 0.0, [], {}, 0.0
        for mb_start in range(0, local_G, local_mb):
            mb_items = [i for i in items if mb_start <= i.group < mb_start + local_mb]
            tokens_global = dist.all_reduce_sum(sum(len(i.response_ids) for i in mb_items))
            if tokens_global == 0:
                continue  # no sample in this mini-batch has a loss (e.g. no successful sibling anywhere)
            optimizer.zero_grad(set_to_none=False)
            micros = list(chunks(mb_items, cfg.optim.micro_batch_size))
            count = engine.micro_batch_count(len(micros))  # every rank runs as many engine passes
            for k in range(count):
                with engine.accumulate(sync=k == count - 1):
                    if k >= len(micros):  # padding: a zero-weighted pass, so the collectives line up
                        loss, _ = _micro_loss(
                            cfg,
                            model,
                            teacher,
                            [_dummy_item(pad_id)],
                            tokens_global,
                            pad_id,
                            dist.device,
                            engine.train_module,
                        )
                        (loss * 0.0).backward()
                        continue
                    loss, stats = _micro_loss(
                        cfg,
                        model,
                        teacher,
                        micros[k],
                        tokens_global,
                        pad_id,
                        dist.device,
                        engine.train_module,
                    )
                    loss.backward()
                loss_sum += float(loss.detach())
                micro_tokens = sum(len(i.response_ids) for i in micros[k])
                for key, v in stats.items():
                    stat_sums[key] = stat_sums.get(key, 0.0) + v * micro_tokens
                tokens_trained += micro_tokens
            grad_norms.append(clip_grad_norm(params, cfg.optim.grad_clip))
            optimizer.step()
            if teacher is not None:
                teacher.update(model)
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        with engine.inference():
            rollouts.sync_weights(model)
        sampler_state = sampler.state_dict()

        # 6. metrics (sums over processes, then means)
        record = _step_metrics(
            dist,
            step + 1,
            samples,
            texts,
            rewards,
            items,
            loss_sum,
            grad_norms,
            stat_sums,
            tokens_trained,
            gap_sum,
            gap_abs_sum,
            lr,
            timer.seconds(),
        )
        log.write(record)
        progress.update(1)
        progress.set_postfix(loss=f"{record['loss']:.4f}", score=f"{record['score']:.2f}")

        # 7. checkpoint
        done = step + 1
        if done % cfg.run.save_every == 0 or done == cfg.run.max_steps:
            trainer_state = {
                "optimizer": optimizer_state_dict(model, optimizer),  # FSDP: gathered on rank 0
                "scheduler": scheduler.state_dict(),
                "sampler": sampler_state,
                "teacher": teacher.state_dict() if teacher else {},
            }  # EMA copy: gathered too
            checkpoint.save_checkpoint(
                run_dir,
                done,
                model=model,
                tokenizer=tokenizer,
                trainer_state=trainer_state,
                rank=dist.rank,
                world_size=dist.world_size,
                barrier=dist.barrier,
                keep=cfg.run.keep_checkpoints,
            )
    progress.close()
    log.close()
    return save_final(run_dir, model, tokenizer, dist)


def _sdpo_items(cfg, tokenizer, rollouts, batch, samples, texts, rewards, mine, step) -> list[Item]:
    """Teacher prompts per sample for the configured context; samples without a demonstration get no loss."""
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
                max_new_tokens=cfg.teacher.regenerate_max_new_tokens or cfg.rollout.max_new_tokens,
                seeds=[sample_seed(cfg.run.seed + 1, step, mine[g] * n + j) for g, j in wanted],
            )
            regen_texts = tokenizer.batch_decode([s.response_ids for s in regen], skip_special_tokens=True)
            regenerated = dict(zip(wanted, regen_texts))
    items = []
    token_text: dict[int, str] = {}  # loss.exclude_markers: the decoded text of each token id, once
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
            continue  # paper: samples with no successful sibling get no loss
        ids, demo_tokens = teacher_context.teacher_prompt_ids(
            tokenizer,
            problem.prompt,
            demo,
            context=context,
            max_prompt_tokens=cfg.teacher.max_prompt_tokens,
            template_kwargs=cfg.model.template_kwargs,
        )
        mask = None
        if cfg.loss.exclude_markers:
            for t in s.response_ids:
                if t not in token_text:
                    token_text[t] = tokenizer.decode([t], skip_special_tokens=True)
            mask = marker_token_mask([token_text[t] for t in s.response_ids])
        items.append(
            Item(
                s.prompt_ids,
                s.response_ids,
                s.logprobs,
                g,
                teacher_prompt_ids=ids,
                demo_tokens=demo_tokens,
                loss_mask=mask,
            )
        )
    return items


def _dummy_item(pad_id: int) -> Item:
    """A one-token stand-in for a rank with fewer micro-batches than another (its loss is multiplied by 0)."""
    return Item([pad_id], [pad_id], [0.0], -1, teacher_prompt_ids=[pad_id], old_logprobs=torch.zeros(1))


def _micro_loss(
    cfg, model, teacher, micro: list[Item], tokens_global: float, pad_id: int, device, train_module=None
):
    """Loss of one micro-batch, already divided by the mini-batch's GLOBAL token count (so sums of
    micro-batch gradients over micro-batches and processes are the token-mean gradient). `model`: the plain
    model (teacher passes, no grad, never through DDP); `train_module`: the engine's, for the student pass
    (default `model`)."""
    train_module = model if train_module is None else train_module
    responses = [i.response_ids for i in micro]
    old = torch.cat([i.old_logprobs for i in micro]).to(device)
    temperature = cfg.rollout.temperature
    if cfg.algorithm == "grpo":
        h, w, t = response_hidden(train_module, [i.prompt_ids for i in micro], responses, pad_id, device)
        logp = token_logprobs_from_hidden(h, w, t, temperature=temperature, chunk_size=cfg.loss.chunk_size)
        adv = torch.cat([torch.full((len(i.response_ids),), i.advantage) for i in micro]).to(device)
        return grpo_loss(
            logp,
            old,
            adv,
            torch.ones_like(logp),
            clip_low=cfg.loss.clip_low,
            clip_high=cfg.loss.clip_high,
            num_tokens=tokens_global,
        )
    # teacher first: an EMA-LoRA teacher swaps weights in place, which must not touch the student's graph
    with torch.no_grad(), teacher.weights(model) as teacher_model:
        th, tw, _ = response_hidden(
            teacher_model, [i.teacher_prompt_ids for i in micro], responses, pad_id, device
        )
        tw = tw.detach().clone() if teacher.mode == "ema" and teacher.lora else tw.detach()
    sh, sw, t = response_hidden(train_module, [i.prompt_ids for i in micro], responses, pad_id, device)
    mask = torch.ones_like(t, dtype=torch.float32)
    if any(i.loss_mask is not None for i in micro):  # loss.exclude_markers / loss.marker_mass_threshold
        mask = torch.tensor(
            [m for i in micro for m in (i.loss_mask or [1.0] * len(i.response_ids))],
            dtype=torch.float32,
            device=device,
        )
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
        num_tokens=tokens_global,
        chunk_size=cfg.loss.chunk_size,
    )


def _step_metrics(
    dist,
    step,
    samples,
    texts,
    rewards,
    items,
    loss_sum,
    grad_norms,
    stat_sums,
    tokens_trained,
    gap_sum,
    gap_abs_sum,
    lr,
    seconds,
) -> dict:
    counts = [markers.marker_counts(t) for t in texts]
    sums = {
        "samples": len(samples),
        "reward": sum(rewards),
        "response_tokens": sum(len(s.response_ids) for s in samples),
        "epistemic": sum(sum(c.values()) for c in counts),
        "items": len(items),
        "item_tokens": sum(len(i.response_ids) for i in items),
        "teacher_prompt_tokens": sum(len(i.teacher_prompt_ids) for i in items),
        "demo_tokens": sum(i.demo_tokens for i in items),
        "loss": loss_sum,
        "tokens_trained": tokens_trained,
        "gap": gap_sum,
        "gap_abs": gap_abs_sum,
        **{f"m_{m}": sum(c[m] for c in counts) for m in markers.MARKERS},
        **{f"s_{k}": v for k, v in stat_sums.items() if not k.endswith("/tokens")},
    }
    sums = {k: dist.all_reduce_sum(v) for k, v in sorted(sums.items())}
    ns, ni = max(sums["samples"], 1), max(sums["items"], 1)
    trained = max(sums["tokens_trained"], 1)
    stats = {k[2:]: v / trained for k, v in sums.items() if k.startswith("s_")}
    kl = stats.get("sd/kl_k3", stats.get("grpo/kl_k1_old", 0.0))
    return {
        "step": step,
        # micro-batch losses are pre-divided by the mini-batch token count: their sum over a step is the
        # sum of the mini-batch token-means; report the mean per update
        "loss": sums["loss"] / max(len(grad_norms), 1),
        "score": sums["reward"] / ns,
        "response_tokens": sums["response_tokens"] / ns,
        "epistemic_count": sums["epistemic"] / ns,
        **{f"marker/{m}": sums[f"m_{m}"] / ns for m in markers.MARKERS},
        "kl": kl,
        "grad_norm": max(grad_norms) if grad_norms else 0.0,
        "lr": lr,
        "tokens_per_s": sums["response_tokens"] / max(seconds, 1e-9),
        "step_seconds": seconds,
        "peak_mem_mib": peak_memory_mib(dist.device),
        "samples_with_loss": sums["items"],
        "teacher_context_tokens": sums["teacher_prompt_tokens"] / ni,
        "demonstration_tokens": sums["demo_tokens"] / ni,
        "logprob_gap": sums["gap"] / max(sums["item_tokens"], 1),
        "logprob_gap_abs": sums["gap_abs"] / max(sums["item_tokens"], 1),
        **stats,
    }


def _progress(start: int, total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="step", disable=not enabled)


def save_final(run_dir: Path, model, tokenizer, dist) -> Path:
    """final/: a full HF folder (full FT) or a PEFT adapter folder (LoRA), with the tokenizer; atomic."""
    final = Path(run_dir) / "final"
    weights = checkpoint.gather_weights(model)  # FSDP: a collective on every rank; rank 0 gets the weights
    if dist.main:
        tmp = Path(run_dir) / ".final.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        checkpoint.save_weights(model, tokenizer, tmp, state_dict=weights)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    dist.barrier()
    return final
