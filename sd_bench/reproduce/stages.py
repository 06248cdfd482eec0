"""The five stage kinds of `sd-bench reproduce`, one function each, shared by every scale and every target.

    select    sample k responses per problem of a set in file order, keep problems solved min..max of k
              times (the first N), each with its first correct response s (Table 1's probe set; Table 2's
              D_ug) [analyzing_reasoning_behavior/eval_dapo_dataset.py `infer`]
    generate  k responses per selected problem under a hint context (none, answer, s, s\\think, y_r); all of
              them (Table 1) or the first correct one (Table 2's D_sg), stored with the PLAIN prompt
              [eval_with_hint.py `build_augmented_prompt` / `main`; make_sft_dataset.py `main`]
    train     `sd-bench train RECIPE --scale PRESET --output runs/<cond> key=value...` in a stable folder,
              resumed inside the trainer after a crash (sd_bench.train.cli)
    evaluate  lm-eval on the scale's tasks (one sd-bench result file per task, per-sample logs
              samples_<task>.jsonl), or Table 1's probe files graded into the same two formats
    render    tables.build_table / plots from DIR/eval and runs/*/metrics.jsonl

Each function reads what it needs from `ctx.stage` (params, inputs, outputs, model, recipe) and `ctx.scale`;
nothing here knows which scale it runs at. Trace and probe rows have ONE format (`trace_row`), read by the
trainer's SFT loop (`prompt`, `response`), `sd-bench markers` (via the samples files) and the tables.
"""

from __future__ import annotations

import shlex
import shutil
import time
from pathlib import Path

from sd_bench.lm_eval_tasks import PROMPT_RESERVE
from sd_bench.reproduce import sampling
from sd_bench.reproduce.io import (
    jsonl_text,
    lm_eval_run,
    lm_eval_summary,
    probe_metrics,
    read_jsonl,
    run_trainer,
    trainer_args,
)
from sd_bench.reproduce.plan import REPO_ROOT

# seed salts: each sampling stage draws its own streams (rollout.sample_seed(seed, salt, problem index))
SALT = {"select": 1, "none": 2, "answer": 3, "s": 4, "s_nothink": 5, "y_r": 6}


def _threads(ctx) -> None:
    if ctx.scale.threads:
        import torch

        torch.set_num_threads(ctx.scale.threads)


def trace_row(q: dict, response: str, tokens: int, context: str, condition: str) -> dict:
    """One sampled response: the trace / probe row format of every scale. `correct` is the paper's rule on
    the full response (it selects problems and traces: eval_dapo_dataset.py `check_is_correct`; the toy
    grader for toy problems), `correct_math_verify` sd-bench's math-verify rule (sd_bench.grading)."""
    from sd_bench.grading import grade
    from sd_bench.markers import marker_counts

    counts = marker_counts(response)
    return {
        "id": q["id"],
        "prompt": q["prompt"],  # the PLAIN user turn: what sd_bench/train/sft.py renders for SFT
        "answer": q["answer"],
        "kind": q["kind"],
        "context": context,
        "condition": condition,
        "response": response,
        "tokens": tokens,
        "correct": grade(q["kind"], response, q["answer"], rule="paper").correct,
        "correct_math_verify": grade(q["kind"], response, q["answer"]).correct,
        "epistemic_count": sum(counts.values()),
        "markers": counts,
    }


def _sample(ctx, turns: list[str], salt: int, indices=None, n=None) -> list[list[tuple[str, int]]]:
    p, s = ctx.stage.params, ctx.scale
    return sampling.sample(
        ctx.stage.model,
        ctx.out_dir,
        turns,
        n=n or p["k"],
        **{k: p[k] for k in ("temperature", "top_p", "top_k", "max_new_tokens", "thinking")},
        seed=ctx.seed,
        salt=salt,
        sampler=s.sampler,
        dtype_name=s.dtype,
        gpu_memory_utilization=s.gpu_memory_utilization,
        indices=indices,
    )


