"""The stage graph of each paper table and figure: one definition per target, the same at every scale.

What differs between scales is data (scale.py: decoding, limits, trainer overrides) and the manifest's
entries (checkpoints_manifest.yaml / toy_manifest.yaml: models, recipes, contexts, tasks); the graph is:

    table1   select/t1 -> generate/<entry> per context -> evaluate/<entry> -> render/table1
             [analyzing_reasoning_behavior/eval_dapo_dataset.py, then eval_with_hint.py round 1 (c = s) and
             round 2 (c = y_r: the best round-1 response)]
    table2   select/t2_traces_unguided (D_ug: the first correct unguided sample of each problem the Table 1
             filter keeps, extended to probe.traces problems) -> generate/t2_traces_guided (D_sg: the first
             correct of k hint-conditioned samples, c = s) -> evaluate base, train + evaluate each SFT model
             -> render/table2 [make_sft_dataset.py]
    table3, figure3-8
             per on-policy entry: evaluate its base at step 0 (shared by entries with the same base and
             thinking mode), train, evaluate every train.eval_every steps -> render
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from sd_bench.reproduce.io import trainer_args
from sd_bench.reproduce.plan import REPO_ROOT, PlanError, Stage

TRACES = {
    "traces_unguided": "traces/unguided.jsonl",
    "traces_solution_guided": "traces/solution_guided.jsonl",
}
PAPER_TABLE_TASKS = {"sd_aime24", "sd_aime25", "sd_amc23", "sd_math500"}


class Builder:
    """Stages of one target: entries from the manifest, values from the scale."""

    def __init__(self, req, scale, manifest):
        self.req, self.s, self.m = req, scale, manifest
        self.stages: list[Stage] = []
        self.notes: list[str] = []

    def add(self, stage: Stage) -> Stage:
        for old in self.stages:
            if old.name == stage.name:
                return old
        self.stages.append(stage)
        return stage

    def model(self, entry) -> str:
        return self.s.model or self.m.model_ref(entry.base_model)

    def sampling(self, entry) -> dict:
        p = self.s.probe
        return {
            "k": p.k,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "top_k": p.top_k,
            "max_new_tokens": p.max_new_tokens,
            "thinking": entry.thinking,
            "require_correct": p.require_correct,
        }

    def select(self, name: str, entry, keep: int, output: str) -> Stage:
        p = self.s.probe
        data = p.data or self.m.world.select_data
        return self.add(
            Stage(
                f"select/{name}",
                "select",
                f"{p.k} samples per problem of {data} in file order; keep the first {keep} solved "
                f"{p.min_correct}-{p.max_correct} of {p.k} times, each with its first correct sample s",
                inputs=(self.model(entry), data),
                outputs=(output,),
                model=self.model(entry),
                params={
                    "condition": name,
                    "data": data,
                    "candidates": p.candidates,
                    "keep": keep,
                    "min_correct": p.min_correct,
                    "max_correct": p.max_correct,
                    "batch_size": p.batch_size,
                    **self.sampling(entry),
                },
            )
        )

    def generate(self, name: str, entry, context: str, source: str, output: str, keep: str) -> Stage:
        what = "all samples" if keep == "all" else "the first correct, stored with the plain prompt"
        own = self.s.hint_source == "own_response"
        hint = "the model's own correct response" if own else "the reference solution"
        return self.add(
            Stage(
                f"generate/{name}",
                "generate",
                f"{self.s.probe.k} samples per problem of {source}, context {context}"
                + (f" (s = {hint})" if context in ("s", "s_nothink") else "")
                + f"; keep {what}",
                inputs=(source,),
                outputs=(output,),
                model=self.model(entry),
                params={"condition": name, "context": context, "keep": keep, **self.sampling(entry)},
            )
        )

    def probe_eval(self, entry, source: str) -> Stage:
        task = self.m.world.probe_task
        return self.add(
            Stage(
                f"evaluate/{entry.id}",
                "evaluate",
                f"grade, length (tokens), E(y) of {source} -> {task} result + samples log",
                inputs=(source,),
                outputs=(f"eval/{entry.id}/{task}.json", f"eval/{entry.id}/samples_{task}.jsonl"),
                model=self.model(entry),
                params={
                    "condition": entry.id,
                    "kind": entry.kind,
                    "probe": True,
                    "task": task,
                    "k": self.s.probe.k,
                    "sampling": {
                        k: v for k, v in self.sampling(entry).items() if k not in ("k", "require_correct")
                    },
                },
            )
        )

    def evaluate(self, condition: str, entry, model_ref: str, step: int | None, inputs=()) -> Stage:
        d, e, w = entry.decoding, self.s.eval, self.m.world
        limit = self.s.train.eval_limit if step is not None and self.s.train.eval_limit else e.limit
        params = {
            "condition": condition,
            "kind": entry.kind if condition == entry.id else "eval",  # a step-0 base is an evaluation
            "tasks": list(self.s.tasks or w.eval_tasks),
            "group": w.eval_group if not self.s.tasks else None,
            "step": step,
            "k": e.k or d.k,
            # the toy tasks carry their own decoding (tasks/toy/*.yaml); the paper's come from the manifest
            "temperature": e.temperature
            if e.temperature is not None
            else (d.temperature if w.eval_group else None),
            "top_p": e.top_p if e.top_p is not None else (d.top_p if w.eval_group else None),
            "max_new_tokens": e.max_new_tokens or (d.max_new_tokens if w.eval_group else None),
            "thinking": entry.thinking,
            "limit": limit,
        }
        where = f"eval/{condition}" + ("" if step is None else f"/step-{step}")
        names = params["tasks"] + ([params["group"]] if params["group"] else [])
        return self.add(
            Stage(
                f"evaluate/{condition}" + ("" if step is None else f"@{step}"),
                "evaluate",
                f"lm-eval {params['group'] or ','.join(params['tasks'])}: avg@{params['k']}"
                + (f" on the first {limit} problems" if limit else "")
                + ", per-sample logs (sd-bench markers)",
                inputs=tuple(inputs),
                outputs=tuple(f"{where}/{t}.json" for t in names)
                + tuple(f"{where}/samples_{t}.jsonl" for t in params["tasks"])
                + (f"{where}/lm_eval_results.json",),
                model=model_ref,
                params=params,
            )
        )

    def train(self, entry, data: str) -> tuple[str, list[int | None], Stage | None]:
        """(model to evaluate, evaluation steps, stage) of a trained entry (or its released checkpoint)."""
        from sd_bench.train.config import ConfigError, load_config

        ckpt = entry.released_checkpoint
        if self.req.from_checkpoints and ckpt is not None:
            return f"{ckpt.id}@{ckpt.revision}", [ckpt.step or self.s.train.steps], None
        if self.req.from_checkpoints:
            self.notes.append(f"{entry.id}: no released checkpoint; trained")
        t, sft = self.s.train, entry.kind == "sft"
        try:
            algorithm = load_config(entry.recipe).algorithm
        except ConfigError as exc:
            raise PlanError(f"entry '{entry.id}': {exc}") from None
        ov = dict(t.sft if sft else t.onpolicy)
        if algorithm in t.lr:
            ov["optim.lr"] = t.lr[algorithm]
        ov.update(entry.overrides)
        ov.update(
            {"model.path": self.model(entry).rsplit("@", 1)[0], "data.name": data, "run.seed": self.req.seed}
        )
        steps: list[int | None] = [None]
        if not sft:
            ov.update({"run.max_steps": t.steps, "run.save_every": t.eval_every})
            steps = list(range(t.eval_every, t.steps + 1, t.eval_every))
        ov.update(t.overrides)
        stage = self.add(
            Stage(
                f"train/{entry.id}",
                "train",
                f"sd-bench train {entry.recipe} --scale {t.preset} on {data}"
                + (f" [{' '.join(trainer_args(entry.overrides))}]" if entry.overrides else ""),
                inputs=(self.model(entry), data),
                outputs=(f"runs/{entry.id}/metrics.jsonl", f"runs/{entry.id}/final"),
                model=self.model(entry),
                recipe=entry.recipe,
                params={"condition": entry.id, "preset": t.preset, "overrides": ov, "launcher": t.launcher},
            )
        )
        return f"runs/{entry.id}/final", steps, stage

    def render(self, name: str, outputs: tuple[str, ...], desc: str, params: dict) -> Stage:
        inputs = tuple(o for s in self.stages for o in s.outputs if o.endswith((".json", ".jsonl")))
        return self.add(
            Stage(f"render/{name}", "render", desc, inputs=inputs, outputs=outputs, params=params)
        )

    def columns(self, number: str, train: bool) -> list | None:
        """Table columns: the paper's where the tasks are the paper's (None), else per task acc / length /
        E(y) (+ the first and last training score of trained rows); Table 1: the probe task's."""
        from sd_bench import tables

        tasks = set(self.s.tasks or self.m.world.eval_tasks)
        if number == "1":
            task = self.m.world.probe_task  # another world's keys (toy_score, ...) are not the paper's
            pre = "" if task == "dapo_probe" else task.split("_")[0] + "_"
            return [
                (pre + c.key, c.label, task, c.metric, c.scale, c.digits) for c in tables.SPECS["1"].columns
            ]
        if tasks <= PAPER_TABLE_TASKS and self.m.world.probe_task == "dapo_probe":
            return None
        cols = [("train_first", "train score @1", "train_first", "score", 1.0, 2)] if train else []
        cols += [("train_score", "train score (last step)", "train", "score", 1.0, 2)] if train else []
        for t in sorted(tasks):
            short = t.removeprefix("sd_").removeprefix("toy_")
            cols += [
                (f"{short}_acc", f"{short.upper()} acc (%)", t, "acc", 100.0, 1),
                (f"{short}_length", f"{short.upper()} length", t, "response_tokens", 1.0, 1),
                (f"{short}_epistemic", f"{short.upper()} E(y)", t, "epistemic_count", 1.0, 2),
            ]
        return cols

    def table(self, number: str, conditions: list[str], labels: dict[str, str], train=()) -> Stage:
        from sd_bench import tables

        spec_rows = {c for c, _ in tables.SPECS[number].rows}
        return self.render(
            f"table{number}",
            (f"table{number}.json", f"table{number}.md", f"table{number}.tex"),
            f"Table {number}: ours beside the paper",
            {
                "table": number,
                "conditions": conditions,
                "columns": self.columns(number, bool(train)),
                "rows": None if spec_rows >= set(conditions) else [(c, labels[c]) for c in conditions],
                "train_conditions": list(train),
                "rules": guard_rules(self.s, f"table{number}"),
            },
        )


