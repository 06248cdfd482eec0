"""GPU-hours (or CPU seconds) and disk of each stage, derived from what the stage will run.

Why derived and not tabulated: a train stage is priced from the TrainConfig the trainer will load
(`load_config(recipe, scale=preset, overrides=the stage's overrides)`: prompts per step, rollouts, rollout
token limit, steps, checkpoints; SFT: epochs, sequence limit), and a sampling stage from its own decoding
(k, max_new_tokens). So `--dry-run` and the run cannot disagree; `stage.basis` records the numbers used.

Assumptions (one H100 80GB, bf16): vLLM generation at 4,000 output tokens/s for 7-8B models and 10,000 for
1.7B; mean response tokens with thinking on: DAPO 13,000 (unguided), 2,000 (solution-guided), AIME 14,000,
AMC23 8,000, MATH500 4,000, a quarter of these with thinking off, capped at the stage's token limit;
training 6 x params FLOPs per token (+2 x params for an SDPO teacher forward) at 35% of 989 TFLOP/s; disk: bf16
weights per kept checkpoint + one fp32 optimizer state (12 bytes/param), text at 4 bytes per token.
CPU (the toy world): sampling ~4,000 tokens/s and training ~1,500 rollout tokens/s on one core.
These plan a run; they do not promise one (SDPO shortens responses, so an on-policy run is an upper bound).
"""

from __future__ import annotations

MEAN_TOKENS = {
    "dapo": 13000,
    "guided": 2000,
    "sd_aime24": 14000,
    "sd_aime25": 14000,
    "sd_amc23": 8000,
    "sd_math500": 4000,
    "sd_toy_id": 30,
    "sd_toy_ood": 40,
    "toy": 30,
}
PARAMS_B = {"deepseek-r1-distill-qwen-7b": 7.6, "qwen3-8b": 8.2, "olmo-3-7b": 7.3, "qwen3-1.7b": 2.0}
TASK_PROBLEMS = {
    "sd_aime24": 30,
    "sd_aime25": 30,
    "sd_amc23": 40,
    "sd_math500": 500,
    "sd_toy_id": 256,
    "sd_toy_ood": 256,
}
H100_PEAK_FLOPS, MFU = 989e12, 0.35
BYTES_PER_TOKEN = 4
KEEP_FRACTION = 0.3  # share of problems solved 1-4 of 8 times (the paper kept 100 of ~330 visited)
# measured on the toy base, one core of a loaded 2-core machine: x0.5-1
CPU_GEN_TPS, CPU_TRAIN_TPS = 4000.0, 1500.0
NOTES = {
    "gpu": [
        "estimates: sd_bench/reproduce/cost.py (H100, vLLM, 35% MFU; train stages from their TrainConfig)"
    ],
    "cpu": ["estimates: rough CPU seconds on one core (sd_bench/reproduce/cost.py)"],
}


def params_b(model: str | None) -> float:
    name = (model or "").lower()
    if "toy" in name:
        return 0.00086
    return next((v for k, v in PARAMS_B.items() if k in name), 8.0)


def mean_tokens(kind: str, thinking: bool, cap: int | None, toy: bool) -> float:
    t = MEAN_TOKENS["toy" if toy and kind in ("dapo", "guided") else kind]
    t *= 1.0 if thinking or toy else 0.25
    return min(t, cap) if cap else t


def _set(stage, scale, gen_tokens: float, train_tokens: float, teacher: bool, disk_gb: float) -> None:
    p = params_b(stage.model)
    if scale.device == "cpu":
        stage.est_seconds = round(2.0 + gen_tokens / CPU_GEN_TPS + train_tokens / CPU_TRAIN_TPS, 1)
        stage.gpu_hours = 0.0
    else:
        gen_h = gen_tokens / (10000.0 if p <= 3 else 4000.0) / 3600
        train_h = (6 + (2 if teacher else 0)) * p * 1e9 * train_tokens / (H100_PEAK_FLOPS * MFU) / 3600
        stage.gpu_hours = gen_h + train_h
        stage.est_seconds = stage.gpu_hours * 3600
    stage.disk_gb = disk_gb