def select(ctx) -> None:
    """Select problems (module docstring); a kept row is s plus solve_rate, correct_count and reference."""
    from sd_bench.data import load_problems

    _threads(ctx)
    p = ctx.stage.params
    t0 = time.monotonic()
    pool = load_problems(p["data"])[: p["candidates"]]
    kept, rest, visited, start = [], [], 0, 0
    while start < len(pool) and len(kept) < p["keep"]:
        # a round of at most batch_size problems, about 4x the problems still needed (~25% are kept): the
        # kept set is the same whatever the rounds (per-problem seeds, file order), only the overshoot is not
        size = min(p["batch_size"], max(16, 4 * (p["keep"] - len(kept))))
        qs = pool[start : start + size]
        ctx.report(len(kept), p["keep"], f"problems {start}-{start + len(qs)} of {p['data']}")
        indices = list(range(start, start + len(qs)))
        for q, resp in zip(qs, _sample(ctx, [q.prompt for q in qs], SALT["select"], indices)):
            visited += 1
            rows = [trace_row(vars(q), text, n, "none", p["condition"]) for text, n in resp]
            ok = [r["correct"] for r in rows]
            row = rows[ok.index(True) if any(ok) else 0]
            row.update(solve_rate=sum(ok) / len(ok), correct_count=sum(ok), reference=q.solution)
            if p["min_correct"] <= sum(ok) <= p["max_correct"] and any(ok):
                kept.append(row)
            else:
                rest.append(row)
        start += size
    kept = kept[: p["keep"]]
    if not p["require_correct"]:  # pipeline checks only (a model that solves nothing): s may be wrong
        kept += rest[: p["keep"] - len(kept)]
    if not kept:
        raise RuntimeError(
            f"no problem of {p['data']} solved {p['min_correct']}-{p['max_correct']} of {p['k']} times among "
            f"{visited}; raise --set probe.candidates or max_new_tokens (cut responses have no answer)"
        )
    ctx.write_text(ctx.stage.outputs[0], jsonl_text(kept))
    _write_stats(ctx, kept, visited * p["k"], t0)


def _hint(context: str, row: dict, hint_source: str) -> str | None:
    from sd_bench.prompts import strip_think

    if context == "none":
        return None
    if context == "answer":
        return row["answer"]
    own = row["response"]  # s: the first correct sample (selection); y_r: the best round-1 response
    if context in ("s", "y_r"):
        return row["reference"] if hint_source == "reference_solution" and context == "s" else own
    if context == "s_nothink":
        return strip_think(row["reference"] if hint_source == "reference_solution" else own)
    raise ValueError(f"unknown context {context!r}")


def _best_round1(rows: list[dict]) -> list[dict]:
    """y_r's hint per problem: the first correct c = s response, else the first (eval_with_hint.py round 2:
    `best_response`)."""
    best: dict[str, dict] = {}
    for r in rows:
        if r["id"] not in best or (r["correct"] and not best[r["id"]]["correct"]):
            best[r["id"]] = r
    return list(best.values())


