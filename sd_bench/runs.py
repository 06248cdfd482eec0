"""One reader of evaluation runs, for `sd-bench export` and `sd-bench report`.

A RUN is either
- an lm-eval `--output_path` folder (one subfolder per model, each with `results_<time>.json` and, with
  `--log_samples`, `samples_<task>_<time>.jsonl` of the same time): one model per results file (the newest
  per subfolder), or
- an `sd-bench reproduce` folder (`DIR/eval/<condition>/<task>.json`, sd-bench result files, beside
  `samples_<task>.jsonl` or `samples.jsonl` when the stage kept them): one model per condition.
Either way it becomes `Model`s, each with per-task `sd-bench/result/v1` results (aggregate metrics, stamped
with generation settings, engine and provenance) and, where the run kept them, per-problem `Doc`s holding
all k responses. Everything per response (grades under each rule, tokens, markers) is recomputed from the
responses, so it does not depend on which metrics the run's task version logged.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sd_bench import jsonl
from sd_bench.markers import MARKERS, marker_counts

_RESULTS_FILE = re.compile(r"^results_(?P<stamp>.+)\.json$")


class RunError(ValueError):
    """A RUN path that is not an lm-eval output folder or a reproduce folder (message names it and the fix)."""


@dataclass
class Doc:
    """One problem of a task: its id, gold answer, problem kind and all k responses."""

    doc_id: int
    problem_id: str
    answer: str
    kind: str
    responses: list[str]
    tokenizer: str = ""
    logged: dict[str, float] = field(default_factory=dict)  # the per-problem metrics the run logged


@dataclass
class TaskRun:
    task: str
    result: dict[str, Any]  # sd-bench/result/v1
    samples_file: Path | None = None

    def docs(self) -> list[Doc]:
        if self.samples_file is None:
            return []
        return read_docs(self.samples_file, self.task)


@dataclass
class Model:
    """One evaluated model (an lm-eval results file, or a reproduce condition)."""

    label: str
    source: Path
    tasks: dict[str, TaskRun] = field(default_factory=dict)


# ---------------------------------------------------------------- finding runs


def read_run(path: Path | str, label: str | None = None) -> list[Model]:
    """The models of one RUN path (module docstring). `label` names the model when there is one."""
    path = Path(path)
    if not path.exists():
        raise RunError(f"{path}: no such folder (expected an lm-eval --output_path or a reproduce --output)")
    if path.is_file() and _RESULTS_FILE.match(path.name):
        models = [_read_lm_eval(path)]
    elif path.is_dir() and (path / "eval").is_dir():
        models = _reproduce_models(path / "eval")
    elif path.is_dir() and (_is_condition(path) or any(path.glob("step-*/*.json"))):
        models = _read_condition_steps(path)
    elif path.is_dir():
        models = _lm_eval_models(path)
    else:
        models = []
    if not models:
        raise RunError(
            f"{path}: no lm-eval results_*.json and no sd-bench result files (eval/<condition>/*.json) "
            "found; pass the folder given to lm_eval --output_path or to sd-bench reproduce --output"
        )
    if label is not None and len(models) == 1:
        models[0].label = label
    elif len(models) == 1 and path.is_dir() and models[0].source.name.startswith("results_"):
        models[0].label = path.name  # lm_eval --output_path runs/qwen3 -> "qwen3", not lm-eval's model slug
    return models


def _is_condition(path: Path) -> bool:
    """A reproduce condition folder (eval/<condition>) given directly."""
    return any(_result_file(p) for p in path.glob("*.json"))


def _result_file(p: Path) -> dict | None:
    from sd_bench.tables import RESULT_SCHEMA

    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("schema") == RESULT_SCHEMA else None


def _reproduce_models(eval_dir: Path) -> list[Model]:
    return [m for d in sorted(eval_dir.iterdir()) if d.is_dir() for m in _read_condition_steps(d) if m.tasks]


def _step_of(folder: Path) -> int:
    return int(folder.name.removeprefix("step-"))


def _read_condition_steps(folder: Path) -> list[Model]:
    """A condition's models: its evaluations at the last step (in `step-<N>/`, or beside the training
    scores when it has no step folders) under the condition's name, earlier steps as `<condition>@step-<N>`."""
    steps = sorted((d for d in folder.glob("step-*") if d.is_dir() and d.name[5:].isdigit()), key=_step_of)
    model = _read_condition(folder)
    if not steps:
        return [model]
    last = _read_condition(steps[-1])
    model.tasks.update(last.tasks)
    model.label = last.label if last.tasks else model.label
    earlier = [_read_condition(d) for d in steps[:-1]]
    for m, d in zip(earlier, steps[:-1]):
        m.label = f"{m.label}@{d.name}"
    return [model, *earlier]


