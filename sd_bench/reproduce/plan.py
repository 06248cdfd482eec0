"""Plans for `sd-bench reproduce`: the stages that rebuild one paper table or figure, and their executor.

A plan is a list of `Stage`s (train / generate / evaluate / render), each naming its inputs, its outputs
(paths under the output folder), the model and recipe, and an estimate of GPU-hours and disk. The executor
runs stages in order; a stage whose outputs exist and that finished before (a done-marker under
`DIR/.sd-bench/stages/`) is skipped, so rerunning the same command resumes and a crash loses at most the
stage in flight. Stages write their outputs atomically (`ctx.write_json`, `ctx.write_text`, `ctx.atomic_dir`).

Where stage implementations come from (the registry):

    from sd_bench.reproduce.plan import register, Stage

    @register("table2", "smoke")
    def table2_smoke(req: PlanRequest) -> list[Stage]:
        return [Stage("generate/t2_traces_unguided", "generate", "...", outputs=("traces/unguided.jsonl",),
                      run=my_generate), ...]

`build_plan(req)` uses the builder registered for (target, scale) when there is one; otherwise the
*protocol* builder below, which follows the paper's protocol from checkpoints_manifest.yaml and carries
estimates but no `run` callables: `--dry-run` prints it, and running it fails with one message naming
the stages that have no implementation. `IMPLEMENTATION_MODULES` are imported before planning so that
their `@register` calls take effect (add a module there to plug in implementations).

Estimates (documented assumptions; GPU = one H100 80GB, bf16):
- generation with vLLM at a saturated batch: 4,000 output tokens/s for 7-8B models, 10,000 for 1.7B;
- mean response tokens, thinking on: DAPO 13,000 (Table 1, unguided), solution-guided 2,000 (Table 1, c = s;
  Table 2's D_sg), AIME 14,000, AMC23 8,000, MATH500 4,000; thinking off: a quarter of these. Capped at the
  scale's max_new_tokens (on-policy rollouts at 20,480, the paper's training limit);
- training: 6 x params FLOPs per token (+2 x params for the SDPO teacher forward) at 35% of the H100's
  989 TFLOP/s dense bf16 peak;
- on-policy: 256 prompts x 8 rollouts per step (coverage sweep: 64 x 8), 100 steps; curves evaluated
  every 20 steps (the paper checkpoints every 10; we halve the evaluations), SFT: 3 epochs;
- disk: bf16 weights (2 bytes/param) per saved checkpoint (every 10 steps + final) and one fp32 optimizer
  state (12 bytes/param) for resume; traces and sample logs at 4 bytes per token.
These are for planning, not promises: an on-policy run is an upper bound because SDPO shortens responses.
"""

from __future__ import annotations

import importlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sd_bench import atomic
from sd_bench.tables import write_json_atomic, write_text_atomic

SCALES = ("smoke", "small", "paper")
TARGETS = ("table1", "table2", "table3") + tuple(f"figure{n}" for n in range(3, 9))
KINDS = ("train", "generate", "evaluate", "render")
# Modules that register stage implementations (imported before planning; absent modules are skipped).
IMPLEMENTATION_MODULES = ("sd_bench.reproduce.smoke", "sd_bench.reproduce.full")
STATE_DIR = ".sd-bench/stages"


class PlanError(RuntimeError):
    """A plan cannot be built or run; the message says which stage and how to fix it."""


@dataclass
class Stage:
    name: str  # unique in a plan, e.g. "train/t2_sft_guided"
    kind: str  # train | generate | evaluate | render
    description: str
    inputs: tuple[str, ...] = ()  # paths under the output folder (or model ids)
    outputs: tuple[str, ...] = ()  # paths under the output folder; the stage is done when all exist
    model: str | None = None  # hub id[@revision] or local path
    recipe: str | None = None
    gpu_hours: float = 0.0
    disk_gb: float = 0.0
    est_seconds: float | None = None  # wall time on the scale's device, for the progress display
    run: Callable[[StageContext], Any] | None = None
    params: dict[str, Any] = field(default_factory=dict)  # e.g. tasks, k, sampling, condition

    def __post_init__(self):
        if self.kind not in KINDS:
            raise PlanError(f"stage '{self.name}': kind '{self.kind}' is not one of {', '.join(KINDS)}")
        if self.est_seconds is None and self.gpu_hours:
            self.est_seconds = self.gpu_hours * 3600