def generate(ctx) -> None:
    """k samples per input row under the stage's context; keep all (probes) or the first correct (traces)."""
    from sd_bench.prompts import hint_prompt

    _threads(ctx)
    p = ctx.stage.params
    t0 = time.monotonic()
    src = read_jsonl(ctx.path(ctx.stage.inputs[0]))
    if p["context"] == "y_r":
        src = _best_round1(src)
    hints = [_hint(p["context"], r, ctx.scale.hint_source) for r in src]
    turns = [r["prompt"] if h is None else hint_prompt(r["prompt"], h) for r, h in zip(src, hints)]
    ctx.report(0, len(turns), f"sampling, context {p['context']}")

    def graded(i: int, resp) -> list[dict]:
        r = src[i]
        return [trace_row(r, t, n, p["context"], p["condition"]) for t, n in resp]

    salt = SALT[p["context"]]
    if p["keep"] == "all":
        rows = [g for i, resp in enumerate(_sample(ctx, turns, salt)) for g in graded(i, resp)]
        out, drawn = rows, len(rows)
    else:
        # the first correct of k samples, drawn lazily: sample 0 of every problem, then all k only where it
        # failed. Sample j of a problem is the same stream whatever n (sampling.sample), so the kept trace is
        # exactly the first correct of k (make_sft_dataset.py), at ~1/k of the cost when most hints succeed
        first = [graded(i, resp) for i, resp in enumerate(_sample(ctx, turns, salt, n=1))]
        again = [i for i, g in enumerate(first) if not g[0]["correct"]]
        if again and p["k"] > 1:
            for i, resp in zip(again, _sample(ctx, [turns[i] for i in again], salt, indices=again)):
                first[i] = graded(i, resp)
        drawn = len(turns) + len(again) * (p["k"] - 1)
        out = []
        for g in first:
            pick = next((x for x in g if x["correct"]), None if p["require_correct"] else g[0])
            if pick is not None:
                out.append(pick)
    if not out:
        raise RuntimeError(f"no correct response under context {p['context']} for {len(src)} problems")
    ctx.write_text(ctx.stage.outputs[0], jsonl_text(out))
    if p["keep"] != "all":
        _write_stats(ctx, out, drawn, t0)


def _write_stats(ctx, kept: list[dict], sampled: int, t0: float) -> None:
    """traces/<set>.stats.json beside a traces file: how many were sampled, kept, their length and E(y)."""
    out = ctx.stage.outputs[0]
    if not out.startswith("traces/"):
        return
    p = ctx.stage.params
    ctx.write_json(
        out.replace(".jsonl", ".stats.json"),
        {
            "traces": Path(out).stem,
            "model": ctx.stage.model_shown,
            "sampled": sampled,
            "kept": len(kept),
            "kept_incorrect": sum(not r["correct"] for r in kept),
            "require_correct": p["require_correct"],
            "mean_tokens": sum(r["tokens"] for r in kept) / len(kept),
            "mean_epistemic_count": sum(r["epistemic_count"] for r in kept) / len(kept),
            "sampling": {k: p.get(k) for k in ("k", "temperature", "top_p", "top_k", "max_new_tokens")},
            "seed": ctx.seed,
            "wall_time_s": round(time.monotonic() - t0, 3),
        },
    )


def train(ctx) -> None:
    """The trainer on the stage's resolved overrides, in runs/<cond> (stable: a crash resumes from the last
    checkpoint inside the trainer; a folder without a checkpoint is this stage's own leftover and starts over)."""
    _threads(ctx)
    p = ctx.stage.params
    overrides = dict(p["overrides"])
    data = overrides.get("data.name")
    if data and ctx.path(str(data)).exists():
        overrides["data.name"] = str(ctx.path(str(data)))
    args = trainer_args(overrides)
    run_dir = ctx.path(f"runs/{p['condition']}")
    from sd_bench.train.checkpoint import latest_checkpoint  # a complete checkpoint, the trainer's own test

    resume = run_dir.is_dir() and latest_checkpoint(run_dir) is not None
    if run_dir.exists() and not resume:
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    recipe, preset = ctx.stage.recipe, p["preset"]
    try:
        run_trainer(recipe, run_dir, args, scale=preset, resume=resume, launcher=p.get("launcher"))
    finally:
        sampling.free_memory()
    shown = " ".join(shlex.quote(a) for a in args).replace(str(ctx.out_dir) + "/", "")
    (run_dir / "command.txt").write_text(
        f"sd-bench train {recipe} --scale {preset} --output runs/{p['condition']} {shown}\n"
    )


