"""Atomic writes: readers (and resumed runs) never see half a file or half a folder.

Everything sd-bench writes that another step reads back goes through here: a temporary sibling in the same
folder, then one `os.replace`. A crash leaves either the old content or the new, never a mix.
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


def write_text(path: Path | str, text: str) -> Path:
    """Write `text` to `path` atomically, with the usual permissions (mkstemp's 0600 is widened by umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path | str, data: Any, *, indent: int = 2) -> Path:
    """JSON (no NaN: it is not JSON), atomically."""
    return write_text(path, json.dumps(data, indent=indent, allow_nan=False) + "\n")


@contextlib.contextmanager
def atomic_dir(final: Path | str) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `final` in one rename (no half-written folder)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