@dataclass
class Plan:
    target: str
    scale: str
    stages: list[Stage]
    notes: list[str] = field(default_factory=list)

    @property
    def gpu_hours(self) -> float:
        return sum(s.gpu_hours for s in self.stages)

    @property
    def disk_gb(self) -> float:
        return sum(s.disk_gb for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "scale": self.scale,
            "gpu_hours": round(self.gpu_hours, 2),
            "disk_gb": round(self.disk_gb, 2),
            "notes": self.notes,
            "stages": [
                {
                    "name": s.name,
                    "kind": s.kind,
                    "description": s.description,
                    "inputs": list(s.inputs),
                    "outputs": list(s.outputs),
                    "model": s.model,
                    "recipe": s.recipe,
                    "gpu_hours": round(s.gpu_hours, 3),
                    "disk_gb": round(s.disk_gb, 3),
                    "params": s.params,
                    "implemented": s.run is not None,
                }
                for s in self.stages
            ],
        }


@dataclass
class PlanRequest:
    target: str  # "table2", "figure3", ...
    scale: str = "smoke"
    manifest: Any = None  # sd_bench.manifest.Manifest
    from_checkpoints: bool = False
    seed: int = 0
    out_dir: Path | None = None
    settings: dict[str, str] = field(default_factory=dict)  # `--set key=value` (sd_bench/reproduce/full.py)
    profile: ScaleProfile | None = None  # replaces PROFILES[scale] (full.py: `--set steps=N eval_every=N`)


# --- registry ----------------------------------------------------------------------------------------

BUILDERS: dict[tuple[str, str], Callable[[PlanRequest], list[Stage] | Plan]] = {}


def register(target: str, scale: str):
    """Decorator: `fn(req) -> list[Stage] | Plan` builds the runnable plan for (target, scale)."""
    if target not in TARGETS or scale not in SCALES:
        raise PlanError(
            f"register({target!r}, {scale!r}): target must be one of {TARGETS}, scale one of {SCALES}"
        )

    def deco(fn):
        BUILDERS[(target, scale)] = fn
        return fn

    return deco


def load_implementations() -> None:
    for name in IMPLEMENTATION_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # the module exists but one of its imports is missing: a real error
                raise


def build_plan(req: PlanRequest) -> Plan:
    if req.target not in TARGETS:
        raise PlanError(f"unknown target '{req.target}' (tables 1-3, figures 3-8)")
    if req.scale not in SCALES:
        raise PlanError(f"unknown scale '{req.scale}' ({', '.join(SCALES)})")
    if req.manifest is None:
        from sd_bench import manifest

        req.manifest = manifest.load()
    load_implementations()
    builder = BUILDERS.get((req.target, req.scale))
    plan = builder(req) if builder else protocol_plan(req)
    if not isinstance(plan, Plan):
        plan = Plan(req.target, req.scale, list(plan))
    names = [s.name for s in plan.stages]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PlanError(f"plan {req.target}/{req.scale}: duplicate stage names {dupes}")
    return plan


# --- scale profiles and estimates --------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleProfile:
    name: str
    device: str  # gpu | cpu
    model_override: str | None  # replaces every base model (None: the manifest's model)
    k: int | None  # samples per problem for evaluation (None: the manifest's decoding profile)
    max_new_tokens: int | None  # None: the manifest's decoding profile
    ood_tasks: tuple[str, ...]
    n_traces: int  # Table 2: correct traces kept per set
    probe_problems: int  # Table 1: problems with solve rate in [1/8, 4/8]
    probe_candidates: int  # Table 1: DAPO problems sampled to find them
    train_steps: int
    eval_every: int
    rollout_max_tokens: int
    prompt_fraction: float = 1.0  # prompts per step relative to the paper's (256; coverage sweep 64)


