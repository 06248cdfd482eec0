"""`sd-bench train RECIPE [--scale smoke|small|paper] --output DIR [--max-steps N] [--resume | --overwrite]
[key=value ...]`

RECIPE is a recipe name (recipes/<name>.yaml: sdpo, sdpo_nothink, grpo, sft, ...) or a YAML path. The
resolved config is written to DIR/config.yaml; `--resume` continues from the newest complete
DIR/checkpoint-<step>/ with that saved config (command-line overrides may only change run.max_steps).
Multi-process: `torchrun --nproc-per-node N -m sd_bench.cli train ...`.

Everything that can be checked without a model is checked before one loads: the config's values, the
run folder (a folder holding another run's checkpoints needs `--resume` or `--overwrite`), `model.path`, and a
JSONL data file. Each failure is one line naming the field, file or folder and the fix (exit 2).

Without `--scale`, a machine without a GPU runs the smoke preset (tiny model, 8 built-in sums, the
`contains_answer` smoke reward). Given `model.path=` without `--scale` there, the command refuses rather than
train a real model on toy sums: pass `--scale smoke` to do exactly that, or `--scale small|paper`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

# what `sd-bench train` writes into its run folder (removed by --overwrite; nothing else is touched)
RUN_FILES = ("metrics.jsonl", "config.yaml", "final", ".final.tmp", "tensorboard")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe name (e.g. sdpo, grpo, sft) or a recipe YAML path")
    parser.add_argument(
        "--scale",
        choices=["smoke", "small", "paper"],
        default=None,
        help="smoke: tiny local model on CPU (default without a GPU); small: Qwen3-1.7B on one "
        "GPU; paper: the paper's settings (default with a GPU)",
    )
    parser.add_argument("--output", "-o", required=True, type=Path, help="run folder")
    parser.add_argument(
        "--max-steps", type=int, default=None, help="stop after this many steps (run.max_steps)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in --output"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in an --output that holds another run (its checkpoints, final/ and "
        "metrics.jsonl are deleted first)",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=1e-5"
    )


def default_scale() -> str:
    import torch

    return "paper" if torch.cuda.is_available() else "smoke"


def run(args: argparse.Namespace) -> int:
    from sd_bench.data import DataError
    from sd_bench.train.config import ConfigError, save_config

    out: Path = args.output
    try:
        cfg, scale, resume_step = prepare(args)
    except (ConfigError, DataError) as exc:
        print(f"sd-bench train: error: {exc}", file=sys.stderr)
        return 2
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if main_rank:
        if args.overwrite and resume_step is None:
            remove_run(out)
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        for line in start_lines(
            cfg, args.recipe, scale, out, resume_step, explicit_scale=args.scale is not None
        ):
            print(line, file=sys.stderr)
    if cfg.algorithm == "sft":
        from sd_bench.train.sft import train
    else:
        from sd_bench.train.onpolicy import train
    final = train(cfg, out, resume=resume_step is not None)
    print(f"final weights: {final}", file=sys.stderr)
    return 0


def prepare(args: argparse.Namespace):
    """(config, scale, step to resume from or None), or ConfigError / DataError: every check that needs no
    model."""
    from sd_bench.train.config import ConfigError, load_config
    from sd_bench.train.training_data import check_data_files

    out: Path = args.output
    overrides = list(args.overrides)
    if args.max_steps is not None:
        overrides.append(f"run.max_steps={args.max_steps}")
    scale = args.scale or default_scale()
    cfg = load_config(args.recipe, scale=scale, overrides=overrides)
    if args.scale is None and scale == "smoke" and cfg.model.path != "tiny":
        raise ConfigError(
            f"model.path={cfg.model.path} without --scale: with no GPU the default is --scale smoke, "
            "which trains on the 8 built-in sums with the `contains_answer` smoke reward, not on the "
            "recipe's data; pass --scale smoke to do that on purpose, or --scale small|paper for the "
            "recipe's data and reward"
        )
    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: continue the run, or replace it")
    resume_step = check_run_folder(out, cfg, resume=args.resume, overwrite=args.overwrite)
    check_model_path(cfg.model.path)
    check_data_files(cfg)
    return cfg, scale, resume_step


def check_run_folder(out: Path, cfg, *, resume: bool, overwrite: bool) -> int | None:
    """The checkpoint step `--resume` continues from (None: a new run), or ConfigError.

    A new run refuses a folder holding another run's checkpoints or final/ (issue 8: a later --resume would
    continue the old run under the new config) unless `--overwrite`; `--resume` refuses a folder with nothing
    to resume, a config that differs from the saved one, and a run.max_steps below the checkpoint's step."""
    from sd_bench.train import checkpoint
    from sd_bench.train.config import ConfigError

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {out}: exists and is not a folder; pass a run folder")
    if not out.is_dir():
        if resume:
            raise ConfigError(f"--resume: {out} does not exist, so there is no run to resume; drop --resume")
        return None
    found = checkpoint.list_checkpoints(out)
    latest = checkpoint.latest_checkpoint(out)
    if not resume:
        held = [p.name for p in found] + [n for n in ("final",) if (out / n).exists()]
        if held and not overwrite:
            raise ConfigError(
                f"--output {out} holds another run ({', '.join(held[-3:])}); pass --resume to continue it or "
                "--overwrite to replace it, or choose a new folder"
            )
        return None
    if latest is None:
        raise ConfigError(
            f"--resume: {out} holds no complete checkpoint-<step>/ to resume from; drop --resume to start "
            "the run over"
        )
    step = int(latest.name.split("-")[1])
    _check_same_config(out / "config.yaml", cfg)
    if cfg.run.max_steps < step:
        raise ConfigError(
            f"--max-steps / run.max_steps = {cfg.run.max_steps} is below the step of {latest} ({step}); "
            f"give at least {step} (a run cannot be shortened after the fact)"
        )
    return step