def _model_args(ctx, backend: str) -> tuple[str, str]:
    """(lm-eval model_args, the same with the output folder's paths made relative)."""
    p = ctx.stage.params
    model, rev, adapter = sampling.resolve_model(ctx.out_dir, ctx.stage.model)
    args = {"pretrained": model, "dtype": sampling.dtype(ctx.scale.dtype)}
    if rev:
        args["revision"] = rev
    if backend == "vllm":
        args.update(
            seed=ctx.seed,
            max_model_len=sampling.vllm_context(model, (p["max_new_tokens"] or 4096) + PROMPT_RESERVE),
            gpu_memory_utilization=ctx.scale.gpu_memory_utilization,
        )
        if adapter:
            import json

            rank = json.loads((Path(adapter) / "adapter_config.json").read_text()).get("r", 64)
            args.update(enable_lora=True, lora_local_path=adapter, max_lora_rank=rank)
    elif adapter:
        args["peft"] = adapter
    text = ",".join(f"{k}={v}" for k, v in args.items())
    shown = text.replace(str(ctx.out_dir) + "/", "").replace(str(ctx.out_dir), ".")
    return text, shown.replace(str(REPO_ROOT) + "/", "")  # no local paths in result files


def evaluate(ctx) -> None:
    """lm-eval on the stage's tasks, or (params `probe`) Table 1's probe rows graded (module docstring)."""
    if ctx.stage.params.get("probe"):
        return _evaluate_probe(ctx)
    from sd_bench import lm_eval_tasks, provenance, tables
    from sd_bench.reproduce.io import sample_rows

    _threads(ctx)
    p = ctx.stage.params
    backend = sampling.backend(ctx.scale.sampler)
    model_args, shown = _model_args(ctx, backend)
    thinking = "on" if p["thinking"] else "off"
    tm = lm_eval_tasks.task_manager(
        k=p["k"],
        thinking=thinking,
        max_gen_toks=p["max_new_tokens"],
        model_args=model_args,
        include_defaults=False,
    )
    decoding = {"temperature": p["temperature"], "top_p": p["top_p"]}
    gen_kwargs = None  # the task YAML's decoding (lm_eval_tasks.SAMPLING), unless the stage's differs
    if p["temperature"] is not None and decoding != lm_eval_tasks.SAMPLING[thinking]:
        gen_kwargs = f"temperature={p['temperature']},top_p={p['top_p']}"
    tasks = list(p["tasks"])
    ctx.report(0, None, f"lm-eval {p.get('group') or ','.join(tasks)} ({backend})")
    res, wall = lm_eval_run(
        seed=ctx.seed,
        model=backend,
        model_args=model_args,
        tasks=[p["group"]] if p.get("group") else tasks,
        task_manager=tm,
        batch_size=ctx.scale.eval.batch_size or ("auto" if backend == "vllm" else 16),
        device=sampling.device(),
        limit=p["limit"],
        gen_kwargs=gen_kwargs,
    )
    sampling.free_memory()
    where = str(Path(ctx.stage.outputs[0]).parent)
    summary = lm_eval_summary(res)
    summary["config"]["model_args"] = shown
    raw = ctx.write_json(f"{where}/lm_eval_results.json", summary)
    for task, rows in sample_rows(res, tasks).items():
        ctx.write_text(f"{where}/samples_{task}.jsonl", jsonl_text(rows))
    results = {r["task"]: r for r in tables.from_lm_eval(raw, p["condition"], step=p["step"])}
    for out in ctx.stage.outputs:
        name = Path(out).stem
        if name.startswith("samples_") or name == "lm_eval_results":
            continue
        if name not in results:
            raise RuntimeError(f"lm-eval returned no results for {name} (got {sorted(results)})")
        gen = provenance.lm_eval_generation(res, name)  # the decoding lm-eval ran (task YAML + gen_kwargs)
        ctx.write_json(
            out,
            provenance.stamp(
                {**results[name], "kind": p["kind"]},  # `sd-bench check` picks its bound by the kind
                model=ctx.stage.model_shown,
                data=name,
                seed=ctx.seed,
                k=gen["k"] or p["k"],
                sampling=gen["sampling"],
                wall_time_s=wall,
                limit=p["limit"],
                backend=backend,
                model_args=shown,
            ),
        )