PROFILES = {
    "paper": ScaleProfile(
        "paper",
        "gpu",
        None,
        None,
        None,
        ("sd_aime24", "sd_aime25", "sd_amc23", "sd_math500"),
        800,
        100,
        600,
        100,
        20,
        20480,
    ),
    # issue 3's small scale: Qwen3-1.7B (the paper's v3 model) on one GPU with shorter generations.
    "small": ScaleProfile(
        "small",
        "gpu",
        "Qwen/Qwen3-1.7B",
        4,
        8192,
        ("sd_aime24", "sd_aime25", "sd_amc23", "sd_math500"),
        200,
        50,
        300,
        30,
        10,
        8192,
        1 / 4,
    ),
    # the toy world of issue 5 (sd_bench/toy/base), CPU.
    "smoke": ScaleProfile(
        "smoke",
        "cpu",
        "sd_bench/toy/base",
        4,
        64,
        ("sd_toy_id", "sd_toy_ood"),
        64,
        32,
        128,
        20,
        10,
        64,
        1 / 16,
    ),
}
PARAMS_B = {"r1-distill-qwen-7b": 7.6, "qwen3-8b": 8.2, "olmo-3-7b-instruct": 7.3, "qwen3-1.7b": 2.0}
TASK_PROBLEMS = {
    "sd_aime24": 30,
    "sd_aime25": 30,
    "sd_amc23": 40,
    "sd_math500": 500,
    "sd_toy_id": 256,
    "sd_toy_ood": 256,
}
THINK_TOKENS = {
    "dapo": 13000,
    "guided": 2000,
    "sd_aime24": 14000,
    "sd_aime25": 14000,
    "sd_amc23": 8000,
    "sd_math500": 4000,
    "sd_toy_id": 30,
    "sd_toy_ood": 40,
}
H100_PEAK_FLOPS, MFU = 989e12, 0.35
BYTES_PER_TOKEN_TEXT = 4
SMOKE_SECONDS = {"generate": 5.0, "train": 15.0, "evaluate": 5.0, "render": 1.0}


def _gen_tps(params_b: float) -> float:
    return 10000.0 if params_b <= 3 else 4000.0


def _tokens(kind: str, thinking: bool, cap: int | None) -> float:
    t = THINK_TOKENS.get(kind, 4000) * (1.0 if thinking else 0.25)
    return min(t, cap) if cap else t


def _gen_estimate(n_samples: float, tokens: float, params_b: float) -> tuple[float, float]:
    """(GPU-hours, disk GB) to generate and store n_samples responses of `tokens` tokens."""
    total = n_samples * tokens
    return total / _gen_tps(params_b) / 3600, total * BYTES_PER_TOKEN_TEXT / 1e9


def _train_estimate(tokens: float, params_b: float, teacher: bool) -> float:
    flops = (6 + (2 if teacher else 0)) * params_b * 1e9 * tokens
    return flops / (H100_PEAK_FLOPS * MFU) / 3600


def _ckpt_disk(params_b: float, n_ckpts: int) -> float:
    return params_b * (2 * n_ckpts + 12)  # GB: bf16 weights per checkpoint + one fp32 optimizer state


# --- protocol plans (from the manifest; no run callables) --------------------------------------------


