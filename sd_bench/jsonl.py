"""JSON Lines: the one reader of every JSONL file sd-bench reads (problems, traces, per-sample logs, metrics).

Every failure is ONE error of the caller's type (DataError, MarkersError, RunError, ...) naming the file and
the line, so each command keeps its own error type and its one-line message. Light core: no torch.

Lines are split on "\\n" only: `str.splitlines` also splits on U+2028, form feeds etc., which JSON strings may
hold unescaped, and would then report the wrong line number.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path


def decode_utf8(path: Path | str, raw: bytes, error: type[Exception] = ValueError) -> str:
    """`raw` as UTF-8 text, or `error` naming the file, the line and the offending byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise error(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save it as UTF-8"
        ) from None


def read_text(path: Path | str, error: type[Exception] = ValueError) -> str:
    """A UTF-8 file's text; a folder, a missing file or other bytes are one `error` naming the file."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{path}: a folder, not a file")
    if not path.is_file():
        raise error(f"{path}: no such file")
    return decode_utf8(path, path.read_bytes(), error)


def records(
    path: Path | str, error: type[Exception] = ValueError, *, hint: str = "one JSON object per line"
) -> Iterator[tuple[int, dict]]:
    """(line number, object) per non-blank line; a line that is not a JSON object is one `error` naming the
    file and line, followed by `hint` (what the file should hold)."""
    for n, line in enumerate(read_text(path, error).split("\n"), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{path}:{n}: not valid JSON ({exc.msg} at column {exc.colno}); {hint}") from None
        if not isinstance(rec, dict):
            raise error(f"{path}:{n}: expected a JSON object, got {type(rec).__name__}; {hint}")
        yield n, rec
