"""The `sd-bench` command.

Each subcommand lives in the module that owns its work and exposes `add_arguments(parser)` and
`run(args) -> int`. Modules are imported only when their subcommand runs, so `sd-bench check` and
`sd-bench markers` start without importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "tasks-path": ("sd_bench.lm_eval_tasks", "print the folder holding sd-bench's lm-eval task YAMLs"),
    "markers": ("sd_bench.markers_report", "per-marker epistemic counts from lm-eval sample logs"),
    "train": ("sd_bench.train.cli", "train one paper condition (SDPO, GRPO, SFT)"),
    "reproduce": ("sd_bench.reproduce.cli", "re-train, evaluate and rebuild a paper table or figure"),
    "check": ("sd_bench.check", "fail when a result drifts from a baseline beyond tolerance"),
    "manifest": ("sd_bench.manifest", "validate checkpoints_manifest.yaml"),
    "toy": ("sd_bench.toy.cli", "the paper in miniature: pretrain the toy base model"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sd-bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = build_parser()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        top.parse_args(argv)  # prints help or the "invalid choice" error and exits
        return 2
    name = argv[0]
    module_name, help_text = SUBCOMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"sd-bench {name}", description=help_text)
    module.add_arguments(parser)
    args = parser.parse_intermixed_args(argv[1:])  # options may sit between positionals (key=value overrides)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