def _read_condition(folder: Path) -> Model:
    from sd_bench.tables import validate_result

    model = Model(label=folder.name, source=folder)
    shared = folder / "samples.jsonl"
    for p in sorted(folder.glob("*.json")):
        data = _result_file(p)
        if data is None:
            continue
        validate_result(data, str(p))
        data = complete_legacy(data)
        task = data["task"]
        own = folder / f"samples_{task}.jsonl"
        samples = (
            own if own.is_file() else (shared if shared.is_file() and _holds_task(shared, task) else None)
        )
        model.tasks[task] = TaskRun(task, data, samples)
        model.label = data.get("condition") or model.label
    return model


def task_default_generation(task: str) -> dict[str, Any]:
    """generation_kwargs and repeats of one of sd-bench's own tasks, from its YAML (the template's where the
    task file leaves them out); {} for a task sd-bench does not ship."""
    import yaml

    from sd_bench.lm_eval_tasks import TEMPLATE_NAME, tasks_path

    root = Path(tasks_path())

    def load(path: Path) -> dict:
        class Loader(yaml.SafeLoader):
            pass

        Loader.add_multi_constructor("!", lambda loader, suffix, node: None)  # !function hooks
        return yaml.load(path.read_text(encoding="utf-8"), Loader=Loader) or {}

    for path in root.rglob("*.yaml"):
        cfg = load(path)
        if cfg.get("task") == task:
            base = load(root / TEMPLATE_NAME)
            gen = {**(base.get("generation_kwargs") or {}), **(cfg.get("generation_kwargs") or {})}
            return {"generation_kwargs": gen, "repeats": cfg.get("repeats", base.get("repeats"))}
    return {}


def complete_legacy(result: dict[str, Any]) -> dict[str, Any]:
    """A result written before `generation` / `engine` were required, completed from what it recorded:
    k and provenance.run.sampling, the cap on new tokens from the task's YAML when the run left it at the
    task default (None), and the engine from provenance.run.backend ("hf" when lm-eval ran and none was
    recorded: every sd-bench stage that left it out used lm-eval's HF backend). Marked `reconstructed`."""
    from sd_bench import provenance

    if result.get("task") in ("train", "train_first") or "generation" in result or "engine" in result:
        return result  # a training score, or written by a writer that knows the fields: left as it is
    prov = result.get("provenance") or {}
    run = prov.get("run") or {}
    sampling = dict(run.get("sampling") or {})
    toy_probe = result.get("task") == "toy_probe" and "lm_eval" not in prov
    if not any(sampling.get(key) is not None for key in provenance.MAX_TOKEN_KEYS):
        # results written before the schema (Table 1 at smoke scale, the old toy sampler) name no token cap:
        # it was the smoke scale's probe cap (reproduce/scale.py SMOKE probe.max_new_tokens = 96), the same
        # as the in-domain toy task's max_gen_toks.
        task = "sd_toy_id" if toy_probe else result["task"]
        default = task_default_generation(task).get("generation_kwargs") or {}
        sampling["max_tokens"] = default.get("max_gen_toks")
    out = dict(result)
    out["generation"] = {
        **provenance.generation_settings(result.get("k") or run.get("k"), sampling, seed=run.get("seed")),
        "reconstructed": True,
    }
    # toy_probe without lm-eval: the toy world's own plain-torch KV-cache sampler (since removed)
    backend = run.get("backend") or ("hf" if "lm_eval" in prov else "torch" if toy_probe else None)
    if backend is not None:
        engine = provenance.engine_info(backend, harness="lm-eval" if "lm_eval" in prov else None)
        engine["version"] = (prov.get("packages") or {}).get(engine["name"], engine["version"])
        out["engine"] = {**engine, "reconstructed": True}
    return out


