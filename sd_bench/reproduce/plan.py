"""A plan: the stages that rebuild one paper table or figure at one scale (the data model and `--dry-run`).

    plan = build_plan(PlanRequest("table2", "smoke", sets=["eval.k=2"]))

`build_plan` resolves the scale (scale.py), asks the target's protocol (protocol.py) for its stages, prices
each from what it will run (cost.py) and gives it the one function of its kind (stages.FUNCTIONS); the
executor (execute.py) runs the plan.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sd_bench.reproduce import scale as scale_mod

TARGETS = ("table1", "table2", "table3") + tuple(f"figure{n}" for n in range(3, 9)) + ("ablations",)
KINDS = ("select", "generate", "train", "evaluate", "render")
REPO_ROOT = Path(__file__).resolve().parents[2]


class PlanError(RuntimeError):
    """A plan cannot be built or run; the message says which stage or setting and how to fix it."""


@dataclass
class Stage:
    name: str  # unique in a plan, e.g. "train/t2_sft_guided"
    kind: str  # select | generate | train | evaluate | render
    description: str
    inputs: tuple[str, ...] = ()  # paths under the output folder, or model / data references
    outputs: tuple[str, ...] = ()  # paths under the output folder; the stage is done when all exist
    model: str | None = None  # hub id@revision, an absolute folder, or a run folder under the output folder
    recipe: str | None = None
    params: dict[str, Any] = field(default_factory=dict)  # everything the stage function reads
    gpu_hours: float = 0.0
    disk_gb: float = 0.0
    est_seconds: float | None = None  # wall time on the scale's device, for the progress display
    basis: dict[str, Any] = field(default_factory=dict)  # what the estimate was computed from (cost.py)
    launch: str | None = None  # train stages on GPU: processes, strategy, rollouts, memory (train/launch.py)
    run: Any = None  # the stage function of `kind` (stages.FUNCTIONS), set by build_plan

    def __post_init__(self):
        if self.kind not in KINDS:
            raise PlanError(f"stage '{self.name}': kind '{self.kind}' is not one of {', '.join(KINDS)}")

    @property
    def model_shown(self) -> str | None:
        """The model as result files record it: repository folders relative to the repository."""
        if self.model and Path(self.model).is_absolute() and Path(self.model).is_relative_to(REPO_ROOT):
            return str(Path(self.model).relative_to(REPO_ROOT))
        return self.model


@dataclass
class Plan:
    target: str
    scale: Any  # scale.Scale
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
            "scale": self.scale.name,
            "settings": dataclasses.asdict(self.scale),
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
                    "model": s.model_shown,
                    "recipe": s.recipe,
                    "gpu_hours": round(s.gpu_hours, 3),
                    "disk_gb": round(s.disk_gb, 3),
                    "basis": s.basis,
                    "launch": s.launch,
                    "params": s.params,
                }
                for s in self.stages
            ],
        }


@dataclass
class PlanRequest:
    target: str  # "table2", "figure3", ...
    scale: str = "smoke"
    sets: list[str] = field(default_factory=list)  # `--set key=value`
    from_checkpoints: bool = False
    seed: int = 0
    manifest: str | None = None  # another manifest file than the scale's


def build_plan(req: PlanRequest) -> Plan:
    from sd_bench import manifest
    from sd_bench.reproduce import cost, protocol, stages
    from sd_bench.train.config import ConfigError

    if req.target not in TARGETS:
        raise PlanError(f"unknown target '{req.target}' (tables 1-3, figures 3-8)")
    try:
        sc = scale_mod.resolve(req.scale, req.sets)
    except ConfigError as exc:
        raise PlanError(str(exc)) from None
    path = Path(req.manifest or sc.manifest)  # relative to the working folder, else to the repository
    man = manifest.load(path if path.is_absolute() or path.is_file() else REPO_ROOT / path)
    graph = protocol.Builder(req, sc, man)
    protocol.PROTOCOLS[req.target](graph)
    plan = Plan(req.target, sc, graph.stages, graph.notes)
    if sc.conditions:
        protocol.only(plan, sc.conditions)
    for st in plan.stages:
        try:
            cost.estimate(st, sc)
        except ConfigError as exc:
            raise PlanError(f"stage '{st.name}': {exc}") from None
        st.run = stages.FUNCTIONS[st.kind]
    departures = [f"departure: {k}: {v}" for k, v in sc.departures.items()]  # field: why (scale.py)
    plan.notes = departures + plan.notes + cost.NOTES[sc.device]
    return plan


def render_plan(plan: Plan) -> str:
    """The --dry-run table: stages, models, recipes, outputs, GPU-hours and disk, with totals and notes."""
    from tabulate import tabulate

    cpu = plan.scale.device == "cpu"
    rows = []
    for i, s in enumerate(plan.stages, 1):
        more = f" (+{len(s.outputs) - 1})" if len(s.outputs) > 1 else ""
        outs = s.outputs[0] + more if s.outputs else "-"
        cost = f"{s.est_seconds or 0:,.0f}" if cpu else f"{s.gpu_hours:,.2f}"
        rows.append([i, s.name, s.model_shown or "-", s.recipe or "-", outs, cost, f"{s.disk_gb:,.2f}"])
    head = ["#", "stage", "model", "recipe", "outputs", "CPU s" if cpu else "GPU-h", "disk GB"]
    total = (
        f"total: ~{sum(s.est_seconds or 0 for s in plan.stages):,.0f} CPU seconds, {plan.disk_gb:,.2f} GB disk"
        if cpu
        else f"total: {plan.gpu_hours:,.1f} GPU-hours (H100), {plan.disk_gb:,.1f} GB disk"
    )
    lines = [
        f"plan: {plan.target}, scale {plan.scale.name}: {len(plan.stages)} stages",
        "",
        tabulate(rows, head, tablefmt="simple", disable_numparse=True),
        "",
        total,
        "",
    ]
    lines += [
        f"{s.name}: {s.description}" + (f"\n    launch: {s.launch}" if s.launch else "") for s in plan.stages
    ]
    lines += [""] + [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)
