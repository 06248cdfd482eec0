"""Tables 1-3 as Markdown, LaTeX and JSON, built only from result files (STYLE.md "Provenance everywhere").

Result file (what every evaluation stage writes; one file per condition x task [x step]):

    {"schema": "sd-bench/result/v1",
     "condition": "t2_sft_guided",        # a checkpoints_manifest.yaml entry id (or a smoke-scale id)
     "task": "sd_aime24",                 # an lm-eval task / group, or `dapo_probe`, `train`
     "metrics": {"acc": 0.21, "pass_at_k": 0.4, "response_tokens": 2100.0, "epistemic_count": 9.1},
     "n_problems": 30, "k": 16,           # n and k give `sd-bench check` its statistical bound
     "step": 100,                         # optional: training step of the evaluated checkpoint
     "provenance": {...}}                 # sd_bench.provenance.stamp(...)

`acc` is avg@k as a fraction (the paper prints percentages; columns carry a display `scale`).
`from_lm_eval()` converts lm-eval's `results_*.json` into such files.

Table file (`tableN.json`, what `sd-bench check` compares): columns are data, so a smoke-scale Table 2
with toy ID/OOD columns and the paper-scale one with AIME/AMC/MATH columns share one layout:

    {"schema": "sd-bench/table/v1", "table": "2", "title": ..., "scale": "smoke",
     "columns": [{"key": "aime24", "label": "AIME24", "task": "sd_aime24", "metric": "acc",
                  "scale": 100, "digits": 2}, ...],
     "conditions": {"t2_base": {"label": "base",
                                "metrics": {"aime24": 0.55},      # ours (None when not measured)
                                "paper": {"aime24": 0.5479},      # None where the paper has no number
                                "diff": {"aime24": 0.0021},       # ours - paper
                                "stats": {"aime24": {"task": ..., "metric": "acc", "n_problems": 30,
                                                     "k": 16, "step": null, "source": "eval/..json"}}}},
     "paper_source": "results/paper/table2.json: ...",
     "sources": {"eval/..json": {<that result file's provenance>}},
     "provenance": {<the rendering's provenance>}}
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sd_bench import atomic

RESULT_SCHEMA = "sd-bench/result/v1"
TABLE_SCHEMA = "sd-bench/table/v1"
PAPER_DIR = Path(__file__).resolve().parents[1] / "results" / "paper"


class ResultFileError(ValueError):
    """A result / table file is malformed; the message names the file, the field and the fix."""


# --- atomic I/O --------------------------------------------------------------------------------------


def write_text_atomic(path: Path | str, text: str) -> Path:
    return atomic.write_text(path, text)


def write_json_atomic(path: Path | str, data: Any) -> Path:
    return atomic.write_json(path, data)


def read_json(path: Path | str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ResultFileError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ResultFileError(f"{path}: not valid JSON ({exc})") from None


# --- result files ------------------------------------------------------------------------------------


def make_result(
    condition: str,
    task: str,
    metrics: dict[str, float],
    *,
    n_problems: int | None,
    k: int | None,
    step: int | None = None,
    provenance: dict | None = None,
) -> dict[str, Any]:
    return {
        "schema": RESULT_SCHEMA,
        "condition": condition,
        "task": task,
        "metrics": {m: float(v) for m, v in metrics.items()},
        "n_problems": n_problems,
        "k": k,
        "step": step,
        "provenance": provenance or {},
    }


def validate_result(data: Any, where: str = "<result>") -> dict[str, Any]:
    if not isinstance(data, dict) or data.get("schema") != RESULT_SCHEMA:
        raise ResultFileError(
            f"{where}: field 'schema': expected '{RESULT_SCHEMA}' (a result file written by "
            "an sd-bench evaluation stage, or convert lm-eval output with from_lm_eval)"
        )
    for key in ("condition", "task"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise ResultFileError(f"{where}: field '{key}': missing or not a string")
    metrics = data.get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        raise ResultFileError(f"{where}: field 'metrics': must be a non-empty mapping metric -> number")
    for m, v in metrics.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise ResultFileError(f"{where}: field 'metrics.{m}': {v!r} is not a finite number")
    for key in ("n_problems", "k"):
        v = data.get(key)
        if v is not None and (not isinstance(v, int) or v <= 0):
            raise ResultFileError(f"{where}: field '{key}': {v!r} is not a positive integer or null")
    return data


def read_result(path: Path | str) -> dict[str, Any]:
    data = validate_result(read_json(path), str(path))
    return {**data, "_path": str(path)}


def find_results(root: Path | str) -> list[dict[str, Any]]:
    """Every result file under `root` (recursively; other JSON files are skipped), sorted by path."""
    out = []
    for p in sorted(Path(root).rglob("*.json")):
        try:
            data = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and data.get("schema") == RESULT_SCHEMA:
            out.append({**validate_result(data, str(p)), "_path": str(p)})
    return out


def from_lm_eval(
    path: Path | str, condition: str, *, step: int | None = None, provenance: dict | None = None
) -> list[dict[str, Any]]:
    """lm-eval's `results_*.json` -> one result dict per task or group.

    `results[task]["acc,none"]` becomes `metrics["acc"]` (another filter f gives `acc[f]`); `_stderr`
    entries are dropped. n_problems = `n-samples[task].effective`, k = `configs[task].repeats`. For a group
    (e.g. sd_ood_math, an unweighted macro average of M subtasks with n_j problems each) n_problems is the
    effective size M^2 / sum_j 1/n_j, the n whose binomial variance p(1-p)/n equals the macro average's
    variance bound (1/M^2) sum_j p(1-p)/n_j; k is the subtasks' common k.
    """
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ResultFileError(f"{path}: field 'results': missing (is this an lm-eval results_*.json?)")
    n_samples = data.get("n-samples") or {}
    configs = data.get("configs") or {}
    groups = data.get("group_subtasks") or {}

    def n_of(task: str) -> int | None:
        ns = n_samples.get(task) or {}
        n = ns.get("effective", ns.get("original"))
        return int(n) if isinstance(n, int) and n > 0 else None

    def k_of(task: str) -> int | None:
        r = (configs.get(task) or {}).get("repeats")
        return int(r) if isinstance(r, int) and r > 0 else None

    prov = {
        **(provenance or {}),
        "lm_eval": {
            "file": Path(path).name,
            "git_hash": data.get("git_hash"),
            "date": data.get("date"),
            "model_args": (data.get("config") or {}).get("model_args"),
        },
    }
    out = []
    for task, res in data["results"].items():
        metrics = {}
        for key, value in res.items():
            if "," not in key or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            name, filt = key.split(",", 1)
            if name.endswith("_stderr") or not math.isfinite(value):
                continue
            metrics[name if filt == "none" else f"{name}[{filt}]"] = float(value)
        if not metrics:
            continue
        n, k = n_of(task), k_of(task)
        subs = groups.get(task)
        if subs and n is None:
            ns = [n_of(s) for s in subs]
            if all(ns):
                n = max(1, round(len(ns) ** 2 / sum(1 / x for x in ns)))
            ks = {k_of(s) for s in subs}
            k = ks.pop() if len(ks) == 1 else None
        out.append(make_result(condition, task, metrics, n_problems=n, k=k, step=step, provenance=prov))
    return out


# --- table specs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    task: str
    metric: str
    scale: float = 1.0  # display multiplier (100 for percentages)
    digits: int = 2
    vs_paper: bool = True  # False: shown beside, never compared with the paper (math-verify's acc)


@dataclass(frozen=True)
class TableSpec:
    number: str
    title: str
    row_header: str
    columns: tuple[Column, ...]
    rows: tuple[tuple[str, str], ...]  # (condition id, label) in paper order
    derive_metrics: tuple[str, ...] = ("acc",)  # metrics per task when columns are derived from results


def _graded_columns(sets, digits: int) -> tuple[Column, ...]:
    """Per math set: `acc_paper` (the paper's own evaluation rule, sd_bench.paper_answer) under the set's
    key, compared with the paper's number; then math-verify's `acc` (sd-bench's rule) beside it, as
    `<key>_mv`, never compared (issue 12, rule 4). Toy tables derive their columns from `acc` instead
    (`derive_columns`): toy problems have one grader, so their acc_paper equals acc."""
    return tuple(
        col
        for key, label, task in sets
        for col in (
            Column(key, label, task, "acc_paper", 100.0, digits),
            Column(f"{key}_mv", f"{label} math-verify", task, "acc", 100.0, digits, vs_paper=False),
        )
    )


_OOD = (
    ("aime24", "AIME24", "sd_aime24"),
    ("aime25", "AIME25", "sd_aime25"),
    ("amc23", "AMC23", "sd_amc23"),
    ("math500", "MATH500", "sd_math500"),
)
SPECS: dict[str, TableSpec] = {
    "1": TableSpec(
        "1",
        "Context richness (DeepSeek-R1-Distill-Qwen-7B, DAPO problems with solve rate in [1/8, 4/8])",
        "context",
        (
            Column("score", "score", "dapo_probe", "acc", 1.0, 2),
            Column("length", "length (tokens)", "dapo_probe", "response_tokens", 1.0, 0),
            Column("epistemic", "E(y)", "dapo_probe", "epistemic_count", 1.0, 1),
        ),
        (
            ("t1_none", "unguided (c = none)"),
            ("t1_s", "c = s"),
            ("t1_s_nothink", "c = s\\think"),
            ("t1_y_r", "c = y_r"),
        ),
        derive_metrics=("acc", "response_tokens", "epistemic_count"),
    ),
    "2": TableSpec(
        "2",
        "SFT on correct traces (DeepSeek-R1-Distill-Qwen-7B, 800 traces per set; avg@16, %)",
        "model",
        _graded_columns(_OOD, 2),
        (
            ("t2_base", "base"),
            ("t2_sft_unguided", "SFT on unguided traces"),
            ("t2_sft_guided", "SFT on solution-guided traces"),
        ),
    ),
    "3": TableSpec(
        "3",
        "Task coverage: measured sweep (Qwen3-8B thinking off)",
        "condition",
        (
            Column("train_score", "train score", "train", "score", 1.0, 2),
            *_graded_columns((("ood_acc", "OOD avg@16 (%)", "sd_ood_math"),), 1),
            Column("ood_length", "OOD length", "sd_ood_math", "response_tokens", 1.0, 0),
            Column("ood_epistemic", "OOD E(y)", "sd_ood_math", "epistemic_count", 1.0, 1),
        ),
        tuple(
            (f"cov_d{d}_{a}", f"|D| = {d}, {a.upper()}")
            for d in (1, 8, 64, 128, 512)
            for a in ("grpo", "sdpo")
        ),
        derive_metrics=("acc", "response_tokens", "epistemic_count"),
    ),
}


def load_paper(number: str, paper_dir: Path | str = PAPER_DIR) -> dict[str, Any] | None:
    """results/paper/tableN.json, or None when absent."""
    path = Path(paper_dir) / f"table{number}.json"
    return read_json(path) if path.is_file() else None


def _latest(results: Iterable[dict]) -> dict[tuple[str, str], dict]:
    """(condition, task) -> the result at the largest step (a result without step counts as final)."""
    best: dict[tuple[str, str], dict] = {}
    for r in results:
        key = (r["condition"], r["task"])
        step = math.inf if r.get("step") is None else r["step"]
        old = best.get(key)
        if old is None or step >= (math.inf if old.get("step") is None else old["step"]):
            best[key] = r
    return best


def _short(task: str) -> str:
    return task.removeprefix("sd_")


def derive_columns(results: Iterable[dict], metrics: Iterable[str]) -> list[Column]:
    """One column per (task, metric) found in the results: the data-driven layout for smoke scale."""
    metrics = list(metrics)
    tasks = sorted({r["task"] for r in results})
    cols = []
    for t in tasks:
        for m in metrics:
            key = _short(t) if len(metrics) == 1 else f"{_short(t)}_{m}"
            scale, digits = (
                (100.0, 1) if m in ("acc", "pass_at_k", "acc_paper", "pass_at_k_paper") else (1.0, 1)
            )
            label = f"{_short(t)} {m}" if len(metrics) > 1 else _short(t)
            cols.append(Column(key, label, t, m, scale, digits))
    return cols


def run_title(spec: TableSpec, results: Iterable[dict]) -> str:
    """The spec's title with its parenthesis rebuilt from the results: the base model(s) they were measured
    on and their k, so a small-scale table (Qwen3-1.7B, avg@4) does not claim the paper's setting. Trained
    models (`runs/...`) are left out: their base is the model named. No model in the results: the spec's."""
    results = list(results)
    models = sorted(
        {
            str(m)
            for r in results
            if (m := (r.get("provenance") or {}).get("run", {}).get("model"))
            and not str(m).startswith("runs/")
        }
    )
    if not models:
        return spec.title
    ks = sorted({r["k"] for r in results if r.get("k")})
    k = f"; avg@{'/'.join(map(str, ks))}" if ks else ""
    return f"{spec.title.split(' (')[0]} ({', '.join(models)}{k})"


def build_table(
    number: str | int,
    results: list[dict],
    *,
    scale: str = "paper",
    columns=None,
    rows=None,
    paper: dict | None = None,
    results_root: Path | str | None = None,
    title: str | None = None,
) -> dict[str, Any]:
    """Table N from result dicts: ours, paper, difference, with each cell's source and statistics.

    Columns: `columns` if given; else the paper's columns that have at least one result; else (smoke
    scale, other tasks) one column per task x spec.derive_metrics found in the results. Rows: the paper's
    rows, then any other condition present in the results, so nothing measured is dropped.
    """
    number = str(number)
    if number not in SPECS:
        raise ValueError(f"no table {number}: sd-bench builds tables {', '.join(SPECS)}")
    spec = SPECS[number]
    paper = load_paper(number) if paper is None else paper
    latest = _latest(results)
    if columns is None:
        have = {(t, m) for (_, t), r in latest.items() for m in r["metrics"]}
        columns = [c for c in spec.columns if (c.task, c.metric) in have]
        if not columns:  # other tasks than the paper's (smoke scale): columns from the results
            columns = derive_columns(latest.values(), spec.derive_metrics)
            title = title or f"{spec.title.split(' (')[0]} (columns: the tasks measured; avg@k in %)"
    columns = [c if isinstance(c, Column) else Column(**c) for c in columns]
    row_list = list(rows) if rows is not None else list(spec.rows)
    known = {cid for cid, _ in row_list}
    for cid in sorted({c for c, _ in latest}):
        if cid not in known:
            row_list.append((cid, cid))
            known.add(cid)
    paper_conds = (paper or {}).get("conditions", {})
    root = Path(results_root) if results_root is not None else None
    conditions: dict[str, Any] = {}
    sources: dict[str, Any] = {}
    for cid, label in row_list:
        ours, ref, diff, stats = {}, {}, {}, {}
        pvals = (paper_conds.get(cid) or {}).get("metrics", {})
        for c in columns:
            r = latest.get((cid, c.task))
            v = r["metrics"].get(c.metric) if r else None
            p = pvals.get(c.key) if c.vs_paper else None
            ours[c.key], ref[c.key] = v, p
            diff[c.key] = None if v is None or p is None else v - p
            if r is not None and v is not None:
                src = r.get("_path")
                if src and root is not None:
                    try:
                        src = os.path.relpath(src, root)
                    except ValueError:
                        pass
                stats[c.key] = {
                    "task": c.task,
                    "metric": c.metric,
                    "n_problems": r.get("n_problems"),
                    "k": r.get("k"),
                    "step": r.get("step"),
                    "source": src,
                }
                if src is not None:
                    sources[src] = r.get("provenance", {})
        if any(v is not None for v in ours.values()) or any(v is not None for v in ref.values()):
            conditions[cid] = {
                "label": (paper_conds.get(cid) or {}).get("label", label),
                "metrics": ours,
                "paper": ref,
                "diff": diff,
                "stats": stats,
            }
            # the condition's kind (eval|probe|sft|onpolicy) when its result files say it: `sd-bench check`
            # picks its statistical bound by it
            kinds = {r.get("kind") for (c, _), r in latest.items() if c == cid and r.get("kind")}
            if len(kinds) == 1:
                conditions[cid]["kind"] = kinds.pop()
    table = {
        "schema": TABLE_SCHEMA,
        "table": number,
        "title": title or run_title(spec, latest.values()),
        "scale": scale,
        "row_header": spec.row_header,
        "columns": [asdict(c) for c in columns],
        "conditions": conditions,
        "paper_source": (paper or {}).get("source"),
        "sources": sources,
    }
    if paper and "descriptive" in paper:
        table["descriptive"] = paper["descriptive"]
    if (
        paper
        and paper.get("conditions")
        and not any(v is not None for c in conditions.values() for v in c["paper"].values())
    ):
        table["paper_table"] = paper  # no column in common: show the paper's table beside ours
    return table


# --- rendering ---------------------------------------------------------------------------------------


def _fmt(v, c: dict, signed: bool = False) -> str:
    if v is None:
        return "-"
    x = v * c.get("scale", 1.0)
    d = c.get("digits", 2)
    return f"{x:+,.{d}f}" if signed else f"{x:,.{d}f}"


def _grid(table: dict) -> tuple[list[str], list[list[str]]]:
    has_paper = any(v is not None for cond in table["conditions"].values() for v in cond["paper"].values())
    headers = [table.get("row_header", "condition")]
    for c in table["columns"]:
        compared = has_paper and c.get("vs_paper", True)
        headers += [f"{c['label']} ours", "paper", "diff"] if compared else [c["label"]]
    rows = []
    for cond in table["conditions"].values():
        row = [cond["label"]]
        for c in table["columns"]:
            k = c["key"]
            row.append(_fmt(cond["metrics"].get(k), c))
            if has_paper and c.get("vs_paper", True):
                row += [_fmt(cond["paper"].get(k), c), _fmt(cond["diff"].get(k), c, signed=True)]
        rows.append(row)
    return headers, rows


def _descriptive_grid(table: dict) -> tuple[list[str], list[list[str]]] | None:
    desc = table.get("descriptive")
    if not desc:
        return None
    cols = desc["columns"]
    return [c["label"] for c in cols], [[str(r.get(c["key"], "-")) for c in cols] for r in desc["rows"]]


def to_markdown(table: dict, name: str | None = None) -> str:
    """The table as Markdown; its last line names the JSON file beside it (NAME.json, default tableN.json)."""
    from tabulate import tabulate

    parts = [f"# Table {table['table']}: {table['title']} (scale: {table['scale']})", ""]
    desc = _descriptive_grid(table)
    if desc:
        parts += ["Descriptive (from the paper):", "", tabulate(desc[1], desc[0], tablefmt="github"), ""]
        parts += ["Measured:", ""]
    headers, rows = _grid(table)
    parts += [tabulate(rows, headers, tablefmt="github", disable_numparse=True), ""]
    notes = []
    if table.get("paper_table"):
        parts += ["The paper's table (other tasks, so no difference is computed):", ""]
        parts += [paper_to_markdown(table["paper_table"]).split("\n", 2)[2]]
    elif table.get("paper_source"):
        notes.append(
            "`ours` is this run, `paper` the paper's number, `diff` = ours - paper, in the column's units."
        )
        notes.append(f"Paper numbers: {table['paper_source'].rstrip('.')}.")
    notes.append(f"Every number's source file and provenance: `{name or 'table' + table['table']}.json`.")
    return "\n".join(parts + notes) + "\n"


def to_latex(table: dict) -> str:
    from tabulate import tabulate

    headers, rows = _grid(table)
    body = tabulate(rows, headers, tablefmt="latex_booktabs", disable_numparse=True)
    caption = table["title"].replace("%", r"\%").replace("_", r"\_")
    out = [
        "\\begin{table}[t]",
        "\\centering",
        f"\\caption{{{caption} (scale: {table['scale']})}}",
        f"\\label{{tab:sd-bench-{table['table']}}}",
        body,
    ]
    desc = _descriptive_grid(table)
    if desc:
        out += ["\\vspace{0.5em}", tabulate(desc[1], desc[0], tablefmt="latex_booktabs")]
    out.append("\\end{table}")
    return "\n".join(out) + "\n"


def train_score_result(metrics_path: Path | str, condition: str) -> dict[str, Any] | None:
    """The last step of a trainer's metrics.jsonl as a `train` result (Table 3's training score column)."""
    path = Path(metrics_path)
    last = None
    for line in path.read_text().splitlines() if path.is_file() else []:
        if line.strip():
            row = json.loads(line)
            if isinstance(row, dict) and "step" in row:
                last = row
    if last is None:
        return None
    keep = ("score", "response_tokens", "epistemic_count")
    metrics = {m: float(last[m]) for m in keep if isinstance(last.get(m), (int, float))}
    if not metrics:
        return None
    return make_result(
        condition,
        "train",
        metrics,
        n_problems=None,
        k=None,
        step=int(last["step"]),
        provenance={"metrics_file": str(path)},
    )


def write_table(
    table: dict, out_dir: Path | str, provenance: dict | None = None, name: str | None = None
) -> dict[str, Path]:
    """NAME.{json,md,tex} in out_dir (NAME: tableN unless given), each written atomically; returns the paths."""
    out_dir = Path(out_dir)
    n = table["table"]
    name = name or f"table{n}"
    if provenance is not None:
        table = {**table, "provenance": provenance}
    return {
        "json": write_json_atomic(out_dir / f"{name}.json", table),
        "md": write_text_atomic(out_dir / f"{name}.md", to_markdown(table, name)),
        "tex": write_text_atomic(out_dir / f"{name}.tex", to_latex(table)),
    }


def paper_to_markdown(paper: dict) -> str:
    """One results/paper/tableN.json rendered as Markdown."""
    from tabulate import tabulate

    cols = paper["columns"]
    parts = [f"## Table {paper['table']}: {paper['title']}", ""]
    if paper["conditions"]:
        rows = [
            [cond["label"]] + [_fmt(cond["metrics"].get(c["key"]), c) for c in cols]
            for cond in paper["conditions"].values()
        ]
        parts += [
            tabulate(
                rows,
                [paper.get("row_header", "condition")] + [c["label"] for c in cols],
                tablefmt="github",
                disable_numparse=True,
            ),
            "",
        ]
    desc = _descriptive_grid(paper)
    if desc:
        parts += [tabulate(desc[1], desc[0], tablefmt="github"), ""]
    parts.append(f"Source: {paper['source']}")
    return "\n".join(parts) + "\n"


def render_paper_md(paper_dir: Path | str = PAPER_DIR) -> str:
    """results/paper/paper.md: the reference tables and figure values, rendered from the JSON files."""
    paper_dir = Path(paper_dir)
    md = [
        "# The paper's reference numbers",
        "",
        (
            "Rendered from the JSON files in this folder by `sd_bench.tables.render_paper_md` "
            "(tests/test_tables.py checks that they agree)."
        ),
        "",
    ]
    for n in SPECS:
        md.append(paper_to_markdown(read_json(paper_dir / f"table{n}.json")))
    figs = read_json(paper_dir / "figures.json")
    md += ["## Figure values", ""]
    for n, f in figs["figures"].items():
        vals = (
            "; ".join(
                f"{v['condition']} {v['task']} {v['metric']} at step {v['step']}: {v['value']}"
                for v in f["values"]
            )
            or "no point values in PAPER.md (curves only)"
        )
        md.append(f"- Figure {n} ({f['title']}): {vals}")
    md += ["", f"Source: {figs['source']}"]
    return "\n".join(md) + "\n"
