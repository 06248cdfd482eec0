"""Run a grading function in bounded time, in any thread.

Why: every model output must be graded without stalling an evaluation (a sympy simplification or a
math-verify parse of hostile LaTeX can run for minutes). A timer signal bounds it cheaply, but Python
delivers signals only to the main thread; lm-eval and trainers may call the graders from other threads.
So `call_bounded` uses a real-time interval timer (`signal.setitimer`) in the main thread and, in any other
thread, sends the call to one helper process that is killed and restarted when a call overruns.

The timeout is raised as `BudgetExceeded`, a BaseException: the paper's code style (`except:` around every
parse) and library code (`except Exception`) would otherwise swallow it and carry on past the budget; the
timer also re-fires every REFIRE_S until the call returns, so even a bare `except:` cannot outlast it.
Functions are named "module:function" so that the helper process can import them.

Light on purpose: no torch import.
"""

from __future__ import annotations

import importlib
import multiprocessing
import signal
import threading

REFIRE_S = 0.05
STARTUP_TIMEOUT_S = 120.0
KILL_GRACE_S = 1.0  # the helper bounds each call itself; the parent kills it only when that failed


class BudgetExceeded(BaseException):  # a signal, not an error: BaseException on purpose
    """The time budget of a `call_bounded` call ran out."""


def resolve(target: str):
    """The function named by "package.module:function"."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _raise_budget(signum, frame):
    raise BudgetExceeded


def _call_with_timer(fn, args: tuple, timeout_s: float, default):
    if signal.getitimer(signal.ITIMER_REAL)[0] > 0:  # nested inside another bounded call: its budget holds
        return fn(*args)
    old = signal.signal(signal.SIGALRM, _raise_budget)
    try:
        signal.setitimer(signal.ITIMER_REAL, timeout_s, REFIRE_S)
        try:
            return fn(*args)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except BudgetExceeded:
        return default
    finally:
        signal.signal(signal.SIGALRM, old)


def call_bounded(target: str, args: tuple, timeout_s: float, default):
    """`resolve(target)(*args)`, or `default` when it takes longer than `timeout_s` seconds (or fails with
    an exception: a grader that fails on malformed input means "not shown correct")."""
    try:
        if threading.current_thread() is threading.main_thread():
            return _call_with_timer(resolve(target), args, timeout_s, default)
        return _WORKER.call(target, args, timeout_s, default)
    except Exception:  # noqa: BLE001  any failure on malformed input means the default verdict
        return default


class _Worker:
    """One helper process serving calls from non-main threads, killed and restarted on overrun."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc = None
        self._conn = None

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")  # fork is unsafe in a threaded process
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_worker_loop, args=(child,), daemon=True)
        self._proc.start()
        self._conn = parent
        if not (parent.poll(STARTUP_TIMEOUT_S) and parent.recv() == "ready"):
            self._stop()
            raise RuntimeError("the grading helper process did not start")

    def _stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join()
        self._proc = self._conn = None

    def call(self, target: str, args: tuple, timeout_s: float, default):
        with self._lock:
            if self._proc is None or not self._proc.is_alive():
                self._start()
            self._conn.send((target, args, timeout_s, default))
            if self._conn.poll(timeout_s + KILL_GRACE_S):
                return self._conn.recv()
            self._stop()
            return default


WARM_UPS = ("sd_bench.answer:warm_up", "sd_bench.paper_answer:warm_up")  # imports the graders need


def _worker_loop(conn) -> None:
    for target in WARM_UPS:  # before "ready", so that no call's budget is charged for imports
        resolve(target)()
    conn.send("ready")
    while True:
        try:
            target, args, timeout_s, default = conn.recv()
        except EOFError:
            return
        conn.send(call_bounded(target, args, timeout_s, default))  # the helper's main thread: timer path


_WORKER = _Worker()