def _check_same_config(saved: Path, cfg) -> None:
    import yaml

    from sd_bench.train.config import ConfigError, from_dict, to_dict

    if not saved.is_file():
        return
    try:
        tree = yaml.safe_load(saved.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--resume: {saved} is not readable YAML ({exc.__class__.__name__})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"--resume: {saved} does not hold a config mapping")
    previous = from_dict(tree, str(saved))
    previous.run.max_steps = cfg.run.max_steps
    now, before = _flat(to_dict(cfg)), _flat(to_dict(previous))
    diff = [k for k in now if now[k] != before.get(k)]
    if diff:
        raise ConfigError(
            f"--resume: the config differs from {saved} in {', '.join(diff)}; resume with the same recipe, "
            "scale and overrides (only --max-steps may change)"
        )


def remove_run(out: Path) -> None:
    """--overwrite: delete what `sd-bench train` wrote there (checkpoints, final/, metrics, config) and
    nothing else."""
    from sd_bench.train import checkpoint

    if not out.is_dir():
        return
    for path in [
        *checkpoint.list_checkpoints(out),
        *out.glob(".checkpoint-*.tmp"),
        *(out / n for n in RUN_FILES),
    ]:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def check_model_path(path: str) -> None:
    """`tiny`, a local model folder (with config.json), or a Hugging Face repo id (owner/name; offline: it
    must be in the local cache). Anything else is one ConfigError, before transformers sees it."""
    from sd_bench.train.config import ConfigError

    if path == "tiny":
        return
    local = Path(path).expanduser()
    if local.exists():
        if not (local.is_dir() and (local / "config.json").is_file()):
            raise ConfigError(
                f"field `model.path` = {path!r}: not a model folder (no config.json in it); give a folder "
                "saved by save_pretrained or a Hugging Face repo id (owner/name)"
            )
        return
    if path.startswith(("/", ".", "~")) or not _REPO_ID.match(path):
        raise ConfigError(
            f"field `model.path` = {path!r}: no such folder, and not a Hugging Face repo id (owner/name); "
            "give a local model folder or a repo id such as deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"
        )
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(path, "config.json"), str):
            raise ConfigError(
                f"field `model.path` = {path!r}: HF_HUB_OFFLINE is set and the model is not in the local "
                "Hugging Face cache; download it first (unset HF_HUB_OFFLINE) or give a local folder"
            )


def start_lines(cfg, recipe: str, scale: str, out: Path, resume_step: int | None, *, explicit_scale: bool):
    """What the run is about to do, printed before the model loads: scale, model, data, step size, schedule,
    and the warnings that matter (a paper/small run without a GPU, a run too short for its warmup)."""
    import torch

    from sd_bench.train.runtime import warmup_warning

    gpu = torch.cuda.is_available()
    d, r, o = cfg.data, cfg.rollout, cfg.optim
    what = f"resuming from checkpoint-{resume_step}" if resume_step is not None else "new run"
    default = "" if explicit_scale else ", the default"
    device = "cuda" if gpu else "cpu"
    lines = [
        f"sd-bench train: {cfg.algorithm} ({recipe}, scale {scale}{default}) -> {out} ({what})",
        f"  model: {cfg.model.path} ({cfg.model.dtype}, {cfg.model.finetune} fine-tuning) on {device}",
    ]
    if cfg.algorithm == "sft":
        lines.append(f"  data: {d.name} (traces; reward not used)")
        lines.append(
            f"  steps: up to {cfg.run.max_steps}, {cfg.run.epochs} epoch(s) of batches of "
            f"{cfg.run.batch_size} "
            f"traces (<= {cfg.run.max_seq_len} tokens each); lr {o.lr:g}, warmup {o.warmup_steps} steps"
        )
    else:
        rows = "deduplicated" if d.dedupe else "every row, repeats included"
        limit = "all prompts" if d.max_prompt_tokens is None else f"prompts <= {d.max_prompt_tokens} tokens"
        cap = "" if d.max_problems is None else f", first {d.max_problems}"
        lines.append(f"  data: {d.name} ({rows}{cap}, {limit}; reward {d.reward})")
        top_k = "" if r.top_k is None else f", top_k {r.top_k}"
        lines.append(
            f"  steps: {cfg.run.max_steps} x {r.prompts_per_step} prompts x {r.n} rollouts of up to "
            f"{r.max_new_tokens} new tokens (temperature {r.temperature:g}, top_p {r.top_p:g}{top_k}); "
            f"lr {o.lr:g}, warmup {o.warmup_steps} steps"
        )
        if (warning := warmup_warning(cfg.run.max_steps, o.warmup_steps)) is not None:
            lines.append(warning)
    if d.name == "smoke" and cfg.model.path != "tiny":
        lines.append(
            f"note: training {cfg.model.path} on the 8 built-in smoke sums"
            + (" with the `contains_answer` smoke reward" if d.reward == "contains_answer" else "")
            + ": a smoke test, not the recipe's data"
        )
    if scale in ("paper", "small") and not gpu:
        size = (
            f"{r.prompts_per_step} x {r.n} rollouts of up to {r.max_new_tokens} tokens per step"
            if cfg.algorithm != "sft"
            else f"{cfg.run.batch_size} traces of up to {cfg.run.max_seq_len} tokens per step"
        )
        lines.append(
            f"warning: --scale {scale} without a GPU: {cfg.model.path} at {size} will take days per step on "
            "CPU; use --scale smoke for a CPU check"
        )
    return lines


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and k not in ("template_kwargs",):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
