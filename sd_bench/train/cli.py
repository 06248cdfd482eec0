"""`sd-bench train RECIPE [--scale smoke|small|paper] --output DIR [--max-steps N] [--resume] [key=value ...]`

RECIPE is a recipe name (recipes/<name>.yaml: sdpo, sdpo_nothink, grpo, sft, ...) or a YAML path. The
resolved config is written to DIR/config.yaml; `--resume` continues from the newest complete
DIR/checkpoint-<step>/ with that saved config (command-line overrides may only change run.max_steps).
Multi-process: `torchrun --nproc-per-node N -m sd_bench.cli train ...`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


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
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=1e-5"
    )


def default_scale() -> str:
    import torch

    return "paper" if torch.cuda.is_available() else "smoke"


def run(args: argparse.Namespace) -> int:
    from sd_bench.train.config import ConfigError, from_dict, load_config, save_config, to_dict

    out: Path = args.output
    overrides = list(args.overrides)
    if args.max_steps is not None:
        overrides.append(f"run.max_steps={args.max_steps}")
    saved = out / "config.yaml"
    try:
        scale = args.scale or default_scale()
        cfg = load_config(args.recipe, scale=scale, overrides=overrides)
        if args.resume and saved.is_file():
            import yaml

            previous = from_dict(yaml.safe_load(saved.read_text()), str(saved))
            previous.run.max_steps = cfg.run.max_steps
            if to_dict(previous) != to_dict(cfg):
                diff = [
                    k
                    for k in _flat(to_dict(cfg))
                    if _flat(to_dict(cfg))[k] != _flat(to_dict(previous)).get(k)
                ]
                raise ConfigError(
                    f"--resume: the config differs from {saved} in {', '.join(diff)}; resume with "
                    "the same recipe, scale and overrides (only --max-steps may change)"
                )
    except ConfigError as exc:
        print(f"sd-bench train: error: {exc}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        save_config(cfg, saved)
    print(f"sd-bench train: {cfg.algorithm} ({args.recipe}, scale {scale}) -> {out}", file=sys.stderr)
    if cfg.algorithm == "sft":
        from sd_bench.train.sft import train
    else:
        from sd_bench.train.onpolicy import train
    final = train(cfg, out, resume=args.resume)
    print(f"final weights: {final}", file=sys.stderr)
    return 0


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and k not in ("template_kwargs",):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
