"""`sd-bench reproduce --table {1,2,3} | --figure {3..8}`: plan, then run (or print) the stages.

    sd-bench reproduce --table 2 --scale smoke --output runs/t2          # CPU, the miniature world
    sd-bench reproduce --table 2 --scale paper --dry-run                 # stages, GPU-hours, disk
    sd-bench reproduce --table 1 --scale small --set k=4 --set probe.problems=20

`--set key=value` edits the scale (sd_bench/reproduce/scale.py; `train.<trainer key>=` reaches the trainer).
A rerun reuses the stages whose fingerprint is unchanged and redoes the others, saying why (`--no-rerun`
refuses instead). At the end: the table on stdout, where its files are, and the `sd-bench check` command.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from sd_bench.reproduce import plan as plan_mod
from sd_bench.reproduce import scale as scale_mod


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--table", type=int, choices=(1, 2, 3), help="paper table to rebuild")
    what.add_argument(
        "--figure", type=int, choices=range(3, 9), metavar="{3..8}", help="paper figure to rebuild"
    )
    what.add_argument(
        "--ablations", action="store_true", help="the miniature world's ablations (toy_manifest.yaml)"
    )
    parser.add_argument(
        "--scale",
        choices=tuple(scale_mod.SCALES),
        default="smoke",
        help="smoke: the miniature world on CPU; small: Qwen3-1.7B on one GPU; paper: the paper's setting",
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
        "--dry-run", action="store_true", help="print the plan (stages, cost, departures); run nothing"
    )
    parser.add_argument("--resume", action="store_true", help="reuse unchanged finished stages (always on)")
    parser.add_argument(
        "--no-rerun", action="store_true", help="refuse, instead of redoing, stale finished stages"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--manifest", default=None, help="manifest file (default: the scale's)")
    parser.add_argument("--json", action="store_true", help="with --dry-run: print the plan as JSON")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="edit the scale, e.g. --set eval.k=4 --set probe.problems=20 --set train.optim.lr=1e-5 "
        f"(keys: {', '.join(scale_mod.field_keys())}; shorthands: {', '.join(scale_mod.SHORTHANDS)})",
    )


def quiet_third_party() -> None:
    """Hub download bars and lm-eval's repeated metadata hint off; the libraries' own bars go off where they
    are imported (io.quiet_progress). sd-bench's progress (progress.py, the trainer's step bar) stays;
    TQDM_DISABLE is not used: it would silence those too."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for name in ("lm-eval", "lm_eval", "lm_eval.api.task", "lm_eval.tasks", "lm_eval.evaluator"):
        # lm-eval logs 'Custom kwargs can be passed to --metadata' once per task build
        logging.getLogger(name).addFilter(
            lambda record: "Custom kwargs can be passed" not in record.getMessage()
        )


def run(args: argparse.Namespace) -> int:
    target = "ablations" if args.ablations else f"table{args.table}" if args.table else f"figure{args.figure}"
    out_dir = Path(args.output or f"out/{target}-{args.scale}").resolve()
    req = plan_mod.PlanRequest(
        target, args.scale, list(args.set), args.from_checkpoints, args.seed, args.manifest
    )
    from sd_bench import manifest as manifest_mod

    try:
        plan = plan_mod.build_plan(req)
    except (manifest_mod.ManifestError, plan_mod.PlanError) as exc:
        print(f"sd-bench reproduce: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(json.dumps(plan.to_dict(), indent=2, default=str) if args.json else plan_mod.render_plan(plan))
        return 0
    from sd_bench.reproduce.execute import execute

    quiet_third_party()
    try:
        report = execute(plan, out_dir, seed=args.seed, no_rerun=args.no_rerun)
    except plan_mod.PlanError as exc:
        print(f"sd-bench reproduce: {exc}", file=sys.stderr)
        return 1
    print(
        f"{target} ({args.scale}): {len(report['ran'])} stage(s) run, {len(report['skipped'])} reused; "
        f"outputs in {out_dir}"
    )
    md = out_dir / f"{target}.md"
    if md.is_file():
        print("\n" + md.read_text())
    files = [out_dir / o for o in plan.stages[-1].outputs]
    print("files: " + ", ".join(str(f) for f in files if f.exists()))
    if (out_dir / f"{target}.json").is_file():
        base = plan_mod.REPO_ROOT / "results" / args.scale / f"{target}.json"
        against = os.path.relpath(base) if base.is_file() else f"results/{args.scale}/{target}.json"
        print(f"check: sd-bench check {out_dir / (target + '.json')} --against {against}")
    return 0
