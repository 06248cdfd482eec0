"""`sd-bench report RUN [RUN ...] [--baseline RUN|MODEL] --output DIR`: compare models at a glance.

Why: the paper's argument is a picture: accuracy falls as epistemic verbalization E(y) and response
length fall (Tables 1-3, Figures 4-8). For one's own checkpoints this draws that picture from evaluation
runs, with no lm-eval JSON read by hand:

    DIR/report.md                         one page: a table per task and the figures below
    DIR/<task>_accuracy.{png,svg}         accuracy against E(y) per response and against response length,
                                          one point per model, error bars = one standard error over problems
    DIR/<task>_markers.{png,svg}          per-marker change in mean count per response against the baseline
                                          (sd_bench.plots.plot_marker_deltas, the paper's per-word figure)
    DIR/<task>_pass_at_k.{png,svg}        unbiased pass@k over k (Chen et al. 2021), where per-sample logs exist
    DIR/report.json                       every number on the page

RUN: an lm-eval --output_path (with --log_samples) or a reproduce folder, read by sd_bench.runs (one model
per lm-eval results file or reproduce condition). With per-sample logs every statistic is recomputed from
the responses (grades under each rule, tokens, markers); without them (the committed smoke results) the
aggregates are used and the accuracy error bar is the bound sqrt(p (1 - p) / n) (the largest standard error
a mean of n per-problem rates in [0, 1] with mean p can have), marked as a bound.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sd_bench import atomic, runs
from sd_bench.markers import MARKERS
from sd_bench.sampling_metrics import pass_at_k

# Tasks that hold no evaluation (the trainer's own scores, sd_bench.tables.train_score_result).
TRAINING_TASKS = ("train", "train_first")
RULE_LABELS = {"acc": "sd-bench rule (math-verify)", "acc_paper": "paper's rule"}


# ---------------------------------------------------------------- statistics


def mean_se(values: list[float]) -> tuple[float, float | None]:
    """Mean and its standard error (sample standard deviation / sqrt(N)); se None for fewer than 2 values."""
    n = len(values)
    if n == 0:
        return math.nan, None
    mean = sum(values) / n
    if n < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


@dataclass
class Point:
    """One model on one task: what the figures and tables show."""

    model: str
    task: str
    n_problems: int | None
    k: int | None
    acc: dict[str, tuple[float, float | None]] = field(default_factory=dict)  # rule -> (mean, se)
    se_is_bound: bool = False
    epistemic: tuple[float, float | None] = (math.nan, None)
    length: tuple[float, float | None] = (math.nan, None)
    length_unit: str = "tokens"
    lengths: dict[str, tuple[float, float | None]] = field(default_factory=dict)  # unit -> (mean, se)
    markers: dict[str, float] = field(default_factory=dict)
    pass_curve: dict[int, float] = field(default_factory=dict)  # k -> pass@k
    answer_rate: float | None = None
    maj_at_k: float | None = None  # the run's own maj@k (sd-bench's rule), where it logged one
    from_samples: bool = False


def _ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    ks = [1]
    while ks[-1] * 2 <= n:
        ks.append(ks[-1] * 2)
    return ks + ([n] if ks[-1] != n else [])


def point_from_samples(model: runs.Model, task_run: runs.TaskRun, rules: dict[str, Any]) -> Point | None:
    """Every statistic recomputed from the responses (None when the run kept no per-sample log)."""
    docs = task_run.docs()
    docs = [d for d in docs if d.responses]
    if not docs:
        return None
    counter = runs.token_counter_for(docs[0], task_run)
    per_rule: dict[str, list[float]] = {r: [] for r in rules}
    counts: dict[str, list[int]] = {r: [] for r in rules}
    e_means, answered = [], []
    len_means: dict[str, list[float]] = {"chars": [], **({"tokens": []} if counter is not None else {})}
    marker_sums = dict.fromkeys(MARKERS, 0.0)
    n_resp = 0
    ns = []
    for d in docs:
        rows = runs.response_rows(d, rules, counter)
        ns.append(len(rows))
        for rule in rules:
            key = "correct" if rule == "acc" else f"correct_{rule}"
            c = sum(r[key] for r in rows)
            counts[rule].append(c)
            per_rule[rule].append(c / len(rows))
        e_means.append(sum(r["epistemic_count"] for r in rows) / len(rows))
        for unit, values in len_means.items():
            values.append(sum(r[f"response_{unit}"] for r in rows) / len(rows))
        answered.append(sum(r["extracted_answer"] is not None for r in rows) / len(rows))
        for r in rows:
            for m in MARKERS:
                marker_sums[m] += r[f"marker_{m}"]
        n_resp += len(rows)
    n_min = min(ns)
    curve = {k: sum(pass_at_k(n, c, k) for n, c in zip(ns, counts["acc"])) / len(docs) for k in _ks(n_min)}
    return Point(
        model=model.label,
        task=task_run.task,
        n_problems=len(docs),
        k=n_min,
        acc={rule: mean_se(v) for rule, v in per_rule.items()},
        epistemic=mean_se(e_means),
        lengths={unit: mean_se(v) for unit, v in len_means.items()},
        markers={m: s / n_resp for m, s in marker_sums.items()},
        pass_curve=curve,
        answer_rate=sum(answered) / len(answered),
        maj_at_k=(
            sum(d.logged["maj_at_k"] for d in docs) / len(docs)
            if all("maj_at_k" in d.logged for d in docs)
            else task_run.result["metrics"].get("maj_at_k")
        ),
        from_samples=True,
    )


def point_from_result(model: runs.Model, task_run: runs.TaskRun) -> Point | None:
    """The aggregates of a result file (no per-sample log); None when it holds no accuracy."""
    res = task_run.result
    m = res["metrics"]
    if "acc" not in m:
        return None
    n = res.get("n_problems")
    acc: dict[str, tuple[float, float | None]] = {}
    bound = False
    for rule in [r for r in m if r == "acc" or (r.startswith("acc_") and not r.endswith("_stderr"))]:
        se = m.get(f"{rule}_stderr")
        if se is None and n:
            se, bound = math.sqrt(max(m[rule] * (1 - m[rule]), 0.0) / n), True
        acc[rule] = (m[rule], se)
    curve = {
        int(key.removeprefix("pass_at_")): v for key, v in m.items() if re.fullmatch(r"pass_at_\d+", key)
    }
    k = res.get("k")
    curve.setdefault(1, m["acc"])
    if k and "pass_at_k" in m:
        curve.setdefault(int(k), m["pass_at_k"])
    return Point(
        model=model.label,
        task=task_run.task,
        n_problems=n,
        k=k,
        acc=acc,
        se_is_bound=bound,
        epistemic=(m.get("epistemic_count", math.nan), None),
        lengths={u: (m[f"response_{u}"], None) for u in ("tokens", "chars") if f"response_{u}" in m},
        markers={mk: m.get(f"marker_{mk}", 0.0) for mk in MARKERS},
        pass_curve=dict(sorted(curve.items())),
        answer_rate=m.get("answer_rate"),
        maj_at_k=m.get("maj_at_k"),
    )


def collect_points(models: list[runs.Model]) -> dict[str, list[Point]]:
    """task -> one Point per model that has it (per-sample statistics where the run kept the logs)."""
    rules = runs.grading_rules()
    out: dict[str, list[Point]] = {}
    for model in models:
        for task, task_run in model.tasks.items():
            if task in TRAINING_TASKS:
                continue
            p = point_from_samples(model, task_run, rules) or point_from_result(model, task_run)
            if p is not None:
                out.setdefault(task, []).append(p)
    for pts in out.values():  # one length unit per task: tokens where every model has them
        unit = next((u for u in ("tokens", "chars") if all(u in p.lengths for p in pts)), None)
        for p in pts:
            own = unit or next(iter(p.lengths), None)
            p.length_unit = unit or "tokens or chars (mixed)"
            p.length = p.lengths.get(own, (math.nan, None)) if own else (math.nan, None)
    return dict(sorted(out.items()))


# ---------------------------------------------------------------- figures


def _styles(points: list[Point], baseline: str | None) -> dict[str, dict[str, Any]]:
    """model -> colour and marker; the baseline black, the others in the colours plot_marker_deltas gives
    them (tab10, tab20 above 10 models, in the same order), so a model has one colour on the whole page."""
    import matplotlib

    others = [p.model for p in points if p.model != baseline]
    colors = matplotlib.colormaps["tab10" if len(others) <= 10 else "tab20"].colors
    marks = "oDv^P*Xh<>p"  # the baseline's square is its own
    out = {
        m: {"color": colors[i % len(colors)], "marker": marks[i % len(marks)]} for i, m in enumerate(others)
    }
    if baseline is not None:
        out[baseline] = {"color": "black", "marker": "s"}
    return out


def plot_accuracy(points: list[Point], task: str, out_stem: Path, baseline: str | None = None) -> list[Path]:
    """Two panels: accuracy vs E(y) per response, accuracy vs response length; one point per model
    (filled: sd-bench's rule; hollow: any other rule present), error bars one standard error."""
    from sd_bench.plots import _pyplot, _save

    plt = _pyplot()
    rules = list(dict.fromkeys(r for p in points for r in p.acc))
    unit = points[0].length_unit
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.2), sharey=True)
    styles = _styles(points, baseline)
    panels = [("epistemic", "E(y): epistemic markers per response"), ("length", f"response length ({unit})")]
    for ax, (attr, xlabel) in zip(axes, panels):
        for p in points:
            x, xerr = getattr(p, attr)
            st = styles[p.model]
            # other rules first, hollow and larger, then sd-bench's filled on top: equal values show a ring
            for j, rule in reversed(list(enumerate(rules))):
                if rule not in p.acc:
                    continue
                y, yerr = p.acc[rule]
                ax.errorbar(
                    x,
                    100 * y,
                    yerr=None if yerr is None else 100 * yerr,
                    xerr=xerr if j == 0 else None,
                    fmt=st["marker"],
                    color=st["color"],
                    mfc=st["color"] if j == 0 else "white",
                    ms=7 if j == 0 else 11,
                    capsize=3,
                    label=(f"{p.model} (baseline)" if p.model == baseline else p.model) if j == 0 else None,
                )
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy, avg@k (%)")
    k = sorted({p.k for p in points if p.k})
    n = sorted({p.n_problems for p in points if p.n_problems})
    bound = ", an upper bound" if any(p.se_is_bound for p in points) else ""
    fig.suptitle(
        f"{task}: accuracy vs epistemic verbalization and length "
        f"(k = {'/'.join(map(str, k)) or '?'}, n = {'/'.join(map(str, n)) or '?'} problems; "
        f"bars: 1 s.e.{bound})",
        fontsize=10,
    )
    handles, labels = axes[0].get_legend_handles_labels()
    if len(rules) > 1:
        from matplotlib.lines import Line2D

        handles += [
            Line2D([], [], ls="", marker="o", color="gray", mfc="gray" if j == 0 else "white")
            for j in range(len(rules))
        ]
        labels += [RULE_LABELS.get(r, r) for r in rules]
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    return _save(fig, out_stem)


