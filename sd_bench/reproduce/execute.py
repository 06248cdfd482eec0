"""Run a plan: stages in order, each reused only when what made it is unchanged (issue 8, item 3).

Every finished stage leaves `DIR/.sd-bench/stages/<stage>.json` with its fingerprint: a hash of its settings
(kind, model, recipe, params, outputs), the seed, the fingerprints of the stages that wrote its inputs, the
sd-bench version and a hash of its code (`provenance.code_hash`: an uncommitted edit counts, a docs-only commit
does not). A rerun reuses a stage when its marker's fingerprint equals the one it would have now and its
outputs exist; otherwise it reruns it (its old outputs removed first) and says which settings changed, or,
with `no_rerun`, refuses before running anything. One writer per output folder: `DIR/.sd-bench/lock` holds
the writer's pid; a second process gets one line naming it (a lock whose pid is gone is taken over). Stage
folders are stable (`runs/<cond>`), so a crashed train stage resumes inside the trainer from its last
checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sd_bench.reproduce.plan import Plan, PlanError, Stage
from sd_bench.tables import write_json_atomic, write_text_atomic

STATE_DIR = ".sd-bench/stages"
LOCK = ".sd-bench/lock"


@dataclass
class StageContext:
    """What a stage function gets: where to write, the seed, the scale, and a progress callback."""

    out_dir: Path
    stage: Stage
    seed: int
    scale: Any  # scale.Scale
    report: Callable[..., None] = lambda done, total=None, note="": None

    def path(self, rel: str) -> Path:
        return self.out_dir / rel

    def write_json(self, rel: str, data: Any) -> Path:
        return write_json_atomic(self.path(rel), data)

    def write_text(self, rel: str, text: str) -> Path:
        return write_text_atomic(self.path(rel), text)


def settings_of(stage: Stage, seed: int, input_fps: dict[str, str], code: dict) -> dict[str, Any]:
    """What made a stage, as plain JSON values (so a marker read back compares equal)."""
    settings = {
        "kind": stage.kind,
        "model": stage.model_shown,
        "recipe": stage.recipe,
        "params": stage.params,
        "outputs": list(stage.outputs),
        "seed": seed,
        "inputs": input_fps,
        **code,
    }
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """The settings that differ, as `key: old -> new` (nested dicts flattened)."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {_short(a)} -> {_short(b)}")
    return out


def _short(value, width: int = 60) -> str:
    return text if len(text := repr(value)) <= width else text[: width - 3] + "..."


def _marker(out_dir: Path, stage: Stage) -> Path:
    return out_dir / STATE_DIR / (re.sub(r"[^A-Za-z0-9_.@-]+", "__", stage.name) + ".json")


def check_output(out_dir: Path) -> None:
    """Refuse an --output that is a file, or a non-empty folder sd-bench did not write (no .sd-bench/)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise PlanError(f"--output {out_dir}: exists and is not a folder; pass a new or empty folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / ".sd-bench").is_dir():
        raise PlanError(
            f"--output {out_dir}: folder is not empty and holds no .sd-bench/ (not a reproduction output); "
            "pass a new or empty folder"
        )


def acquire(out_dir: Path) -> Path:
    """Take DIR/.sd-bench/lock (O_EXCL) or raise one line naming the writer that holds it."""
    lock = out_dir / LOCK
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _alive(pid):
                raise PlanError(
                    f"--output {out_dir}: another sd-bench reproduce (pid {pid}) is writing it; wait for it "
                    "or pass another --output"
                ) from None
            lock.unlink(missing_ok=True)  # its writer is gone: take the lock over
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return lock
    raise PlanError(f"--output {out_dir}: could not take {lock}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_outputs(out_dir: Path, stage: Stage) -> None:
    """A stale stage's outputs (and a train stage's whole run folder: its checkpoints are stale too)."""
    paths = [out_dir / o for o in stage.outputs]
    if stage.kind == "train":
        paths.append(out_dir / "runs" / stage.params["condition"])
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def execute(
    plan: Plan, out_dir: Path | str, *, seed: int = 0, progress=None, no_rerun: bool = False, log=print
) -> dict:
    """Run the plan's stages in order; returns {"ran": [...], "skipped": [...], "reran": {stage: why}}."""
    from sd_bench.reproduce.progress import Progress

    out_dir = Path(out_dir)
    check_output(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = acquire(out_dir)
    try:
        return _run(
            plan, out_dir, seed, progress or Progress([s.est_seconds for s in plan.stages]), no_rerun, log
        )
    finally:
        lock.unlink(missing_ok=True)


def _run(plan: Plan, out_dir: Path, seed: int, progress, no_rerun: bool, log) -> dict:
    from sd_bench import __version__
    from sd_bench.provenance import code_hash

    code = {"sd_bench": __version__, "code": code_hash()}
    produced: dict[str, str] = {}  # output path -> fingerprint of the stage that writes it
    todo = []
    for stage in plan.stages:
        inputs = {i: produced.get(i, i) for i in stage.inputs}
        settings = settings_of(stage, seed, inputs, code)
        fp = fingerprint(settings)
        for o in stage.outputs:
            produced[o] = fp
        marker = _marker(out_dir, stage)
        old = json.loads(marker.read_text()) if marker.is_file() else None
        why = ""  # None: unchanged, reused; "": never finished; else what changed
        if old and old.get("fingerprint") == fp and all((out_dir / o).exists() for o in stage.outputs):
            why = None
        elif old:
            why = "; ".join(_diff(old.get("settings", {}), settings)[:4]) or "outputs missing"
        todo.append((stage, fp, settings, why))
    stale = {s.name: why for s, _, _, why in todo if why}
    if stale and no_rerun:
        first = next(iter(stale))
        raise PlanError(
            f"--no-rerun: {len(stale)} finished stage(s) are stale, e.g. '{first}' ({stale[first]}); "
            "rerun without --no-rerun to redo them, or pass another --output"
        )
    write_json_atomic(out_dir / ".sd-bench" / f"plan-{plan.target}.json", plan.to_dict())
    ran, skipped = [], []
    for i, (stage, fp, settings, why) in enumerate(todo):
        if why is None:
            progress.skip_stage(i, stage.name, "unchanged")
            skipped.append(stage.name)
            continue
        if why:
            log(f"rerun {stage.name}: {why}")
            _remove_outputs(out_dir, stage)
            _marker(out_dir, stage).unlink(missing_ok=True)
        progress.start_stage(i, stage.name)
        ctx = StageContext(out_dir, stage, seed, plan.scale, report=progress.update)
        t0 = time.monotonic()
        try:
            stage.run(ctx)
        except Exception as exc:
            progress.end_stage(ok=False)
            raise PlanError(
                f"stage '{stage.name}' failed: {type(exc).__name__}: {exc}. Finished stages are kept; "
                "rerun the same command to resume from this stage."
            ) from exc
        absent = [o for o in stage.outputs if not (out_dir / o).exists()]
        if absent:
            progress.end_stage(ok=False)
            raise PlanError(f"stage '{stage.name}' finished without writing {', '.join(absent)}")
        wall = round(time.monotonic() - t0, 3)
        done = {"stage": stage.name, "fingerprint": fp, "settings": settings, "wall_time_s": wall}
        write_json_atomic(_marker(out_dir, stage), done)
        progress.end_stage(ok=True)
        ran.append(stage.name)
    return {"ran": ran, "skipped": skipped, "reran": stale}