def _holds_task(samples: Path, task: str) -> bool:
    with open(samples, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    if json.loads(line).get("task") == task:
                        return True
                except json.JSONDecodeError:
                    return False
    return False


def _lm_eval_models(root: Path) -> list[Model]:
    newest: dict[Path, Path] = {}
    for f in sorted(root.rglob("results_*.json")):
        if _RESULTS_FILE.match(f.name) and (f.parent not in newest or f.name > newest[f.parent].name):
            newest[f.parent] = f
    return [_read_lm_eval(f) for _, f in sorted(newest.items())]


def _read_lm_eval(results_file: Path) -> Model:
    """One lm-eval results file -> a Model whose results are stamped from lm-eval's own record."""
    from sd_bench import provenance, tables

    data = tables.read_json(results_file)
    stamp_time = _RESULTS_FILE.match(results_file.name)["stamp"]
    config = data.get("config") or {}
    model_args = config.get("model_args")
    if isinstance(model_args, str):
        from lm_eval.utils import simple_parse_args_string

        model_args = simple_parse_args_string(model_args)
    model_args = model_args or {}
    name = str(model_args.get("pretrained") or data.get("model_name") or results_file.parent.name)
    label = data.get("model_name_sanitized") or results_file.parent.name
    model = Model(label=str(label), source=results_file)
    for result in tables.from_lm_eval(results_file, str(label)):
        task = result["task"]
        gen = provenance.lm_eval_generation(data, task)
        engine = provenance.engine_info(gen["backend"] or "unknown", harness="lm-eval")
        if engine["name"] == "transformers" and data.get("transformers_version"):
            engine["version"] = data["transformers_version"]  # the version that ran, not the one here
        engine["harness_version"] = data.get("lm_eval_version") or engine["harness_version"]
        stamped = provenance.stamp(
            result,
            model=name,
            k=gen["k"],
            sampling=gen["sampling"],
            seed=config.get("random_seed"),
            engine=engine,
            limit=config.get("limit"),
        )
        samples = results_file.parent / f"samples_{task}_{stamp_time}.jsonl"
        model.tasks[task] = TaskRun(task, stamped, samples if samples.is_file() else None)
    return model


# ---------------------------------------------------------------- per-problem records


def sample_responses(record: dict) -> list[str]:
    """The response strings of one lm-eval sample record (`filtered_resps`, else `resps`, nested lists
    flattened in order): what `sd-bench markers`, export and report read."""
    out: list[str] = []

    def walk(y):
        if isinstance(y, str):
            out.append(y)
        elif isinstance(y, (list, tuple)):
            for z in y:
                walk(z)

    walk(record.get("filtered_resps", record.get("resps", [])))
    return out


def read_docs(path: Path, task: str = "") -> list[Doc]:
    """Per-problem records of a samples file (lm-eval's --log_samples or reproduce's), in file order.

    A record whose doc names no problem kind is graded as math, except in the miniature world's tasks
    (`sd_toy_*`, `toy_probe`), whose answers only the toy checker reads."""
    default_kind = "toy" if task.startswith(("sd_toy", "toy_")) else "math"
    docs = []
    for _, rec in jsonl.records(path, RunError, hint="one lm-eval sample record per line"):
        if task and rec.get("task", task) != task:  # a samples.jsonl shared by several tasks
            continue
        doc = rec.get("doc") or {}
        responses = sample_responses(rec)
        docs.append(
            Doc(
                doc_id=int(rec.get("doc_id", len(docs))),
                problem_id=str(doc.get("id", rec.get("doc_id", len(docs)))),
                answer=str(doc.get("answer", rec.get("target", ""))),
                kind=str(doc.get("kind") or default_kind),
                responses=responses,
                tokenizer=str(doc.get("tokenizer") or ""),
                logged={
                    key: float(v)
                    for key, v in rec.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and key != "doc_id"
                },
            )
        )
    return docs


# ---------------------------------------------------------------- per-response facts


def grading_rules() -> dict[str, Any]:
    """The metric each grading rule feeds -> fn(kind, response, gold) -> Grade (.correct, .extracted):
    `acc` (sd-bench's math-verify rule) and `acc_paper` (the paper's rule), from sd_bench.grading."""
    import functools

    from sd_bench import grading

    return {
        f"acc{grading.METRIC_SUFFIX[rule]}": functools.partial(_grade, rule=rule) for rule in grading.RULES
    }


def _grade(kind: str, response: str, gold: str, *, rule: str):
    from sd_bench import grading

    return grading.grade(kind, response, gold, rule=rule)


def response_rows(doc: Doc, rules: dict[str, Any], count_tokens=None) -> list[dict[str, Any]]:
    """One row per response: grades under each rule (`correct` for acc, `correct_<rule>` for the others,
    `extracted_answer` by sd-bench's rule), length (tokens when a counter is given, else None; characters
    always), thinking (sd_bench.paper_answer.thinking_text: the metric `thinking_tokens`), E(y) and marker
    counts."""
    from sd_bench.paper_answer import thinking_text

    texts = doc.responses
    thinking = [thinking_text(t) for t in texts]
    tokens = count_tokens(texts) if count_tokens is not None else [None] * len(texts)
    think_tokens = count_tokens(thinking) if count_tokens is not None else [None] * len(texts)
    rows = []
    for i, text in enumerate(texts):
        row: dict[str, Any] = {"sample_index": i, "response": text}
        for name, fn in rules.items():
            g = fn(doc.kind, text, doc.answer)
            row.setdefault("extracted_answer", g.extracted)
            row[f"correct_{name}" if name != "acc" else "correct"] = bool(g.correct)
        counts = marker_counts(text)
        row.update(
            response_tokens=tokens[i],
            thinking_tokens=think_tokens[i],
            response_chars=len(text),
            thinking_chars=len(thinking[i]),
            epistemic_count=sum(counts.values()),
            **{f"marker_{m}": counts[m] for m in MARKERS},
        )
        rows.append(row)
    return rows


def token_counter_for(doc: Doc, task_run: TaskRun):
    """The batch token counter of the evaluated model's tokenizer (the doc's, else the result's model)."""
    from sd_bench.lm_eval_tasks import batch_token_counter
    from sd_bench.provenance import REPO_ROOT

    run = (task_run.result.get("provenance") or {}).get("run") or {}
    for name in (doc.tokenizer, run.get("model")):
        # a relative model path (sd_bench/toy/base) is relative to the run's working folder or the checkout
        for path in (Path(str(name)).expanduser(), REPO_ROOT / str(name)) if name else ():
            if path.exists():
                counter = batch_token_counter(str(path))
                if counter is not None:
                    return counter
    return None
