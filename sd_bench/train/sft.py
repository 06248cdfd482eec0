"""Off-policy SFT on a traces file (Table 2: unguided D_ug vs solution-guided D_sg traces).

    for step in range(start, max_steps):
        batch <- the sampler's next `run.batch_size` traces of this epoch (an epoch's last batch is short:
                 each trace is trained once per epoch, `run.epochs` times in all)
        loss  <- token-mean NLL of the response tokens (prompt tokens are context only), micro-batched
        backward (DDP / FSDP sum the gradients over processes) -> clip -> AdamW step; metrics.jsonl;
        checkpoint every `save_every`

Traces: JSONL, one {"prompt" | "question", "response"} per line; the prompt is rendered with the chat template
and generation prompt (as at evaluation), the response's ids follow, then EOS so the model learns to stop.
The paper does not give its SFT recipe (PAPER.md, Table 2); recipes/sft.yaml documents the choices made.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sd_bench import markers
from sd_bench.data import DataError
from sd_bench.prompts import problem_prompt, render
from sd_bench.train import checkpoint
from sd_bench.train.batching import chunks, response_hidden, save_final
from sd_bench.train.config import ConfigError, TrainConfig
from sd_bench.train.distributed import (
    Engine,
    clip_grad_norm,
    load_optimizer_state_dict,
    optimizer_state_dict,
    resolve_strategy,
)
from sd_bench.train.losses import token_logprobs_from_hidden
from sd_bench.train.model import load_model, resolve_model_path, trainable_parameters
from sd_bench.train.runtime import (
    MetricsLog,
    Sampler,
    Timer,
    build_optimizer,
    build_scheduler,
    peak_memory_mib,
    seed_everything,
    setup_distributed,
    warmup_warning,
)
from sd_bench.train.training_data import read_jsonl, smoke_problems, text_field


def load_traces(path: Path) -> list[dict]:
    """[{prompt, response}]: `prompt` is the user turn (a bare `question` gets the paper's instruction)."""
    if str(path) == "smoke":  # the smoke scale: the 8 built-in sums with their worked solutions as traces
        return [
            {"prompt": p.prompt, "response": f"<think>{p.solution}</think> {p.solution}"}
            for p in smoke_problems()
        ]
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"data.name={str(path)!r}: no such file; SFT needs a traces JSONL file of {{prompt, response}} "
            "per line (data.name=PATH)"
        )
    out = []
    for n, rec in read_jsonl(path, "trace"):
        prompt = text_field(path, n, rec, "prompt", required=False)
        question = None if prompt else text_field(path, n, rec, "question", "prompt")
        response = text_field(path, n, rec, "response")
        out.append({"prompt": prompt or problem_prompt(question), "response": response})
    return out


