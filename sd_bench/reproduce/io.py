"""What every `sd-bench reproduce` stage reads and writes, whatever the scale (stages.py).

One place for the file formats stages hand to each other (and the lm-eval and `sd-bench train` calls that
make them), so the toy world and the real models produce the same shapes. Stages write them through
`StageContext.write_text` (atomic: a resumed run never reads half a file).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from sd_bench import jsonl
from sd_bench.runs import sample_responses


def jsonl_text(rows: Iterable[dict]) -> str:
    """One JSON object per line, keys sorted (stable bytes for the same rows)."""
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)


def read_jsonl(path: Path | str) -> list[dict]:
    """Rows of a JSONL file; a bad line raises naming the file and line."""
    return [rec for _, rec in jsonl.records(path)]


def lm_eval_summary(res: dict) -> dict:
    """The JSON-safe part of `lm_eval.simple_evaluate`'s return that `tables.from_lm_eval` reads."""
    return {
        "results": res["results"],
        "n-samples": res.get("n-samples", {}),
        "configs": {t: {"repeats": c.get("repeats")} for t, c in res.get("configs", {}).items()},
        "group_subtasks": res.get("group_subtasks", {}),
        "config": {"model_args": (res.get("config") or {}).get("model_args")},
        "versions": res.get("versions", {}),
        "git_hash": res.get("git_hash"),
        "date": res.get("date"),
    }


def quiet_progress() -> None:
    """Third-party progress bars off under `reproduce` (transformers' weight loading, datasets, lm-eval's
    document building: a bare `tqdm(docs)` in lm_eval.api.task); sd-bench's own display and lm-eval's
    request bar stay. Called where those libraries are imported anyway (no import cost for reused runs)."""
    import functools

    import datasets
    import lm_eval.api.task as lm_task
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    if not isinstance(lm_task.tqdm, functools.partial):
        lm_task.tqdm = functools.partial(lm_task.tqdm, disable=True)


def lm_eval_run(*, seed: int, **kwargs) -> tuple[dict, float]:
    """`lm_eval.simple_evaluate(**kwargs)` as every stage calls it: per-sample logs on (markers, samples
    files), no bootstrap (the tables carry their own statistics), python / numpy / torch / few-shot seeds all
    `seed` (the same seed gives the same numbers). Returns (lm-eval's result, wall seconds)."""
    import time

    import lm_eval

    quiet_progress()
    t0 = time.monotonic()
    res = lm_eval.simple_evaluate(
        log_samples=True,
        bootstrap_iters=0,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
        verbosity="WARNING",
        **kwargs,
    )
    return res, time.monotonic() - t0


SAMPLE_METRICS = ("acc", "epistemic_count", "response_tokens")


def sample_rows(res: dict, tasks: Iterable[str]) -> dict[str, list[dict]]:
    """task -> per-doc records shaped like lm-eval's --log_samples (`filtered_resps` holds all k responses),
    so `sd-bench markers` reads them; the doc is cut to its id and answer (no problem text twice)."""
    out: dict[str, list[dict]] = {}
    for task in tasks:
        rows = []
        for s in res.get("samples", {}).get(task, []):
            rows.append(
                {
                    "task": task,
                    "doc_id": s["doc_id"],
                    "doc": {"id": s["doc"].get("id"), "answer": s["doc"].get("answer")},
                    "filtered_resps": sample_responses(s),
                    **{m: s.get(m) for m in SAMPLE_METRICS if m in s},
                }
            )
        out[task] = rows
    return out


def probe_metrics(rows: list[dict]) -> dict[str, float]:
    """Table 1's columns over graded trace rows (stages.trace_row): score (mean `correct`), length (mean
    `tokens`), E(y) (mean `epistemic_count`) and the mean count of each marker (`markers`)."""
    from sd_bench.markers import MARKERS

    n = len(rows)
    return {  # acc: math-verify (sd-bench's rule), acc_paper: the paper's rule (`correct`), as lm-eval's tasks
        "acc": sum(r.get("correct_math_verify", r["correct"]) for r in rows) / n,
        "acc_paper": sum(r["correct"] for r in rows) / n,
        "response_tokens": sum(r["tokens"] for r in rows) / n,
        "epistemic_count": sum(r["epistemic_count"] for r in rows) / n,
        **{f"marker_{m}": sum(r["markers"][m] for r in rows) / n for m in MARKERS},
    }


def trainer_args(overrides: dict) -> list[str]:
    """Trainer overrides -> `key=value` arguments the trainer's YAML parser reads back to the same values
    (None -> null, booleans -> true/false)."""

    def text(v):
        return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)

    return [f"{k}={text(v)}" for k, v in overrides.items()]


def run_trainer(
    recipe: str,
    output: Path,
    args: list[str],
    *,
    scale: str,
    resume: bool = False,
    launcher: str | None = None,
) -> None:
    """`sd-bench train RECIPE --scale SCALE --output OUTPUT [--resume] key=value...`, in-process
    (sd_bench.train.cli), so a stage fails with the trainer's own exception; raises on a non-zero exit.
    With `launcher` (e.g. torchrun ...), `LAUNCHER --scale ... RECIPE key=value...` as a subprocess."""
    import argparse

    from sd_bench.train import cli as train_cli

    # options first: argparse matches the positionals (recipe, key=value...) in one go
    argv = ["--scale", scale, "--output", str(output), *(["--resume"] if resume else []), recipe, *args]
    if launcher:
        import shlex
        import subprocess

        subprocess.run([*shlex.split(launcher), *argv], check=True)
        return
    parser = argparse.ArgumentParser(prog="sd-bench train")
    train_cli.add_arguments(parser)
    rc = train_cli.run(parser.parse_args(argv))
    if rc:
        raise RuntimeError(f"sd-bench train {recipe} --scale {scale} {' '.join(args)} exited with {rc}")
