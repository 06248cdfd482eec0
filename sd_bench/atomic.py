"""Atomic writes: readers (and resumed runs) never see half a file or folder; user files are never removed.

Everything sd-bench writes that another step reads back goes through here: a temporary sibling in the same
folder, then one `os.replace`. A crash leaves either the old content or the new, never a mix.

A folder written by `atomic_dir` carries a marker file (`OUTPUT_MARKER`). Only such a folder (or an empty
one) is ever replaced: an existing folder without the marker holds someone else's files (`--out .` would be
the working directory), so it is refused with one line before anything is written (issue 8, item 1).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Written into every folder `atomic_dir` creates: "sd-bench wrote this folder and may replace it".
OUTPUT_MARKER = ".sd-bench-output"


class OutputPathError(ValueError):
    """An output path sd-bench must not write: a regular file, or a folder holding files it did not write."""


def check_output_dir(final: Path | str, *, owned: bool = False) -> Path:
    """Refuse (OutputPathError) a target that `atomic_dir` must not replace; return it resolved.

    Call it before long work (training) so a bad `--output` fails in the first second, not at the save.
    Accepted: a missing path, an empty folder, a folder holding `OUTPUT_MARKER`, or any folder when
    `owned` (the caller's own folder, e.g. a cache or a stage folder inside a locked reproduction output).
    """
    # `.` and symlinked folders: the real folder (its siblings hold the temporaries)
    final = Path(final).resolve()
    in_the_way = next((p for p in final.parents if p.exists() and not p.is_dir()), None)
    if in_the_way is not None:
        raise OutputPathError(
            f"{final}: {in_the_way} is a file, not a folder; pass a folder path as the output"
        )
    if final.exists() and not final.is_dir():
        raise OutputPathError(
            f"{final}: exists and is not a folder; pass a new or empty folder as the output"
        )
    if final.is_dir() and not owned and not (final / OUTPUT_MARKER).is_file() and any(final.iterdir()):
        raise OutputPathError(
            f"{final}: folder is not empty and was not written by sd-bench (no {OUTPUT_MARKER}), so it "
            "is not replaced; pass a new or empty folder as the output",
        )
    return final


def write_text(path: Path | str, text: str) -> Path:
    """Write `text` to `path` atomically, with the usual permissions (mkstemp's 0600 is widened by umask).

    An OSError (ENOSPC, EACCES, ...) names `path`, so the one-line error says which write failed.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    except OSError as exc:
        raise _named(exc, path) from exc
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _named(exc, path) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _named(exc: OSError, path: Path) -> OSError:
    """The same OSError with `path` as its filename where it had none (a failed write() names no file)."""
    if exc.filename is not None:
        return exc
    return type(exc)(exc.errno, exc.strerror or str(exc), str(path))


def write_json(path: Path | str, data: Any, *, indent: int = 2) -> Path:
    """JSON (no NaN: it is not JSON), atomically."""
    return write_text(path, json.dumps(data, indent=indent, allow_nan=False) + "\n")


@contextlib.contextmanager
def atomic_dir(final: Path | str, *, owned: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `final` in one rename (no half-written folder).

    `final` must pass `check_output_dir` (checked before the work and again before the swap); the old
    folder is moved aside and removed only after the new one is in place.
    """
    final = check_output_dir(final, owned=owned)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    try:
        yield tmp
        (tmp / OUTPUT_MARKER).write_text(
            "written by sd-bench (sd_bench/atomic.py atomic_dir), which may replace it\n"
        )
        check_output_dir(final, owned=owned)
        if final.exists():
            os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:
            if old.exists() and not final.exists():
                os.replace(old, final)  # the swap failed: put the previous folder back
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
