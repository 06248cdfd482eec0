"""`sd-bench doctor`: which route lm-eval will take to sd-bench's tasks here, and why.

lm-eval 0.4.13 reads no task plugins: it indexes its own `lm_eval/tasks/` folder, then each
`--include_path`. The sd-bench wheel writes a copy of the tasks into `lm_eval/tasks/sd_bench/` of the site
folder sd-bench is installed in, which is the lm-eval that runs only when both share that folder (not for
lm-eval installed editable from a clone, or from another site folder on PYTHONPATH), and which goes stale
after editing `tasks/` in an editable install. The documented route, `--include_path "$(sd-bench
tasks-path)"`, works in every case; this says whether the bare route works too.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def diagnose() -> list[tuple[str, str]]:
    """(topic, finding) lines, in the order a person reads them."""
    from sd_bench import lm_eval_tasks as t

    out: list[tuple[str, str]] = []
    src = Path(t.tasks_path())
    repo = Path(t.__file__).resolve().parent.parent / "tasks"
    how = "source checkout" if src == repo.resolve() or src == repo else "installed with the sd-bench wheel"
    out.append(("sd-bench tasks", f"{src} ({how})"))
    try:
        import lm_eval
    except ImportError as exc:
        out.append(("lm-eval", f"not importable ({exc}); pip install 'lm-eval>=0.4.13,<0.5'"))
        return out
    import importlib.metadata as md

    try:
        version = md.version("lm-eval")
    except md.PackageNotFoundError:
        version = "unknown version"
    out.append(
        ("lm-eval", f"{version} at {Path(lm_eval.__file__).resolve().parent} (python {sys.executable})")
    )
    cli = shutil.which("lm_eval")
    if cli is None:
        out.append(("lm_eval command", f"not on PATH: run `{sys.executable} -m lm_eval`"))
    else:
        first = Path(cli).read_text(errors="replace").splitlines()[:1]
        interp = first[0].removeprefix("#!").strip() if first and first[0].startswith("#!") else "?"
        same = Path(interp).resolve() == Path(sys.executable).resolve() if interp != "?" else False
        note = "" if same else f": runs {interp}, not this python, so it may see another lm-eval"
        out.append(("lm_eval command", f"{cli}{note}"))
    copy = t.installed_copy()
    state, differ = t.copy_state(src, copy)
    if state == "current":
        out.append(("lm-eval's own copy", f"{copy}: current (every task file equals {src})"))
        out.append(("bare route", "`lm_eval --tasks sd_ood_math` finds the tasks (no --include_path needed)"))
    elif state == "stale":
        shown = ", ".join(differ[:4]) + (f" and {len(differ) - 4} more" if len(differ) > 4 else "")
        count = "1 file differs" if len(differ) == 1 else f"{len(differ)} files differ"
        out.append(("lm-eval's own copy", f"{copy}: stale ({count}: {shown})"))
        out.append(
            ("bare route", "would run the stale copy: pass --include_path (or reinstall: pip install -e .)")
        )
    else:
        out.append(("lm-eval's own copy", f"{copy}: missing (lm-eval lives outside sd-bench's site folder)"))
        out.append(
            ("bare route", "`lm_eval --tasks sd_ood_math` finds no sd-bench task: pass --include_path")
        )
    inc = t.include_path()
    n = len(list(inc.rglob("*.yaml")))
    adds = "nothing (lm-eval's copy is current)" if n == 0 else f"{n} task/group file{'s' * (n != 1)}"
    effect = {
        "current": "no task is registered twice",
        "stale": "lm-eval says which stale tasks of its copy these override (expected)",
        "missing": "nothing to override",
    }[state]
    out.append(
        ("documented route", f'--include_path "$(sd-bench tasks-path)" = {inc}: adds {adds}; {effect}')
    )
    return out


def add_arguments(parser) -> None:
    del parser  # no options


def run(args) -> int:
    del args
    rows = diagnose()
    width = max(len(topic) for topic, _ in rows)
    for topic, finding in rows:
        print(f"{topic:<{width}}  {finding}")
    return 0