def _evaluate_probe(ctx) -> None:
    """Score, length and E(y) of one context's probe rows (Table 1's columns) + its samples file."""
    from sd_bench import provenance, tables

    p, source = ctx.stage.params, ctx.stage.inputs[0]
    rows = read_jsonl(ctx.path(source))
    if not rows:
        raise ValueError(f"{source}: no responses")
    result = tables.make_result(
        p["condition"],
        p["task"],
        probe_metrics(rows),
        n_problems=len({r["id"] for r in rows}),
        k=p["k"],
        provenance={"samples": source},
    )
    result = provenance.stamp(
        result,
        k=p["k"],
        model=ctx.stage.model_shown,
        data=p["task"],
        seed=ctx.seed,
        sampling=p["sampling"],
        backend=sampling.backend(ctx.scale.sampler),
    )
    ctx.write_json(ctx.stage.outputs[0], {**result, "kind": p["kind"]})
    by_id: dict[str, dict] = {}
    for r in rows:
        rec = by_id.setdefault(
            r["id"],
            {
                "task": p["task"],
                "doc_id": len(by_id),
                "doc": {"id": r["id"], "answer": r["answer"]},
                "filtered_resps": [],
            },
        )
        rec["filtered_resps"].append(r["response"])
    ctx.write_text(ctx.stage.outputs[1], jsonl_text(by_id.values()))


def render(ctx) -> None:
    """A table (`_table`), a figure (plots), or a figure with its final numbers as a table."""
    from sd_bench import plots, tables

    p = ctx.stage.params
    for cond in (p.get("summary") or p).get("train_conditions", ()):  # the first and last training score
        metrics = ctx.path(f"runs/{cond}/metrics.jsonl")
        last = tables.train_score_result(metrics, cond)
        if last is not None:
            last["provenance"]["metrics_file"] = f"runs/{cond}/metrics.jsonl"  # relative: no local paths
            ctx.write_json(f"eval/{cond}/train.json", last)
            first = read_jsonl(metrics)[0]
            score = {"score": first["score"]}
            start = tables.make_result(
                cond, "train_first", score, n_problems=None, k=None, step=first["step"]
            )
            ctx.write_json(f"eval/{cond}/train_first.json", start)
    results = tables.find_results(ctx.path("eval")) if ctx.path("eval").is_dir() else []
    if "table" in p:
        return _table(ctx, p, results)
    if p.get("summary"):  # a figure's final numbers as a table, so its guards are `sd-bench check` rules
        _table(ctx, p["summary"], results)
    plots.render_figure(
        p["figure"],
        results,
        {c: ctx.path(f"runs/{c}/metrics.jsonl") for c in p["conditions"]},
        ctx.path(f"figure{p['figure']}"),
        task=p["task"],
        base_of=p["base_of"],
        labels=p["labels"],
        training_only=p["training_only"],
        title=f"Figure {p['figure']} ({ctx.scale.name} scale, {p['task']})",
    )


def _table(ctx, p: dict, results: list[dict]) -> None:
    """`p["name"]`.{json,md,tex}: tables.build_table over `p["conditions"]` with the stage's columns, rows
    and guard rules (a figure's final numbers and the ablations use Table 3's layout, without the paper)."""
    from sd_bench import provenance, tables

    results = [r for r in results if r["condition"] in set(p["conditions"])]
    if not results:
        raise tables.ResultFileError(f"{ctx.path('eval')}: no result files for {', '.join(p['conditions'])}")
    table = tables.build_table(
        p["table"],
        results,
        scale=ctx.scale.name,
        columns=[tables.Column(*c) for c in p["columns"]] if p.get("columns") else None,
        rows=[tuple(r) for r in p["rows"]] if p.get("rows") else None,
        paper=None if p.get("paper", True) else {},
        results_root=ctx.out_dir,
        title=p.get("title"),
    )
    if p.get("rules"):
        table["rules"] = p["rules"]
    prov = provenance.collect()
    prov["run"] = {"seed": ctx.seed, "scale": ctx.scale.name}
    tables.write_table(table, ctx.out_dir, provenance=prov, name=p.get("name"))


FUNCTIONS = {"select": select, "generate": generate, "train": train, "evaluate": evaluate, "render": render}