def guard_rules(scale, target: str) -> list[dict]:
    """The scale's `sd-bench check` rules for a table (results/smoke/guards.yaml at smoke scale)."""
    if not scale.guards:
        return []
    import yaml

    path = REPO_ROOT / scale.guards
    return (yaml.safe_load(path.read_text()) or {}).get(target, []) if path.is_file() else []


def _base_condition(entry) -> str:
    """Condition id of an entry's step-0 evaluation (shared by entries with the same base and thinking)."""
    return (
        f"base_{re.sub(r'[^a-z0-9]+', '_', entry.base_model.key)}_{'think' if entry.thinking else 'nothink'}"
    )


def table1(b: Builder) -> None:
    entries = b.m.in_group("table1")
    b.select("t1", entries[0], b.s.probe.problems, "probe/selection.jsonl")
    by_context = {e.context: e.id for e in entries}
    for e in entries:
        src = f"probe/{by_context['s']}.jsonl" if e.context == "y_r" else "probe/selection.jsonl"
        b.generate(e.id, e, e.context, src, f"probe/{e.id}.jsonl", keep="all")
    for e in entries:
        b.probe_eval(e, f"probe/{e.id}.jsonl")
    b.table("1", [e.id for e in entries], {e.id: e.description for e in entries})


def table2(b: Builder) -> None:
    base, ug, sg = (b.m.entry(i) for i in ("t2_base", "t2_sft_unguided", "t2_sft_guided"))
    b.select("t2_traces_unguided", base, b.s.probe.traces, TRACES["traces_unguided"])
    b.generate(
        "t2_traces_guided",
        base,
        "s",
        TRACES["traces_unguided"],
        TRACES["traces_solution_guided"],
        keep="first_correct",
    )
    b.evaluate(base.id, base, b.model(base), None)
    for e in (ug, sg):
        ref, _, _ = b.train(e, TRACES[e.train_data])
        b.evaluate(e.id, e, ref, None, inputs=(ref,))
    b.table("2", [base.id, ug.id, sg.id], {e.id: e.description for e in (base, ug, sg)})


