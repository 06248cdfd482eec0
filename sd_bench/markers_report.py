"""`sd-bench markers RUN [BASELINE_RUN]`: per-marker epistemic counts from lm-eval sample logs.

The paper's per-word figure (e.g. the change in "wait" count on AIME24: SDPO -60.8, GRPO +28.5) is the mean
count of each marker per response in one run minus the same in a baseline run. Counts are recomputed from the
responses in the logs (`filtered_resps`, all k of them with sd-bench's tasks) with `sd_bench.markers`, so the
report is exact per response and works on any lm-eval generation task.

RUN / BASELINE_RUN: an lm-eval `--output_path` folder written with `--log_samples` (searched recursively for
`samples_<task>_<timestamp>.jsonl`; the newest file per task wins) or one or more such files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from sd_bench import jsonl
from sd_bench.markers import MARKERS, marker_counts
from sd_bench.runs import sample_responses


class MarkersError(ValueError):
    """A samples file that cannot be read as lm-eval sample logs; the message names the file and line."""


_SAMPLES_FILE = re.compile(r"^samples_(?P<task>.+)_(?P<stamp>\d{4}-\d{2}-\d{2}T[\d\-.]+)\.jsonl$")


def _sample_files(paths: list[str]) -> dict[str, Path]:
    """task -> newest samples file among `paths` (folders are searched recursively)."""
    found: dict[str, tuple[str, Path]] = {}
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(
                f"{p}: no such file or folder (expected an lm-eval --output_path or samples_*.jsonl)"
            )
        files = sorted(f for f in p.rglob("samples_*.jsonl") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            m = _SAMPLES_FILE.match(f.name)
            task, stamp = (m["task"], m["stamp"]) if m else (f.stem.removeprefix("samples_"), "")
            if task not in found or stamp > found[task][0]:
                found[task] = (stamp, f)
    if not found:
        raise FileNotFoundError(
            f"no samples_*.jsonl under {', '.join(paths)}: run lm_eval with --log_samples"
        )
    return {task: f for task, (_, f) in sorted(found.items())}


def marker_means(path: Path) -> dict:
    """{"responses": n, "markers": {marker: mean count per response}, "epistemic_count": mean E(y)}."""
    totals = dict.fromkeys(MARKERS, 0)
    n = 0
    hint = "pass lm-eval's samples_*.jsonl (JSON objects with 'filtered_resps' or 'resps')"
    for _, record in jsonl.records(path, MarkersError, hint=hint):
        for text in sample_responses(record):
            n += 1
            for m, c in marker_counts(text).items():
                totals[m] += c
    if n == 0:
        raise MarkersError(
            f"{path}: no responses (no 'filtered_resps' / 'resps' strings); was lm-eval run with --log_samples?"
        )
    means = {m: c / n for m, c in totals.items()}
    return {"responses": n, "markers": means, "epistemic_count": sum(means.values())}


def report(run: list[str], baseline: list[str] | None = None) -> dict:
    """{task: {"run": marker_means, "baseline": marker_means, "delta": {marker: run - baseline}}}."""
    run_files = _sample_files(run)
    base_files = _sample_files(baseline) if baseline else {}
    if base_files and not set(base_files) & set(run_files):
        raise MarkersError(
            f"no task in common: the run has {', '.join(run_files)}, the baseline {', '.join(base_files)}; "
            "pass a baseline run of the same tasks"
        )
    out = {}
    for task, f in run_files.items():
        entry = {"run": marker_means(f), "file": str(f)}
        if task in base_files:
            b = marker_means(base_files[task])
            entry["baseline"] = b
            entry["baseline_file"] = str(base_files[task])
            entry["delta"] = {m: entry["run"]["markers"][m] - b["markers"][m] for m in MARKERS}
            entry["delta"]["E(y)"] = entry["run"]["epistemic_count"] - b["epistemic_count"]
        out[task] = entry
    return out


def format_table(result: dict) -> str:
    from tabulate import tabulate

    with_base = any("baseline" in e for e in result.values())
    headers = ["task", "marker", "run"] + (["baseline", "delta"] if with_base else [])
    rows = []
    for task, e in result.items():
        names = list(MARKERS) + ["E(y)"]
        for name in names:
            value = e["run"]["epistemic_count"] if name == "E(y)" else e["run"]["markers"][name]
            row = [task, name, value]
            if with_base:
                if "baseline" in e:
                    b = e["baseline"]["epistemic_count"] if name == "E(y)" else e["baseline"]["markers"][name]
                    row += [b, e["delta"][name]]
                else:
                    row += ["-", "-"]
            rows.append(row)
        rows.append(
            [task, "responses", e["run"]["responses"]]
            + ([e.get("baseline", {}).get("responses", "-"), ""] if with_base else [])
        )
    return tabulate(rows, headers=headers, floatfmt=("", "", ".2f", ".2f", "+.2f"))


def add_arguments(parser) -> None:
    parser.add_argument("run", help="lm-eval output folder (with --log_samples) or a samples_*.jsonl file")
    parser.add_argument("baseline", nargs="?", default=None, help="the same for the baseline run")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args) -> int:
    result = report([args.run], [args.baseline] if args.baseline else None)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0
