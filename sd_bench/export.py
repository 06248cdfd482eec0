"""`sd-bench export RUN --output DIR`: per-sample details as parquet, and the aggregate results as JSON.

Why: a result table says what a model scored, the responses say why. lighteval keeps per-sample details
as parquet so that any tool (`datasets`, pandas, DuckDB) loads them; this does the same for sd-bench runs:

    DIR/<model>/details_<task>.parquet   one row per response (columns: DETAIL_COLUMNS + one correct_<rule>
                                         per extra grading rule, e.g. correct_acc_paper)
    DIR/<model>/<task>.json              the aggregate result (schema sd-bench/result/v1, validated)
    DIR/export.json                      what was exported from where

    datasets.load_dataset("parquet", data_files="DIR/<model>/details_sd_aime24.parquet")["train"]

RUN is read by `sd_bench.runs` (an lm-eval --output_path written with --log_samples, or a reproduce
folder). Tasks whose run kept no per-sample log (the committed smoke results) get their JSON only, and
export.json says so. Grades, lengths and marker counts are recomputed from each response (sd_bench.runs).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from sd_bench import atomic, runs
from sd_bench.markers import MARKERS

# Columns of every details file, in order (extra grading rules add correct_<rule> after `correct`).
DETAIL_COLUMNS = (
    "model",
    "task",
    "doc_id",
    "problem_id",
    "sample_index",
    "gold",
    "response",
    "extracted_answer",
    "correct",
    "response_tokens",
    "thinking_tokens",
    "response_chars",
    "thinking_chars",
    "epistemic_count",
    *(f"marker_{m}" for m in MARKERS),
)


def _safe(name: str) -> str:
    """A file-name-safe form of a model or task label."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", name).strip("_") or "model"


def detail_rows(model: runs.Model, task_run: runs.TaskRun, rules: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per response of one task of one model (DETAIL_COLUMNS + correct_<rule>)."""
    rows = []
    counter = None
    for doc in task_run.docs():
        if counter is None:
            counter = runs.token_counter_for(doc, task_run) or False
        for r in runs.response_rows(doc, rules, counter or None):
            rows.append(
                {
                    "model": model.label,
                    "task": task_run.task,
                    "doc_id": doc.doc_id,
                    "problem_id": doc.problem_id,
                    "gold": doc.answer,
                    **r,
                }
            )
    return rows


def write_parquet(path: Path, rows: list[dict[str, Any]], rules: dict[str, Any]) -> Path:
    """The rows as one parquet file with a fixed column order and types (nullable ints for lengths)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    extra = [f"correct_{name}" for name in rules if name != "acc"]
    columns = list(DETAIL_COLUMNS[: DETAIL_COLUMNS.index("correct") + 1]) + extra
    columns += list(DETAIL_COLUMNS[DETAIL_COLUMNS.index("correct") + 1 :])
    types = {
        "doc_id": pa.int64(),
        "sample_index": pa.int64(),
        "correct": pa.bool_(),
        "response_tokens": pa.int64(),
        "thinking_tokens": pa.int64(),
        "response_chars": pa.int64(),
        "thinking_chars": pa.int64(),
        "epistemic_count": pa.int64(),
        **{c: pa.bool_() for c in extra},
        **{f"marker_{m}": pa.int64() for m in MARKERS},
    }
    schema = pa.schema([(c, types.get(c, pa.string())) for c in columns])
    table = pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows], schema=schema)
    pq.write_table(table, path)
    return path


def export(run: str | os.PathLike, output: str | os.PathLike, label: str | None = None) -> dict[str, Any]:
    """Export one RUN into `output` (atomically: the folder appears complete or not at all)."""
    from sd_bench.schemas import validate_result

    models = runs.read_run(run, label)
    rules = runs.grading_rules()
    index: dict[str, Any] = {"run": str(run), "rules": list(rules), "models": {}}
    with atomic.atomic_dir(output) as tmp:
        for model in models:
            folder = tmp / _safe(model.label)
            folder.mkdir(parents=True, exist_ok=True)
            entry: dict[str, Any] = {"source": str(model.source), "tasks": {}}
            for task, task_run in model.tasks.items():
                result = {key: v for key, v in task_run.result.items() if not key.startswith("_")}
                validate_result(result, f"{model.source} ({task})")
                atomic.write_json(folder / f"{_safe(task)}.json", result)
                item: dict[str, Any] = {"result": f"{folder.name}/{_safe(task)}.json"}
                rows = detail_rows(model, task_run, rules)
                if rows:
                    write_parquet(folder / f"details_{_safe(task)}.parquet", rows, rules)
                    item["details"] = f"{folder.name}/details_{_safe(task)}.parquet"
                    item["responses"] = len(rows)
                else:
                    item["details"] = None
                    item["why_no_details"] = "the run kept no per-sample log (lm_eval --log_samples)"
                entry["tasks"][task] = item
            index["models"][model.label] = entry
        atomic.write_json(tmp / "export.json", index)
    return index


def add_arguments(parser) -> None:
    parser.add_argument(
        "run", help="lm-eval output folder (with --log_samples) or an sd-bench reproduce folder"
    )
    parser.add_argument("--output", required=True, help="folder to write (new, empty or an earlier export)")
    parser.add_argument("--label", default=None, help="model name to use when RUN holds one model")


def run(args) -> int:
    index = export(args.run, args.output, args.label)
    n = sum(t.get("responses", 0) for m in index["models"].values() for t in m["tasks"].values())
    tasks = sum(len(m["tasks"]) for m in index["models"].values())
    print(f"{args.output}: {len(index['models'])} model(s), {tasks} result(s), {n} responses in parquet")
    print(json.dumps({m: sorted(e["tasks"]) for m, e in index["models"].items()}))
    return 0