def estimate(stage, scale) -> None:
    """Fill stage.gpu_hours / est_seconds / disk_gb / basis from the stage's own settings."""
    from sd_bench.reproduce.io import trainer_args

    p, toy = stage.params, scale.device == "cpu"
    if stage.kind == "train":
        _train(stage, scale, trainer_args(p["overrides"]), toy)
        return
    tokens = 0.0  # sampled; render and Table 1's probe evaluations (grading files) sample nothing
    if stage.kind == "select":
        visited = min(p["keep"] / KEEP_FRACTION, p["candidates"] or float("inf"))
        tokens = visited * p["k"] * mean_tokens("dapo", p["thinking"], p["max_new_tokens"], toy)
        stage.basis = {"problems_visited": round(visited), "k": p["k"], "max_new_tokens": p["max_new_tokens"]}
    elif stage.kind == "generate":
        problems = scale.probe.traces if stage.outputs[0].startswith("traces/") else scale.probe.problems
        kind = "dapo" if p["context"] in ("none", "answer") else "guided"
        tokens = problems * p["k"] * mean_tokens(kind, p["thinking"], p["max_new_tokens"], toy)
        stage.basis = {"problems": problems, "k": p["k"], "max_new_tokens": p["max_new_tokens"]}
    elif stage.kind == "evaluate" and not p.get("probe"):
        for t in p["tasks"]:
            n = min(p["limit"] or TASK_PROBLEMS.get(t, 100), TASK_PROBLEMS.get(t, 100))
            tokens += n * p["k"] * mean_tokens(t, p["thinking"], p["max_new_tokens"], toy)
        stage.basis = {"k": p["k"], "limit": p["limit"], "max_new_tokens": p["max_new_tokens"]}
    _set(stage, scale, tokens, 0, False, tokens * (BYTES_PER_TOKEN / 1e9))


def _train(stage, scale, args: list[str], toy: bool) -> None:
    """Price a train stage from the TrainConfig the trainer will load for it."""
    from sd_bench.train.config import load_config
    from sd_bench.train.launch import describe, processes_from_launcher

    cfg = load_config(stage.recipe, scale=stage.params["preset"], overrides=args)
    pb = params_b(stage.model)
    if not toy:  # issue 10: the launch each training stage gets (processes, engine, rollouts, memory per GPU)
        launch = describe(cfg, processes_from_launcher(stage.params.get("launcher")), int(pb * 1e9))
        stage.launch = launch.line()
    if cfg.algorithm == "sft":
        traces = scale.probe.traces
        kind = "guided" if "solution_guided" in str(cfg.data.name) else "dapo"
        per = mean_tokens(kind, True, cfg.run.max_seq_len, toy)
        tokens = traces * per * cfg.run.epochs
        stage.basis = {"traces": traces, "max_seq_len": cfg.run.max_seq_len, "epochs": cfg.run.epochs}
        _set(stage, scale, 0, tokens, False, pb * 2)
        return
    rollouts = cfg.rollout.prompts_per_step * cfg.rollout.n * cfg.run.max_steps
    thinking = cfg.model.template_kwargs.get("enable_thinking") is not False
    per = mean_tokens("dapo", thinking, cfg.rollout.max_new_tokens, toy)
    kept = cfg.run.keep_checkpoints or cfg.run.max_steps // cfg.run.save_every
    stage.basis = {
        "prompts_per_step": cfg.rollout.prompts_per_step,
        "n": cfg.rollout.n,
        "max_new_tokens": cfg.rollout.max_new_tokens,
        "steps": cfg.run.max_steps,
        "save_every": cfg.run.save_every,
    }
    _set(stage, scale, rollouts * per, rollouts * per, cfg.algorithm != "grpo", pb * (2 * (kept + 1) + 12))