def plot_pass_curves(
    points: list[Point], task: str, out_stem: Path, baseline: str | None = None
) -> list[Path]:
    """pass@k over k (log2 axis), one line per model."""
    from sd_bench.plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    styles = _styles(points, baseline)
    for p in points:
        ks = sorted(p.pass_curve)
        st = styles[p.model]
        label = f"{p.model} (baseline)" if p.model == baseline else p.model
        ax.plot(ks, [100 * p.pass_curve[k] for k in ks], marker=st["marker"], color=st["color"], label=label)
    ks = sorted({k for p in points for k in p.pass_curve})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    top = max((100 * v for p in points for v in p.pass_curve.values()), default=0.0)
    ax.set_ylim(-2.0, min(102.0, max(5.0, 1.1 * top)))  # 0 and 100 % markers stay inside the frame
    ax.set_xlabel("k (samples per problem)")
    ax.set_ylabel("pass@k (%)")
    ax.set_title(f"{task}: unbiased pass@k", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    return _save(fig, out_stem)


# ---------------------------------------------------------------- the page


def _fmt(mean: float, se: float | None, scale: float = 1.0, digits: int = 1, bound: bool = False) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    s = f"{scale * mean:.{digits}f}"
    if se is not None:
        s += f" ± {'≤' if bound else ''}{scale * se:.{digits}f}"
    return s


def task_table(points: list[Point]) -> str:
    from tabulate import tabulate

    rules = list(dict.fromkeys(r for p in points for r in p.acc))
    unit = points[0].length_unit
    headers = [
        "model",
        *(f"{r} (%)" for r in rules),
        "pass@k (%)",
        "E(y)",
        f"length ({unit})",
        "maj@k (%)",
        "answered (%)",
    ]
    rows = []
    for p in points:
        kmax = max(p.pass_curve) if p.pass_curve else None
        rows.append(
            [
                p.model,
                *(_fmt(*p.acc[r], scale=100, bound=p.se_is_bound) if r in p.acc else "-" for r in rules),
                f"{100 * p.pass_curve[kmax]:.1f} (k={kmax})" if kmax else "-",
                _fmt(*p.epistemic, digits=2),
                _fmt(*p.length, digits=1),
                "-" if p.maj_at_k is None else f"{100 * p.maj_at_k:.1f}",
                "-" if p.answer_rate is None else f"{100 * p.answer_rate:.1f}",
            ]
        )
    return tabulate(rows, headers, tablefmt="github", disable_numparse=True)


def marker_table(deltas: dict[str, dict[str, float]]) -> str:
    from tabulate import tabulate

    rows = [
        [model, *(f"{d[m]:+.2f}" for m in MARKERS), f"{sum(d.values()):+.2f}"] for model, d in deltas.items()
    ]
    return tabulate(rows, ["model", *MARKERS, "E(y)"], tablefmt="github", disable_numparse=True)


def _resolve_baseline(baseline: str | None, models: list[runs.Model]) -> tuple[list[runs.Model], str | None]:
    """(models, baseline label): a path is read as a RUN (its one model is the baseline); otherwise it must
    name a model among the RUNs."""
    if baseline is None:
        return models, None
    labels = [m.label for m in models]
    if baseline in labels:
        return models, baseline
    if Path(baseline).exists():
        base = runs.read_run(baseline)
        if len(base) != 1:
            raise runs.RunError(
                f"--baseline {baseline}: holds {len(base)} models ({', '.join(m.label for m in base)}); "
                "pass one of them by name (a model of the RUNs) or a run folder with one model"
            )
        if base[0].label in labels:
            base[0].label = f"{base[0].label} (baseline)"
        return base + models, base[0].label
    raise runs.RunError(
        f"--baseline {baseline}: neither a run folder nor a model of the RUNs ({', '.join(labels)})"
    )


def report(run_paths: list[str], output: str | os.PathLike, baseline: str | None = None) -> dict[str, Any]:
    """Write DIR/report.md, its figures and report.json (atomically: the folder appears complete)."""
    from sd_bench.plots import marker_deltas, plot_marker_deltas

    found = [(path, m) for path in run_paths for m in runs.read_run(path)]
    models = [m for _, m in found]
    if len({m.label for m in models}) != len(models):  # the same condition from two reproduce folders
        for i, (path, m) in enumerate(found, 1):
            m.label = f"{Path(path).name}/{m.label}"
            if sum(other.label == m.label for other in models) > 1:  # the same folder twice
                m.label += f" #{i}"
    models, base_label = _resolve_baseline(baseline, models)
    points = collect_points(models)
    if not points:
        raise runs.RunError(f"{', '.join(run_paths)}: no task with an accuracy (acc) to report")
    md = [
        "# sd-bench report",
        "",
        f"Runs: {', '.join(f'`{p}`' for p in run_paths)}"
        + (f"; baseline: `{base_label}`" if base_label else "")
        + ".",
        "",
        "Accuracy is avg@k (mean correctness over the k responses of a problem, averaged over problems), "
        "`± s.e.` one standard error over problems"
        + (
            "; `≤` marks the bound sqrt(p(1-p)/n), used where the run kept no per-sample log"
            if any(p.se_is_bound for ps in points.values() for p in ps)
            else ""
        )
        + ". E(y): the paper's 10 epistemic markers counted per response (thinking included). "
        "pass@k: unbiased estimator (Chen et al. 2021) at the largest k measured.",
        "",
    ]
    summary: dict[str, Any] = {"runs": list(run_paths), "baseline": base_label, "tasks": {}}
    with atomic.atomic_dir(output) as tmp:
        for task, pts in points.items():
            md += [f"## {task}", "", task_table(pts), ""]
            plot_accuracy(pts, task, tmp / f"{task}_accuracy", base_label)
            md += [f"![{task}: accuracy vs E(y) and length]({task}_accuracy.png)", ""]
            entry: dict[str, Any] = {"points": [_point_json(p) for p in pts]}
            base = next((p for p in pts if p.model == base_label), None)
            if base is not None and len(pts) > 1:
                deltas = {p.model: marker_deltas(base.markers, p.markers) for p in pts if p is not base}
                # markers no model ever says (the toy world has only `wait`) would be empty slots
                said = [m for m in MARKERS if any(p.markers.get(m) for p in pts)] or list(MARKERS)
                plot_marker_deltas(
                    {model: {m: d[m] for m in said} for model, d in deltas.items()},
                    tmp / f"{task}_markers",
                    title=f"{task}: change in mean count per response vs {base_label}",
                    legend_outside=True,
                )
                md += [f"Per-marker change in mean count per response against `{base_label}`:", ""]
                md += [marker_table(deltas), "", f"![{task}: per-marker deltas]({task}_markers.png)", ""]
                entry["marker_deltas"] = deltas
            if any(len(p.pass_curve) > 2 or p.from_samples for p in pts):
                plot_pass_curves(pts, task, tmp / f"{task}_pass_at_k", base_label)
                md += [f"![{task}: pass@k]({task}_pass_at_k.png)", ""]
            summary["tasks"][task] = entry
        atomic.write_text(tmp / "report.md", "\n".join(md))
        atomic.write_json(tmp / "report.json", summary)
    return summary


def _point_json(p: Point) -> dict[str, Any]:
    def clean(v):
        return None if isinstance(v, float) and math.isnan(v) else v

    return {
        "model": p.model,
        "n_problems": p.n_problems,
        "k": p.k,
        "acc": {r: {"mean": v[0], "se": v[1]} for r, v in p.acc.items()},
        "se_is_bound": p.se_is_bound,
        "epistemic_count": {"mean": clean(p.epistemic[0]), "se": p.epistemic[1]},
        f"response_{p.length_unit}": {"mean": clean(p.length[0]), "se": p.length[1]},
        "markers": p.markers,
        "pass_at_k": {str(k): v for k, v in p.pass_curve.items()},
        "answer_rate": p.answer_rate,
        "maj_at_k": p.maj_at_k,
        "from_samples": p.from_samples,
    }


def add_arguments(parser) -> None:
    parser.add_argument(
        "runs", nargs="+", help="lm-eval output folders (with --log_samples) or reproduce folders"
    )
    parser.add_argument(
        "--baseline", default=None, help="a run folder with one model, or a model of the RUNs"
    )
    parser.add_argument("--output", required=True, help="folder to write (new, empty or an earlier report)")


def run(args) -> int:
    summary = report(args.runs, args.output, args.baseline)
    print(
        f"{Path(args.output) / 'report.md'}: {len(summary['tasks'])} task(s): {', '.join(summary['tasks'])}"
    )
    return 0
