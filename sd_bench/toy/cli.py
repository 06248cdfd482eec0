"""`sd-bench toy ...`: the miniature world's commands.

    sd-bench toy pretrain [--steps 2600] [--output sd_bench/toy/base] [--seed 0]
    sd-bench toy experiment [--base sd_bench/toy/base] [--steps 60] [--seeds 0] [--out results.json]
"""

from __future__ import annotations

import argparse

from sd_bench.toy import BASE_DIR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="toy_command", metavar="ACTION", required=True)
    pre = sub.add_parser("pretrain", help="pretrain the toy base model (issue 5 recipe)")
    pre.add_argument("--steps", type=int, default=2600, help="optimizer steps (default 2600)")
    pre.add_argument("--output", default=str(BASE_DIR), help=f"output folder (default {BASE_DIR})")
    pre.add_argument("--seed", type=int, default=0)
    pre.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    pre.add_argument("--save-every", type=int, default=0, help="also save every N steps (0: only at the end)")

    exp = sub.add_parser("experiment", help="standalone measurement of the effect (plain torch)")
    exp.add_argument("--base", default=str(BASE_DIR))
    exp.add_argument("--steps", type=int, default=60)
    exp.add_argument("--seeds", type=int, nargs="+", default=[0])
    exp.add_argument("--runs", nargs="+", default=None, help="subset of runs (default: all)")
    exp.add_argument("--threads", type=int, default=None)
    exp.add_argument("--out", default=None, help="write the result JSON here")


def run(args: argparse.Namespace) -> int:
    if args.toy_command == "pretrain":
        from sd_bench.toy.pretrain import pretrain

        pretrain(args.output, steps=args.steps, seed=args.seed, threads=args.threads, save_every=args.save_every)
        return 0
    if args.toy_command == "experiment":
        from sd_bench.toy.experiment import main

        return main(args)
    raise ValueError(f"unknown toy action {args.toy_command!r}")