class _Builder:
    def __init__(self, req: PlanRequest):
        self.req = req
        self.m = req.manifest
        self.p = getattr(req, "profile", None) or PROFILES[req.scale]
        self.stages: list[Stage] = []
        self.notes: list[str] = []
        self._names: set[str] = set()

    def add(self, stage: Stage) -> Stage:
        if stage.name not in self._names:
            if self.p.device == "cpu":  # smoke: no GPU hours, rough CPU seconds
                stage.gpu_hours, stage.disk_gb = 0.0, round(stage.disk_gb * 1e-3, 4)
                stage.est_seconds = SMOKE_SECONDS[stage.kind]
            self.stages.append(stage)
            self._names.add(stage.name)
        return stage

    def model(self, entry) -> tuple[str, float]:
        """(model reference, params in billions) for an entry at this scale."""
        if self.p.model_override:
            params = 0.001 if self.p.device == "cpu" else PARAMS_B.get("qwen3-1.7b", 2.0)
            return self.p.model_override, params
        bm = entry.base_model
        return f"{bm.id}@{bm.revision}", PARAMS_B.get(bm.key, 8.0)

    def decoding(self, entry) -> dict[str, Any]:
        d = entry.decoding
        return {
            "k": self.p.k or d.k,
            "temperature": d.temperature,
            "top_p": d.top_p,
            "max_new_tokens": self.p.max_new_tokens or d.max_new_tokens,
            "thinking": entry.thinking,
        }

    def evaluate(
        self,
        condition: str,
        entry,
        model_ref: str,
        step: int | None,
        tasks=None,
        inputs: tuple[str, ...] = (),
    ) -> Stage:
        tasks = tuple(tasks or self.p.ood_tasks)
        dec = self.decoding(entry)
        _, params = self.model(entry)
        n = sum(TASK_PROBLEMS.get(t, 100) for t in tasks) * dec["k"]
        toks = sum(
            TASK_PROBLEMS.get(t, 100) * dec["k"] * _tokens(t, entry.thinking, dec["max_new_tokens"])
            for t in tasks
        ) / max(n, 1)
        gpu_h, disk = _gen_estimate(n, toks, params)
        where = f"eval/{condition}" + ("" if step is None else f"/step-{step}")
        group = "sd_ood_math" if set(tasks) == set(PROFILES["paper"].ood_tasks) else None
        outs = tuple(f"{where}/{t}.json" for t in tasks + ((group,) if group else ()))
        return self.add(
            Stage(
                f"evaluate/{condition}" + ("" if step is None else f"@{step}"),
                "evaluate",
                f"lm-eval {group or ','.join(tasks)}: avg@{dec['k']}, T={dec['temperature']}, top_p={dec['top_p']}, "
                f"{dec['max_new_tokens']:,} new tokens, per-sample logs (markers)",
                inputs=inputs,
                outputs=outs + (f"{where}/samples.jsonl",),
                model=model_ref,
                gpu_hours=gpu_h,
                disk_gb=disk,
                params={"condition": condition, "tasks": list(tasks), "step": step, **dec},
            )
        )

    def train(self, entry, data_input: str | None = None) -> tuple[str, list[int], Stage | None]:
        """Train stage for an on-policy/SFT entry (or the released checkpoint): (model ref, eval steps, stage)."""
        ckpt = entry.released_checkpoint
        if self.req.from_checkpoints and ckpt is not None:
            return f"{ckpt.id}@{ckpt.revision}", [ckpt.step or self.p.train_steps], None
        if self.req.from_checkpoints:
            self.notes.append(f"{entry.id}: no released checkpoint; trained")
        model_ref, params = self.model(entry)
        run_dir = f"runs/{entry.id}"
        if entry.kind == "sft":
            kind = "guided" if entry.train_data == "traces_solution_guided" else "dapo"
            tokens = self.p.n_traces * _tokens(kind, entry.thinking, self.p.max_new_tokens) * 3
            gpu_h = _train_estimate(tokens, params, teacher=False)
            disk = params * 2  # final bf16 weights only (an SFT run is short enough to restart)
            steps = [None]
            desc = f"SFT ({entry.recipe}) on {self.p.n_traces} correct traces from {data_input}, 3 epochs"
        else:
            prompts = max(1, round((64 if entry.id.startswith("cov_") else 256) * self.p.prompt_fraction))
            rollouts = prompts * 8 * self.p.train_steps
            toks = _tokens("dapo", entry.thinking, self.p.rollout_max_tokens)
            gen_h, _ = _gen_estimate(rollouts, toks, params)
            gpu_h = gen_h + _train_estimate(rollouts * toks, params, teacher=entry.recipe != "grpo")
            disk = _ckpt_disk(params, self.p.train_steps // 10 + 1)
            steps = list(range(self.p.eval_every, self.p.train_steps + 1, self.p.eval_every))
            desc = (
                f"{entry.recipe}: {self.p.train_steps} steps x {prompts} prompts x 8 rollouts on "
                f"{entry.train_data}, metrics.jsonl, checkpoint every {self.p.eval_every} steps"
            )
        # model.path from the manifest's base model (or the scale's stand-in). The trainer's config has no
        # revision field yet, so the revision is recorded in the plan but not enforced at download.
        model_path = model_ref.rsplit("@", 1)[0]
        all_overrides = {"model.path": model_path, **entry.overrides}
        overrides = " ".join(f"{k}={v}" for k, v in entry.overrides.items())
        stage = self.add(
            Stage(
                f"train/{entry.id}",
                "train",
                desc + (f" [{overrides}]" if overrides else ""),
                inputs=(model_ref,) + ((data_input,) if data_input else ()),
                outputs=(f"{run_dir}/metrics.jsonl", f"{run_dir}/final"),
                model=model_ref,
                recipe=entry.recipe,
                gpu_hours=gpu_h,
                disk_gb=disk,
                params={
                    "condition": entry.id,
                    "overrides": all_overrides,
                    "seed": self.req.seed,
                    "steps": self.p.train_steps,
                },
            )
        )
        return f"{run_dir}/final", steps, stage

    def render(
        self, name: str, inputs: list[str], outputs: tuple[str, ...], desc: str, run=None, params=None
    ) -> Stage:
        return self.add(
            Stage(
                f"render/{name}",
                "render",
                desc,
                inputs=tuple(inputs),
                outputs=outputs,
                run=run,
                params=params or {},
            )
        )

    def curve_task(self, figure: int) -> str:
        """The task a figure's accuracy panel (or figure 4's marker deltas) reads."""
        if set(self.p.ood_tasks) == set(PROFILES["paper"].ood_tasks):
            return "sd_aime24" if figure == 4 else "sd_ood_math"  # the paper's wait deltas are on AIME24
        return self.p.ood_tasks[-1]


def _table1(b: _Builder) -> None:
    entries = b.m.in_group("table1")
    e0 = entries[0]
    model_ref, params = b.model(e0)
    p = b.p
    k = 8  # Table 1: 8 samples per problem (both for the solve-rate filter and each context)
    gh, disk = _gen_estimate(p.probe_candidates * k, _tokens("dapo", True, p.max_new_tokens), params)
    b.add(
        Stage(
            "generate/t1_select",
            "generate",
            f"sample {k} unguided responses for {p.probe_candidates} DAPO problems; keep {p.probe_problems} "
            "with solve rate in [1/8, 4/8] and one correct response per problem as s",
            inputs=(model_ref, "DAPO-Math-17k"),
            outputs=("probe/selection.jsonl",),
            model=model_ref,
            gpu_hours=gh,
            disk_gb=disk,
            params={"k": k, "solve_rate": [1 / 8, 4 / 8]},
        )
    )
    results = []
    for e in entries:
        src = "probe/t1_s.jsonl" if e.context == "y_r" else "probe/selection.jsonl"
        kind = "guided" if e.context in ("s", "y_r") else "dapo"
        gh, disk = _gen_estimate(p.probe_problems * k, _tokens(kind, True, p.max_new_tokens), params)
        ctx_desc = {
            "none": "the plain problem",
            "s": "hint prompt with s (think included)",
            "s_nothink": "hint prompt with s\\think",
            "y_r": "hint prompt with y_r, a correct c = s response",
        }
        b.add(
            Stage(
                f"generate/{e.id}",
                "generate",
                f"{k} samples x {p.probe_problems} problems, context: {ctx_desc[e.context]}",
                inputs=(src,),
                outputs=(f"probe/{e.id}.jsonl",),
                model=model_ref,
                gpu_hours=gh,
                disk_gb=disk,
                params={"context": e.context, **b.decoding(e), "k": k},
            )
        )
        results.append(f"eval/{e.id}/dapo_probe.json")
    b.add(
        Stage(
            "evaluate/t1",
            "evaluate",
            "grade (math-verify), length (model tokenizer), E(y) per context",
            inputs=tuple(f"probe/{e.id}.jsonl" for e in entries),
            outputs=tuple(results),
        )
    )
    b.render(
        "table1",
        results,
        ("table1.json", "table1.md", "table1.tex"),
        "Table 1: ours, paper, difference",
        run=render_table_run("1", [e.id for e in entries]),
    )


def _table2(b: _Builder) -> None:
    base, sft_ug, sft_sg = (b.m.entry(i) for i in ("t2_base", "t2_sft_unguided", "t2_sft_guided"))
    model_ref, params = b.model(base)
    n = b.p.n_traces
    gh, disk = _gen_estimate(n * 2, _tokens("dapo", True, b.p.max_new_tokens), params)  # ~50% correct
    b.add(
        Stage(
            "generate/t2_traces_unguided",
            "generate",
            f"sample unguided responses to DAPO problems (plain prompt); keep the first {n} correct (D_ug)",
            inputs=(model_ref, "DAPO-Math-17k"),
            outputs=("traces/unguided.jsonl",),
            model=model_ref,
            gpu_hours=gh,
            disk_gb=disk,
            params={"keep_correct": n, **b.decoding(base), "k": 1},
        )
    )
    gh, disk = _gen_estimate(n * 1.05, _tokens("guided", True, b.p.max_new_tokens), params)  # ~98% correct
    b.add(
        Stage(
            "generate/t2_traces_guided",
            "generate",
            f"regenerate with the hint prompt carrying the model's own correct solution s; keep {n} correct, "
            "stored with the plain prompt (D_sg)",
            inputs=("traces/unguided.jsonl",),
            outputs=("traces/solution_guided.jsonl",),
            model=model_ref,
            gpu_hours=gh,
            disk_gb=disk,
            params={"keep_correct": n, **b.decoding(base), "k": 1},
        )
    )
    results = []
    for e, data in (
        (None, None),
        (sft_ug, "traces/unguided.jsonl"),
        (sft_sg, "traces/solution_guided.jsonl"),
    ):
        if e is None:
            st = b.evaluate(base.id, base, model_ref, None)
        else:
            ref, _, _ = b.train(e, data)
            st = b.evaluate(e.id, e, ref, None, inputs=(ref,))
        results += [o for o in st.outputs if o.endswith(".json")]
    b.render(
        "table2",
        results,
        ("table2.json", "table2.md", "table2.tex"),
        "Table 2: base / SFT unguided / SFT solution-guided, ours beside the paper",
        run=render_table_run("2", [base.id, sft_ug.id, sft_sg.id]),
    )


def _base_condition(entry) -> str:
    """Condition id of an on-policy entry's step-0 evaluation (shared by entries with the same base)."""
    return (
        f"base_{re.sub(r'[^a-z0-9]+', '_', entry.base_model.key)}_{'think' if entry.thinking else 'nothink'}"
    )


def render_table_run(number: str, conditions: list[str], train_conditions: list[str] = ()):
    """Run callable of a `render/tableN` stage: the table from the DIR/eval results of `conditions` (+ the
    training scores for Table 3). Other conditions in DIR (another table's runs) are left out."""

    def run(ctx: StageContext) -> None:
        from sd_bench import tables

        for cond in train_conditions:
            r = tables.train_score_result(ctx.path(f"runs/{cond}/metrics.jsonl"), cond)
            if r is not None:
                ctx.write_json(f"eval/{cond}/train.json", r)
        tables.render_from_dir(
            number,
            ctx.out_dir,
            scale=ctx.scale,
            conditions=conditions,
            run_info={"seed": ctx.seed, "scale": ctx.scale},
        )

    return run


def render_figure_run(n: int, conditions: list[str], base_of: dict[str, str], task: str):
    """Run callable of a `render/figureN` stage: curves from runs/*/metrics.jsonl and DIR/eval, or (figure 4)
    per-marker deltas (result metrics `marker_<m>`) of each condition's last evaluation vs its step-0 base."""

    def run(ctx: StageContext) -> None:
        from sd_bench import plots, tables
        from sd_bench.markers import MARKERS

        results = tables.find_results(ctx.out_dir / "eval") if (ctx.out_dir / "eval").is_dir() else []
        latest = {}
        for r in sorted(results, key=lambda r: -1 if r.get("step") is None else r["step"]):
            if r["task"] == task:
                latest[r["condition"]] = r
        title = f"Figure {n} ({ctx.scale} scale, {task})"
        if n == 4:
            deltas = {}
            for c in conditions:
                run_r, base_r = latest.get(c), latest.get(base_of[c])
                if run_r is None or base_r is None:
                    continue
                base = {m: base_r["metrics"].get(f"marker_{m}", 0.0) for m in MARKERS}
                deltas[c] = plots.marker_deltas(
                    base, {m: run_r["metrics"].get(f"marker_{m}", 0.0) for m in MARKERS}
                )
            if not deltas:
                raise RuntimeError(
                    f"figure 4: no evaluations of {task} with a step-0 base under {ctx.out_dir}/eval"
                )
            plots.plot_marker_deltas(deltas, ctx.path("figure4"), title=title)
            return
        curves = plots.eval_curves(results, task)
        points = {}
        for c in conditions:
            base = [(0, v) for s, v in curves.get(base_of[c], []) if s == 0]
            points[c] = base + [p for p in curves.get(c, []) if p[0] != 0]
        runs = {
            c: ctx.path(f"runs/{c}/metrics.jsonl")
            for c in conditions
            if ctx.path(f"runs/{c}/metrics.jsonl").is_file()
        }
        plots.plot_training_curves(
            runs, ctx.path(f"figure{n}"), eval_points=points, eval_label=f"{task} avg@k", title=title
        )

    return run


def implement(plan: Plan | list[Stage], runs: dict[str, Callable[[StageContext], Any]]) -> Plan | list[Stage]:
    """Give every stage without a run callable the one registered for its kind (train/generate/evaluate/
    render). The usual way to make a protocol plan runnable:

        @register("table2", "smoke")
        def table2_smoke(req):
            return implement(protocol_plan(req), {"generate": gen, "train": train, "evaluate": evaluate})

    Each callable reads what it needs from `ctx.stage` (name, inputs, outputs, model, recipe, params).
    """
    for stage in plan.stages if isinstance(plan, Plan) else plan:
        if stage.run is None and stage.kind in runs:
            stage.run = runs[stage.kind]
    return plan


def _onpolicy(b: _Builder, entries, with_train_score: bool = False) -> list[str]:
    """Train (or fetch) each entry, evaluate its step-0 base once per (model, thinking) and its checkpoints."""
    results = []
    for e in entries:
        model_ref, _ = b.model(e)
        base_cond = (
            f"base_{re.sub(r'[^a-z0-9]+', '_', e.base_model.key)}_{'think' if e.thinking else 'nothink'}"
        )
        st = b.evaluate(base_cond, e, model_ref, 0)
        results += [o for o in st.outputs if o.endswith(".json")]
        ref, steps, tr = b.train(e, e.train_data)
        for s in steps:
            ckpt = ref if (tr is None or s == steps[-1]) else f"runs/{e.id}/checkpoint-{s}"
            st = b.evaluate(e.id, e, ckpt, s, inputs=(ckpt,))
            results += [o for o in st.outputs if o.endswith(".json")]
    return results


def _table3(b: _Builder) -> None:
    results = _onpolicy(b, b.m.in_group("table3"))
    b.render(
        "table3",
        results + [f"runs/{e.id}/metrics.jsonl" for e in b.m.in_group("table3")],
        ("table3.json", "table3.md", "table3.tex"),
        "Table 3: the paper's descriptive coverage columns + measured sweep (final train score, OOD acc)",
        run=render_table_run(
            "3",
            [_base_condition(b.m.in_group("table3")[0])] + [e.id for e in b.m.in_group("table3")],
            [e.id for e in b.m.in_group("table3")],
        ),
    )


def _figure(n: int):
    def build(b: _Builder) -> None:
        entries = b.m.in_group(f"figure{n}")
        results = _onpolicy(b, entries)
        base_of = {e.id: _base_condition(e) for e in entries}
        what = (
            "per-marker epistemic deltas vs base (bar chart from sample logs)"
            if n == 4
            else "training score, response length, E(y) and OOD accuracy over steps"
        )
        b.render(
            f"figure{n}",
            results + [f"runs/{e.id}/metrics.jsonl" for e in entries],
            (f"figure{n}.png", f"figure{n}.svg"),
            f"Figure {n}: {what}",
            run=render_figure_run(n, [e.id for e in entries], base_of, b.curve_task(n)),
        )

    return build


PROTOCOL: dict[str, Callable[[_Builder], None]] = {
    "table1": _table1,
    "table2": _table2,
    "table3": _table3,
    **{f"figure{n}": _figure(n) for n in range(3, 9)},
}


def protocol_plan(req: PlanRequest) -> Plan:
    b = _Builder(req)
    PROTOCOL[req.target](b)
    p = b.p
    notes = [
        f"scale {p.name}: "
        + {
            "paper": "the paper's models and settings (manifest decoding: k, temperature, top_p, max tokens)",
            "small": f"every model replaced by {p.model_override}, k={p.k}, max {p.max_new_tokens} new tokens, "
            f"{p.n_traces} traces, {p.train_steps} steps",
            "smoke": f"the toy world ({p.model_override}) on CPU; estimates are rough CPU seconds",
        }[p.name],
        "estimates: see sd_bench/reproduce/plan.py docstring (H100, vLLM, 35% MFU)",
        "disk assumes every checkpoint is kept (trainer run.keep_checkpoints=null); cap it with run.keep_checkpoints",
    ]
    return Plan(req.target, req.scale, b.stages, notes + b.notes)


# --- execution ---------------------------------------------------------------------------------------


@dataclass
class StageContext:
    """What a stage's `run` gets: where to write, the seed and scale, and a progress callback."""

    out_dir: Path
    stage: Stage
    seed: int
    scale: str
    manifest: Any = None
    report: Callable[..., None] = lambda done, total=None, note="": None

    def path(self, rel: str) -> Path:
        return self.out_dir / rel

    def write_json(self, rel: str, data: Any) -> Path:
        return write_json_atomic(self.path(rel), data)

    def write_text(self, rel: str, text: str) -> Path:
        return write_text_atomic(self.path(rel), text)

    def atomic_dir(self, rel: str):
        """Yield a temporary folder; on success it replaces `rel` in one rename (no half-written folder)."""
        return atomic.atomic_dir(self.path(rel))


def _marker(out_dir: Path, stage: Stage) -> Path:
    return out_dir / STATE_DIR / (re.sub(r"[^A-Za-z0-9_.@-]+", "__", stage.name) + ".json")


def is_done(out_dir: Path, stage: Stage) -> bool:
    return _marker(out_dir, stage).is_file() and all((out_dir / o).exists() for o in stage.outputs)


def missing_implementations(plan: Plan) -> list[str]:
    return [s.name for s in plan.stages if s.run is None]


def execute(plan: Plan, out_dir: Path | str, *, seed: int = 0, manifest: Any = None, progress=None) -> dict:
    """Run the plan's stages in order, skipping finished ones; returns {"ran": [...], "skipped": [...]}.

    Raises PlanError before running anything when a stage has no implementation, and PlanError naming the
    stage when one fails or does not write all its outputs (the done-marker is written only after that).
    """
    out_dir = Path(out_dir)
    missing = missing_implementations(plan)
    if missing:
        raise PlanError(
            f"no implementation for {len(missing)} stage(s) of {plan.target} at scale {plan.scale}: "
            f"{', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}. Stage implementations exist only where "
            "a builder is registered for (target, scale) (see sd_bench/reproduce/plan.py); use --dry-run to see "
            "the plan, or --scale smoke where it is implemented."
        )
    from sd_bench.reproduce.progress import Progress

    progress = progress or Progress([s.est_seconds for s in plan.stages])
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / ".sd-bench" / f"plan-{plan.target}.json", plan.to_dict())
    ran, skipped = [], []
    for i, stage in enumerate(plan.stages):
        if is_done(out_dir, stage):
            progress.skip_stage(i, stage.name)
            skipped.append(stage.name)
            continue
        progress.start_stage(i, stage.name)
        ctx = StageContext(out_dir, stage, seed, plan.scale, manifest, report=progress.update)
        t0 = time.monotonic()
        try:
            stage.run(ctx)
        except Exception as exc:
            progress.end_stage(ok=False)
            raise PlanError(
                f"stage '{stage.name}' failed: {type(exc).__name__}: {exc}. Finished stages are kept; "
                "rerun the same command to resume from this stage."
            ) from exc
        absent = [o for o in stage.outputs if not (out_dir / o).exists()]
        if absent:
            progress.end_stage(ok=False)
            raise PlanError(f"stage '{stage.name}' finished without writing {', '.join(absent)}")
        write_json_atomic(
            _marker(out_dir, stage),
            {
                "stage": stage.name,
                "wall_time_s": round(time.monotonic() - t0, 3),
                "seed": seed,
                "outputs": list(stage.outputs),
            },
        )
        progress.end_stage(ok=True)
        ran.append(stage.name)
    return {"ran": ran, "skipped": skipped}