def onpolicy(b: Builder, entries) -> dict[str, str]:
    """Evaluate each entry's base at step 0, train it, evaluate it every eval_every steps; entry -> base."""
    base_of = {}
    for e in entries:
        base_of[e.id] = _base_condition(e)
        b.evaluate(base_of[e.id], e, b.model(e), 0)
        ref, steps, stage = b.train(e, e.train_data)
        for s in steps:
            ckpt = ref if (stage is None or s == steps[-1]) else f"runs/{e.id}/checkpoint-{s}"
            b.evaluate(e.id, e, ckpt, s, inputs=(ckpt,))
    return base_of


def table3(b: Builder) -> None:
    entries = b.m.in_group("table3")
    base_of = onpolicy(b, entries)
    labels = {e.id: e.description for e in entries} | {base_of[entries[0].id]: "base (no training)"}
    b.table("3", [base_of[entries[0].id]] + [e.id for e in entries], labels, train=[e.id for e in entries])


def figure(b: Builder, n: int) -> None:
    entries = b.m.in_group(f"figure{n}")
    if not entries or (n in (5, 6) and len({(e.base_model.key, e.thinking) for e in entries}) < 2):
        raise PlanError(
            f"figure {n} compares base models (5: Qwen3-8B thinking on / off; 6: Olmo-3-7B-Instruct, "
            f"Qwen3-1.7B), but {Path(b.m.path).name} has a single base model without thinking modes for it; "
            f"run `sd-bench reproduce --figure {n} --scale small` (or --scale paper)"
        )
    base_of = onpolicy(b, entries)
    w = b.m.world
    task = w.eval_tasks[0] if n == 4 else (w.eval_group or w.eval_tasks[-1])
    rules = guard_rules(b.s, f"figure{n}")  # a figure with guards also writes its final numbers as JSON
    what = (
        "per-marker epistemic deltas vs the step-0 base" if n == 4 else "training curves + held-out accuracy"
    )
    b.render(
        f"figure{n}",
        (f"figure{n}.png", f"figure{n}.svg") + ((f"figure{n}.json",) if rules else ()),
        f"Figure {n}: {what}",
        {
            "figure": n,
            "task": task,
            "conditions": [e.id for e in entries],
            "base_of": base_of,
            "labels": {e.id: e.description or e.id for e in entries},
            "training_only": n == 8,
            "summary": summary(b, f"figure{n}", entries, base_of, rules) if rules else None,
        },
    )


