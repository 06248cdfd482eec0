"""Progress display for `sd-bench reproduce`: stage i/N, its name, its own progress, elapsed and time left.

On a terminal one status line is redrawn in place; elsewhere (CI logs, files) a plain line is printed at
each stage start/end and at most every `min_interval_s` seconds in between, so logs stay short.

Time left = the current stage's remaining time (extrapolated from its own progress when it reports any)
plus the estimates of the stages still to run, scaled by how the finished stages compared with their own
estimates (so a machine twice as slow as assumed shows twice the time; the factor is clamped to [1/4, 4]).
With no estimate, it shows "?".
"""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO


def format_seconds(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "?"
    s = max(0, round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


class Progress:
    """Callbacks the executor calls: start_stage, update (the stage's own progress), end_stage, skip_stage."""

    def __init__(
        self,
        estimates_s: list[float | None],
        stream: TextIO | None = None,
        tty: bool | None = None,
        min_interval_s: float = 5.0,
        clock=time.monotonic,
    ):
        self.estimates = list(estimates_s)
        self.n = len(self.estimates)
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.min_interval_s = min_interval_s
        self.clock = clock
        self.t0 = clock()
        self.i, self.name, self.frac, self.note = -1, "", 0.0, ""
        self.stage_t0 = self.t0
        self._last_print = -1e9
        self._spent_done = 0.0  # actual seconds of stages run (not skipped)
        self._est_done = 0.0  # their estimates

    def _speed(self) -> float:
        """actual / estimated time over the stages run so far (1.0 before any)."""
        if self._est_done <= 0 or self._spent_done <= 0:
            return 1.0
        # clamped: one unusually quick or slow stage should not swing the whole forecast by more than 4x
        return min(max(self._spent_done / self._est_done, 0.25), 4.0)

    def time_left(self) -> float | None:
        if self.i < 0:
            rest = self.estimates
            cur_left = 0.0
        else:
            rest = self.estimates[self.i + 1 :]
            elapsed = self.clock() - self.stage_t0
            est = self.estimates[self.i]
            if 0 < self.frac < 1:
                cur_left = elapsed * (1 - self.frac) / self.frac
            elif est is not None:
                cur_left = max(est * self._speed() - elapsed, 0.0)
            else:
                return None
        if any(e is None for e in rest):
            return None
        return cur_left + sum(rest) * self._speed()

    def line(self) -> str:
        pct = f" {self.frac * 100:5.1f}%" if self.frac > 0 else ""
        note = f" {self.note}" if self.note else ""
        return (
            f"[{self.i + 1}/{self.n}] {self.name}{pct}{note} | elapsed "
            f"{format_seconds(self.clock() - self.t0)} | left ~{format_seconds(self.time_left())}"
        )

    def _emit(self, text: str, force: bool = False, final: bool = False) -> None:
        """`final`: a stage's last line, kept on a terminal (the next line starts below it)."""
        now = self.clock()
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        elif force or now - self._last_print >= self.min_interval_s:
            self.stream.write(text + "\n")
        else:
            return
        self._last_print = now
        self.stream.flush()

    def start_stage(self, i: int, name: str) -> None:
        self.i, self.name, self.frac, self.note = i, name, 0.0, ""
        self.stage_t0 = self.clock()
        self._emit(self.line() + " | start", force=True)

    def update(self, done: float, total: float | None = None, note: str = "") -> None:
        """The stage's own progress: `done` of `total` units (or a fraction in [0, 1] when total is None)."""
        frac = done / total if total else done
        self.frac = min(max(float(frac), 0.0), 1.0)
        self.note = note
        self._emit(self.line())

    def skip_stage(self, i: int, name: str, reason: str) -> None:
        self.i, self.name, self.frac, self.note = i, name, 0.0, ""
        self._emit(f"[{i + 1}/{self.n}] {name} | skipped ({reason})", force=True, final=True)

    def end_stage(self, ok: bool = True) -> None:
        spent = self.clock() - self.stage_t0
        est = self.estimates[self.i] if 0 <= self.i < self.n else None
        if ok and est:
            self._spent_done += spent
            self._est_done += est
        self.frac = 1.0 if ok else self.frac
        status = f"done in {format_seconds(spent)}" if ok else f"FAILED after {format_seconds(spent)}"
        self._emit(
            f"[{self.i + 1}/{self.n}] {self.name} | {status} | left ~{format_seconds(self.time_left())}",
            force=True,
            final=True,
        )
