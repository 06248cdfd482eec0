"""`sd-bench reproduce --table {1,2,3} | --figure {3..8}`: plan, then run (or print) the stages.

    sd-bench reproduce --table 2 --scale smoke --output results/smoke     # CPU, the toy world
    sd-bench reproduce --table 2 --scale paper --dry-run                   # stages, GPU-hours, disk
    sd-bench reproduce --figure 3 --scale paper --from-checkpoints --output out/fig3

Resuming is implicit: finished stages (outputs present + done-marker) are reused, so rerunning the same
command after a crash continues with the stage that was in flight. `--resume` is accepted for clarity.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sd_bench.reproduce import plan as plan_mod


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--table", type=int, choices=(1, 2, 3), help="paper table to rebuild")
    what.add_argument(
        "--figure", type=int, choices=range(3, 9), metavar="{3..8}", help="paper figure to rebuild"
    )
    parser.add_argument(
        "--scale",
        choices=plan_mod.SCALES,
        default="smoke",
        help="smoke: toy world on CPU; small: Qwen3-1.7B on one GPU; paper: the paper's setting",
    )
    parser.add_argument(
        "--output", default=None, metavar="DIR", help="output folder (default: out/<target>-<scale>)"
    )
    parser.add_argument(
        "--from-checkpoints",
        action="store_true",
        help="evaluate the authors' released step-100 checkpoints instead of training, where they exist",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the plan (stages, GPU-hours, disk); run nothing"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="reuse finished stages (always on: a rerun continues where it stopped)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--manifest", default=None, help="checkpoints manifest (default: the repository's)")
    parser.add_argument("--json", action="store_true", help="with --dry-run: print the plan as JSON")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="small/paper scale: change a setting without editing code, e.g. --set model=PATH --set limit=10 "
        "--set train.model.finetune=lora (keys: sd_bench/reproduce/full.py docstring)",
    )


def run(args: argparse.Namespace) -> int:
    from sd_bench import manifest as manifest_mod

    target = f"table{args.table}" if args.table is not None else f"figure{args.figure}"
    out_dir = Path(args.output or f"out/{target}-{args.scale}")
    settings = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"sd-bench reproduce: --set {item!r}: expected KEY=VALUE", file=sys.stderr)
            return 2
        settings[key.strip()] = value
    if settings and args.scale == "smoke":
        print(
            "sd-bench reproduce: --set applies to --scale small|paper (smoke is fixed: the CI baseline)",
            file=sys.stderr,
        )
        return 2
    try:
        manifest = manifest_mod.load(args.manifest)
        req = plan_mod.PlanRequest(
            target, args.scale, manifest, args.from_checkpoints, args.seed, out_dir, settings=settings
        )
        plan = plan_mod.build_plan(req)
    except (manifest_mod.ManifestError, plan_mod.PlanError) as exc:
        print(f"sd-bench reproduce: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(plan_mod.plan_json(plan) if args.json else plan_mod.render_plan(plan))
        return 0
    try:
        report = plan_mod.execute(plan, out_dir, seed=args.seed, manifest=manifest)
    except plan_mod.PlanError as exc:
        print(f"sd-bench reproduce: {exc}", file=sys.stderr)
        return 1
    print(
        f"{target} ({args.scale}): {len(report['ran'])} stage(s) run, {len(report['skipped'])} reused; "
        f"outputs in {out_dir}"
    )
    return 0
