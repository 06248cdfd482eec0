"""The `sd-bench` command.

Each subcommand lives in the module that owns its work and exposes `add_arguments(parser)` and
`run(args) -> int`. Modules are imported only when their subcommand runs, so `sd-bench check` and
`sd-bench markers` start without importing torch.

Errors (issue 8, item 5): every exception that leaves a subcommand becomes ONE message on stderr naming the
file, field or value and the fix, with exit status 2, and no traceback unless `--debug` (anywhere on the
command line) or `SD_BENCH_DEBUG=1`. The subcommand modules raise their own named error types
(ConfigError, DataError, ...) with complete messages; this is the one place that prints them.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import io
import os
import shutil
import sys
import traceback
from pathlib import Path, PurePath

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "tasks-path": ("sd_bench.lm_eval_tasks", "print the folder holding sd-bench's lm-eval task YAMLs"),
    "markers": ("sd_bench.markers_report", "per-marker epistemic counts from lm-eval sample logs"),
    "export": ("sd_bench.export", "per-sample details (parquet) and result JSON of an evaluation run"),
    "report": ("sd_bench.report", "a Markdown page with figures comparing evaluation runs"),
    "doctor": ("sd_bench.doctor", "say how lm-eval will find sd-bench's tasks, and why"),
    "train": ("sd_bench.train.cli", "train one paper condition (SDPO, GRPO, SFT)"),
    "reproduce": ("sd_bench.reproduce.cli", "re-train, evaluate and rebuild a paper table or figure"),
    "check": ("sd_bench.check", "fail when a result drifts from a baseline beyond tolerance"),
    "manifest": ("sd_bench.manifest", "validate checkpoints_manifest.yaml"),
    "toy": ("sd_bench.toy.cli", "the paper in miniature: pretrain the toy base model"),
}

DEBUG_FLAG = "--debug"
DEBUG_ENV = "SD_BENCH_DEBUG"
ERROR_EXIT = 2

# Error types whose message is already the whole story (file, field, fix). Matched by qualified class name
# along the MRO, so printing one never imports its module (`sd-bench check` must not import torch).
MESSAGE_ERRORS = frozenset(
    {
        "sd_bench.atomic.OutputPathError",
        "sd_bench.check.CheckError",
        "sd_bench.data.DataError",
        "sd_bench.lm_eval_guards.UnsupportedOption",
        "sd_bench.lm_eval_tasks.TaskSettingsError",
        "sd_bench.manifest.ManifestError",
        "sd_bench.markers_report.MarkersError",
        "sd_bench.reproduce.plan.PlanError",
        "sd_bench.runs.RunError",
        "sd_bench.schemas.SchemaError",
        "sd_bench.tables.ResultFileError",
        "sd_bench.train.checkpoint.CheckpointError",
        "sd_bench.train.config.ConfigError",
    }
)


ENOSPC_HINT = "no space left on device; free space there or write elsewhere (--output)"
OS_HINTS = {
    errno.EEXIST: "a file is in the way: pass a new folder, or remove it",
    errno.ENOTDIR: "part of the path is a file, not a folder: pass a folder path",
    errno.EISDIR: "a folder was given where a file is needed: pass the file",
    errno.ENOENT: "check the path",
    errno.EACCES: "no permission: pass a path you can write, or fix its permissions",
    errno.EROFS: "read-only file system: write elsewhere (--output)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sd-bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        DEBUG_FLAG, action="store_true", help=f"show tracebacks on errors (also {DEBUG_ENV}=1)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def debug_enabled(argv: list[str] = ()) -> bool:
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")


def _chain(exc: BaseException):
    """exc, then what caused it (`raise ... from`, or raised while handling): lm-eval and datasets wrap
    errors raised inside them, and the innermost sd-bench error is the one with the useful message."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _is_message_error(exc: BaseException) -> bool:
    return any(_qualname(c) in MESSAGE_ERRORS for c in type(exc).__mro__)


def _file_in_traceback(exc: BaseException) -> str | None:
    """The file a decode error came from, when the code that read it did not say: the innermost frame
    holding a path or an open text file (pathlib's read_text has `self`, `open()` loops have the file)."""
    tb, files = exc.__traceback__, []
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, PurePath):
                files.append(str(value))
            elif isinstance(value, io.TextIOWrapper) and isinstance(getattr(value, "name", None), str):
                files.append(value.name)
        tb = tb.tb_next
    return files[-1] if files else None


def error_message(exc: BaseException) -> str:
    """The one message printed for an exception that left a subcommand."""
    for e in _chain(exc):
        if _is_message_error(e):
            return str(e)
    for e in _chain(exc):
        if isinstance(e, UnicodeDecodeError):
            where = _file_in_traceback(e) or "an input file"
            return (
                f"{where}: not UTF-8 text (byte {e.object[e.start : e.start + 1]!r} at offset {e.start}); "
                "save it as UTF-8"
            )
        if isinstance(e, shutil.Error) and e.args and isinstance(e.args[0], list) and e.args[0]:
            _, dst, why = e.args[0][0]  # copytree collects (src, dst, why) per file; the first says enough
            if f"[Errno {errno.ENOSPC}]" in str(why):
                return f"{Path(dst).parent}: {ENOSPC_HINT}"
            return f"{dst}: {why} ({len(e.args[0])} file(s) not copied)"
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return f"{e.filename or 'the output folder'}: {ENOSPC_HINT}"
        if isinstance(e, OSError) and (e.filename is not None or e.strerror):
            where = e.filename if e.filename is not None else "a file"
            extra = f" -> {e.filename2}" if e.filename2 else ""
            hint = OS_HINTS.get(e.errno, "")
            return f"{where}{extra}: {e.strerror or e}" + (f"; {hint}" if hint else "")
        if isinstance(e, OSError) and str(e):  # OSError("message"): its author wrote the whole line
            return str(e)
        if type(e).__module__.startswith("yaml"):
            mark = getattr(e, "problem_mark", None)
            where = f"{mark.name}:{mark.line + 1}" if mark is not None else "YAML"
            return f"{where}: not valid YAML ({str(e).splitlines()[0]})"
    text = str(exc).splitlines()[0] if str(exc) else "no message"
    return f"{text} ({type(exc).__name__}; rerun with {DEBUG_FLAG} for the traceback)"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_enabled(argv)
    argv = [a for a in argv if a != DEBUG_FLAG]
    top = build_parser()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        top.parse_args(argv)  # prints help or the "invalid choice" error and exits
        return ERROR_EXIT
    name = argv[0]
    module_name, help_text = SUBCOMMANDS[name]
    try:
        module = importlib.import_module(module_name)
        parser = argparse.ArgumentParser(prog=f"sd-bench {name}", description=help_text)
        module.add_arguments(parser)
        args = parser.parse_intermixed_args(argv[1:])  # options may sit between positionals (key=value)
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"sd-bench {name}: interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise  # argparse's usage errors (exit 2) and explicit exits
    except Exception as exc:  # noqa: BLE001 - the one top-level handler: every error becomes one line
        if debug:
            traceback.print_exc()
        message = error_message(exc)
        prefix = f"sd-bench {name}: error: "
        print(message if message.startswith(f"sd-bench {name}") else prefix + message, file=sys.stderr)
        return ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
