"""`sd-bench toy ACTION`: the miniature world's commands.

    sd-bench toy pretrain [--steps 2600] [--output sd_bench/toy/base] [--seed 0]
    sd-bench toy experiment [--base sd_bench/toy/base] [--steps 60] [--seeds 0 1 2] [--out result.json]

One positional action with flat options (not argparse sub-parsers): `sd-bench` parses with
`parse_intermixed_args`, which rejects nested sub-parsers.
"""

from __future__ import annotations

import argparse

from sd_bench.toy import BASE_DIR

DEFAULT_STEPS = {"pretrain": 2600, "experiment": 60}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=sorted(DEFAULT_STEPS),
        help="pretrain: rebuild the toy base; experiment: measure the effect (plain torch)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="pretrain: optimizer steps (2600); experiment: post-training steps per run (60)",
    )
    parser.add_argument("--seed", type=int, default=0, help="pretrain: seed")
    parser.add_argument(
        "--output", default=str(BASE_DIR), help=f"pretrain: output folder (default {BASE_DIR})"
    )
    parser.add_argument("--save-every", type=int, default=0, help="pretrain: also save every N steps")
    parser.add_argument("--base", default=str(BASE_DIR), help="experiment: the base model folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="experiment: seeds")
    parser.add_argument(
        "--runs",
        nargs="+",
        default=None,
        help="experiment: subset of base sd_solution sd_answer sd_none grpo sd_solution_D8 "
        "grpo_D8 (default: all)",
    )
    parser.add_argument("--out", default=None, help="experiment: write the result JSON here")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")


def run(args: argparse.Namespace) -> int:
    steps = args.steps if args.steps is not None else DEFAULT_STEPS[args.action]
    if args.action == "pretrain":
        from sd_bench.toy.pretrain import pretrain

        pretrain(args.output, steps=steps, seed=args.seed, threads=args.threads, save_every=args.save_every)
        return 0
    from sd_bench.toy.experiment import main

    args.steps = steps
    return main(args)