def render_plan(plan: Plan) -> str:
    """The --dry-run table: stages, models, recipes, outputs, GPU-hours and disk, with totals."""
    from tabulate import tabulate

    rows = []
    for i, s in enumerate(plan.stages, 1):
        outs = (
            s.outputs[0] + (f" (+{len(s.outputs) - 1})" if len(s.outputs) > 1 else "") if s.outputs else "-"
        )
        rows.append(
            [
                i,
                s.name,
                s.kind,
                s.model or "-",
                s.recipe or "-",
                outs,
                f"{s.gpu_hours:,.2f}",
                f"{s.disk_gb:,.1f}",
                "yes" if s.run else "no",
            ]
        )
    table = tabulate(
        rows,
        ["#", "stage", "kind", "model", "recipe", "outputs", "GPU-h", "disk GB", "impl"],
        tablefmt="simple",
        disable_numparse=True,
    )
    lines = [
        f"plan: {plan.target}, scale {plan.scale}: {len(plan.stages)} stages",
        "",
        table,
        "",
        f"total: {plan.gpu_hours:,.1f} GPU-hours (H100), {plan.disk_gb:,.1f} GB disk",
    ]
    lines += [""] + [f"{s.name}: {s.description}" for s in plan.stages]
    if plan.notes:
        lines += [""] + [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


def plan_json(plan: Plan) -> str:
    return json.dumps(plan.to_dict(), indent=2)