def encode(tokenizer, trace: dict, template_kwargs: dict, max_len: int) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids + EOS), the response truncated on the right to fit max_len."""
    prompt = tokenizer(render(tokenizer, trace["prompt"], **template_kwargs), add_special_tokens=False)[
        "input_ids"
    ]
    response = tokenizer(trace["response"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt, response[: max(1, max_len - len(prompt))]


def train(cfg: TrainConfig, run_dir: Path, *, resume: bool = False) -> Path:
    run_dir = Path(run_dir)
    dist = setup_distributed()
    if dist.main:
        resolve_model_path(cfg.model, run_dir)
    dist.barrier()
    seed_everything(cfg.run.seed)  # the same LoRA init on every rank
    model, tokenizer, _ = load_model(cfg.model, run_dir, dist.device)
    if dist.rank:
        seed_everything(cfg.run.seed + dist.rank)  # then rank-local randomness
    engine = Engine(
        model,
        dist,
        resolve_strategy(cfg.distributed.strategy, cfg.model.finetune),
        cfg.distributed.find_unused_parameters,
    )
    traces = load_traces(Path(cfg.data.name))
    if cfg.data.max_problems is not None:
        traces = traces[: cfg.data.max_problems]
    params = [p for _, p in trainable_parameters(model)]  # FSDP: this rank's shards
    optimizer = build_optimizer(params, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.betas)
    scheduler = build_scheduler(optimizer, cfg.optim.warmup_steps)
    sampler = Sampler(len(traces), cfg.run.seed)
    B = cfg.run.batch_size
    if B % dist.world_size:
        raise ConfigError(
            f"field `run.batch_size` = {B} must be divisible by the number of processes ({dist.world_size})"
        )
    steps_per_epoch = -(-len(traces) // B)
    max_steps = min(cfg.run.max_steps, steps_per_epoch * cfg.run.epochs)
    if dist.main:
        print(
            f"data: {cfg.data.name} ({len(traces)} traces, {steps_per_epoch} steps per epoch of at most {B}, "
            f"{max_steps} steps)",
            file=sys.stderr,
        )
        if (warning := warmup_warning(max_steps, cfg.optim.warmup_steps)) is not None:
            print(warning, file=sys.stderr)

    start = 0
    latest = checkpoint.latest_checkpoint(run_dir) if resume else None
    if latest is not None:
        state = checkpoint.load_checkpoint(latest, model=model, rank=dist.rank)
        load_optimizer_state_dict(model, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        start = state["step"]
    log = MetricsLog(
        run_dir,
        enabled=dist.main,
        resume_step=start,
        wandb=cfg.run.log_wandb,
        tensorboard=cfg.run.log_tensorboard,
        trackio=cfg.run.log_trackio,
    )
    from tqdm.auto import tqdm

    progress = tqdm(total=max_steps, initial=start, desc="sft", unit="step", disable=not dist.main)
    for step in range(start, max_steps):
        timer = Timer()
        drawn = sampler.take_within_epoch(B)  # the same draw on every process; split into contiguous shares
        size = len(drawn)
        indices = drawn[dist.rank * size // dist.world_size : (dist.rank + 1) * size // dist.world_size]
        batch = [
            encode(tokenizer, traces[i], cfg.model.template_kwargs, cfg.run.max_seq_len) for i in indices
        ]
        tokens_global = dist.all_reduce_sum(sum(len(r) for _, r in batch))
        optimizer.zero_grad(set_to_none=False)
        loss_sum = 0.0
        micros = list(chunks(batch, cfg.optim.micro_batch_size))
        count = engine.micro_batch_count(len(micros))  # the maximum over ranks (shares differ by <= 1)
        for k in range(count):
            micro = micros[k] if k < len(micros) else [([tokenizer.pad_token_id], [tokenizer.pad_token_id])]
            with engine.accumulate(sync=k == count - 1):
                h, w, t = response_hidden(
                    engine.train_module,
                    [p for p, _ in micro],
                    [r for _, r in micro],
                    tokenizer.pad_token_id,
                    dist.device,
                )
                logp = token_logprobs_from_hidden(h, w, t, chunk_size=cfg.loss.chunk_size)
                loss = -logp.sum() / tokens_global  # token-mean NLL over the global batch
                if k >= len(micros):
                    loss = loss * 0.0  # padding pass: keeps the engine's collectives in step
                loss.backward()
            loss_sum += float(loss.detach())
        grad_norm = clip_grad_norm(params, cfg.optim.grad_clip)
        optimizer.step()
        lr = scheduler.get_last_lr()[0]
        scheduler.step()

        texts = [traces[i]["response"] for i in indices]
        seconds = timer.seconds()
        record = {
            "step": step + 1,
            "loss": dist.all_reduce_sum(loss_sum),
            "response_tokens": tokens_global / size,
            "epistemic_count": dist.all_reduce_sum(sum(markers.epistemic_count(x) for x in texts)) / size,
            "epoch": sampler.epoch + 1,
            "grad_norm": grad_norm,
            "lr": lr,
            "tokens_per_s": tokens_global / max(seconds, 1e-9),
            "step_seconds": seconds,
            "peak_mem_mib": peak_memory_mib(dist.device),
        }
        log.write(record)
        progress.update(1)
        progress.set_postfix(loss=f"{record['loss']:.4f}")
        done = step + 1
        if done % cfg.run.save_every == 0 or done == max_steps:
            state = {
                "optimizer": optimizer_state_dict(model, optimizer),
                "scheduler": scheduler.state_dict(),
                "sampler": sampler.state_dict(),
            }
            checkpoint.save_checkpoint(
                run_dir,
                done,
                model=model,
                tokenizer=tokenizer,
                trainer_state=state,
                rank=dist.rank,
                world_size=dist.world_size,
                barrier=dist.barrier,
                keep=cfg.run.keep_checkpoints,
            )
    progress.close()
    log.close()
    return save_final(run_dir, model, tokenizer, dist)
