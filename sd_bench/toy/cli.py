"""`sd-bench toy pretrain`: rebuild the miniature world's base model.

    sd-bench toy pretrain [--steps 2600] [--output sd_bench/toy/base] [--seed 0] [--threads N]

Everything else the toy world does runs through the one pipeline: `sd-bench reproduce --scale smoke`
(toy_manifest.yaml's conditions, the trainer, the lm-eval `sd_toy` tasks). One positional action with flat
options (not argparse sub-parsers): `sd-bench` parses with `parse_intermixed_args`, which rejects nested
sub-parsers.
"""

from __future__ import annotations

import argparse

from sd_bench.toy import BASE_DIR

DEFAULT_STEPS = 2600  # the committed base's (base/provenance.json)


def at_least(low: int):
    """An argparse type: an integer >= `low` (argparse prints `argument --steps: must be >= 1, got 0`)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["pretrain"], help="pretrain: rebuild the toy base")
    parser.add_argument(
        "--steps", type=at_least(1), default=DEFAULT_STEPS, help=f"optimizer steps ({DEFAULT_STEPS})"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the traces")
    parser.add_argument("--output", default=str(BASE_DIR), help=f"output folder (default {BASE_DIR})")
    parser.add_argument(
        "--save-every", type=at_least(0), default=0, help="also save every N steps (0: never)"
    )
    parser.add_argument(
        "--threads", type=at_least(1), default=None, help="torch threads (default: torch's choice)"
    )


def run(args: argparse.Namespace) -> int:
    from sd_bench.toy.pretrain import pretrain

    pretrain(args.output, steps=args.steps, seed=args.seed, threads=args.threads, save_every=args.save_every)
    return 0