def summary(b: Builder, name: str, entries, base_of: dict[str, str], rules: list[dict]) -> dict:
    """Render params of a Table-3-layout table NAME.json over trained entries and their step-0 bases."""
    conds = list(dict.fromkeys([*base_of.values(), *(e.id for e in entries)]))
    labels = {e.id: e.description or e.id for e in entries} | {
        c: "base (no training)" for c in base_of.values()
    }
    return {
        "table": "3",
        "name": name,
        "paper": False,
        "title": f"{name}: final evaluations ({b.s.name} scale, {b.s.train.steps} steps)",
        "conditions": conds,
        "columns": b.columns("3", True),
        "rows": [(c, labels[c]) for c in conds],
        "train_conditions": [e.id for e in entries],
        "rules": rules,
    }


def ablations(b: Builder) -> None:
    """The miniature world's ablations (issue 5: the paper's loss, EMA, sibling context, remedies), as
    manifest entries of group `ablations` through the on-policy protocol and the real trainer."""
    entries = b.m.in_group("ablations")
    if not entries:
        raise PlanError(f"{Path(b.m.path).name} has no entries in group 'ablations' (the toy manifest has)")
    base_of = onpolicy(b, entries)
    params = summary(b, "ablations", entries, base_of, guard_rules(b.s, "ablations"))
    b.render(
        "ablations",
        ("ablations.json", "ablations.md", "ablations.tex"),
        "the ablations' final evaluations",
        params,
    )


PROTOCOLS = {
    "ablations": ablations,
    "table1": table1,
    "table2": table2,
    "table3": table3,
    **{f"figure{n}": functools.partial(figure, n=n) for n in range(3, 9)},
}


def only(plan, keep: list[str]) -> None:
    """Restrict an on-policy plan to `keep`'s stages, the step-0 evaluations of their bases, and render."""
    import difflib

    conds = {st.params.get("condition") for st in plan.stages if st.kind == "train"}
    unknown = [c for c in keep if c not in conds]
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(conds), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise PlanError(
            f"--set conditions: {unknown[0]} is not a trained condition of {plan.target}{hint} "
            f"(conditions: {', '.join(sorted(c for c in conds if c))})"
        )
    stages, base = [], None
    for st in plan.stages:
        cond = st.params.get("condition")
        if st.kind == "evaluate" and st.params.get("step") == 0:
            base = st
            continue
        if cond in keep and base is not None:
            if base not in stages:
                stages.append(base)
            base = None
        if cond in keep or st.kind == "render":
            stages.append(st)
    plan.stages = stages
    plan.notes.append(f"conditions: only {', '.join(keep)}")
