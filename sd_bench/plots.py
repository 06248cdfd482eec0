"""Figures 3-8 as PNG + SVG (matplotlib, Agg): training curves and per-marker epistemic deltas.

Inputs are the files runs already write, so a figure is always rebuilt from data:
- the trainer's `metrics.jsonl` (one JSON object per step with `step`, `score`, `response_tokens`,
  `epistemic_count`, ...): one line per condition per panel;
- evaluation result files (sd_bench/tables.py schema) at several steps: the OOD-accuracy panel;
- per-marker counts (sd_bench.markers.marker_counts averaged over responses) of a run and its base: the
  paper's per-word delta bar chart (e.g. "wait" on AIME24: SDPO -60.8, GRPO +28.5).
matplotlib is imported inside the functions: `sd_bench.plots` itself stays cheap to import.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

CURVE_METRICS = ("score", "response_tokens", "epistemic_count")
LABELS = {
    "score": "training score (mean reward)",
    "response_tokens": "response length (tokens)",
    "epistemic_count": "E(y) per response",
    "acc": "OOD avg@k",
}


def read_metrics(path: Path | str) -> list[dict]:
    """metrics.jsonl -> list of dicts (blank lines skipped; a bad line raises naming file and line)."""
    from sd_bench import jsonl

    rows = []
    for i, row in jsonl.records(path, hint="a trainer's metrics.jsonl"):
        if "step" not in row:
            raise ValueError(f"{path}:{i}: each line needs a 'step' field")
        rows.append(row)
    return rows


def series(rows: Iterable[dict], metric: str) -> tuple[list[float], list[float]]:
    """(steps, values) of `metric`, skipping steps where it is absent, sorted by step."""
    pts = sorted((r["step"], r[metric]) for r in rows if isinstance(r.get(metric), (int, float)))
    return [p[0] for p in pts], [p[1] for p in pts]


def eval_curves(
    results: Iterable[dict], task: str, metric: str = "acc"
) -> dict[str, list[tuple[int, float]]]:
    """condition -> [(step, value)] from evaluation result files of `task` that carry a step."""
    out: dict[str, list[tuple[int, float]]] = {}
    for r in results:
        if r.get("task") == task and r.get("step") is not None and metric in r.get("metrics", {}):
            out.setdefault(r["condition"], []).append((r["step"], r["metrics"][metric]))
    return {c: sorted(v) for c, v in out.items()}


def marker_deltas(base: Mapping[str, float], run: Mapping[str, float]) -> dict[str, float]:
    """Per-marker change of the mean count per response: run - base (markers in base order)."""
    return {m: float(run.get(m, 0.0)) - float(base.get(m, 0.0)) for m in base}


def _save(fig, out_stem: Path | str) -> list[Path]:
    """Save `out_stem`.png and .svg, each through a temporary file + os.replace, then close the figure
    (also when saving fails: pyplot keeps every open figure)."""
    out_stem = Path(out_stem)
    paths = []
    try:
        out_stem.parent.mkdir(parents=True, exist_ok=True)
        for ext in ("png", "svg"):
            final = out_stem.with_suffix(f".{ext}")
            tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
            fig.savefig(tmp, format=ext, dpi=150 if ext == "png" else None, bbox_inches="tight")
            os.replace(tmp, final)
            paths.append(final)
    finally:
        _pyplot().close(fig)
    return paths


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(
    runs: Mapping[str, Path | str | Sequence[dict]],
    out_stem: Path | str,
    *,
    metrics: Sequence[str] = CURVE_METRICS,
    eval_points: Mapping[str, Sequence[tuple[int, float]]] | None = None,
    eval_label: str = "OOD avg@k",
    title: str | None = None,
) -> list[Path]:
    """One panel per metric (plus an OOD-accuracy panel when eval_points is given); one line per condition."""
    plt = _pyplot()
    data = {
        label: read_metrics(src) if isinstance(src, (str, Path)) else list(src) for label, src in runs.items()
    }
    panels = list(metrics) + (["__eval__"] if eval_points else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], panels):
        if metric == "__eval__":
            for label, pts in eval_points.items():
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
            ax.set_ylabel(eval_label)
        else:
            for label, rows in data.items():
                xs, ys = series(rows, metric)
                if xs:
                    ax.plot(xs, ys, label=label)
            ax.set_ylabel(LABELS.get(metric, metric))
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:  # below the figure (its bottom edge is the x-labels'); savefig's tight box takes it in
        fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 4), bbox_to_anchor=(0.5, 0.0))
    return _save(fig, out_stem)


def plot_marker_deltas(
    deltas: Mapping[str, Mapping[str, float]],
    out_stem: Path | str,
    *,
    title: str | None = None,
    legend_outside: bool = False,
) -> list[Path]:
    """Grouped bars: per-marker change in mean count per response (run - base), one colour per condition.

    `legend_outside`: the legend right of the axes (many conditions: `sd-bench report`), colours from
    tab20 so that up to 20 conditions stay distinct."""
    plt = _pyplot()
    conditions = list(deltas)
    markers = list(dict.fromkeys(m for d in deltas.values() for m in d))
    width = 0.8 / max(len(conditions), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(markers) + 1), 3.6))  # bars of all runs share a slot
    colors = plt.get_cmap("tab20").colors if len(conditions) > 10 else [None] * len(conditions)
    for j, cond in enumerate(conditions):
        xs = [i + (j - (len(conditions) - 1) / 2) * width for i in range(len(markers))]
        ax.bar(xs, [deltas[cond].get(m, 0.0) for m in markers], width, label=cond, color=colors[j % 20])
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(markers)), markers, rotation=30)
    ax.set_ylabel("change in count per response")
    if legend_outside:
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    else:
        ax.legend()
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, out_stem)


def render_figure(
    n: int,
    results: Sequence[dict],
    runs: Mapping[str, Path],
    out_stem: Path | str,
    *,
    task: str,
    base_of: Mapping[str, str],
    labels: Mapping[str, str],
    training_only: bool = False,
    title: str | None = None,
) -> list[Path]:
    """A paper figure from a reproduction's result files and runs (`sd-bench reproduce`'s render stage).

    Figure 4: the per-marker change of each condition's last evaluation of `task` against its step-0 base
    (`base_of[condition]`), from the result metrics `marker_<m>`. Other figures: the training curves of
    `runs` (condition -> metrics.jsonl, missing files skipped) with `task`'s accuracy at step 0 (the base)
    and at each evaluated step; `training_only` (Figure 8): score and E(y) curves only.
    """
    from sd_bench.markers import MARKERS

    if n == 4:
        latest: dict[str, dict] = {}
        for r in sorted(results, key=lambda r: -1 if r.get("step") is None else r["step"]):
            if r["task"] == task:
                latest[r["condition"]] = r

        def counts(c):
            return {m: latest[c]["metrics"].get(f"marker_{m}", 0.0) for m in MARKERS}

        deltas = {
            labels[c]: marker_deltas(counts(base_of[c]), counts(c))
            for c in runs
            if c in latest and base_of[c] in latest
        }
        if not deltas:
            raise RuntimeError(f"figure 4: no evaluations of {task} with a step-0 base among the results")
        return plot_marker_deltas(deltas, out_stem, title=title)
    curves = eval_curves(results, task)
    points = {
        labels[c]: [(0, v) for s, v in curves.get(base_of[c], []) if s == 0]
        + [q for q in curves.get(c, []) if q[0] != 0]
        for c in runs
    }
    files = {labels[c]: f for c, f in runs.items() if Path(f).is_file()}
    if training_only:
        return plot_training_curves(files, out_stem, metrics=("score", "epistemic_count"), title=title)
    return plot_training_curves(files, out_stem, eval_points=points, eval_label=f"{task} avg@k", title=title)
