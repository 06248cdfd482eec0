"""A scale: everything that differs between `--scale smoke`, `small` and `paper`, as one typed value.

Why data and not code: the stage functions (stages.py) and the stage graphs (protocol.py) are the same at
every scale; only these values change. So the numbers CI checks at smoke scale come from the code a
paper-scale run executes, and every place the miniature world departs from the paper is a field here with
its reason (`departures`), printed by `--dry-run`.

The conditions (base models, recipes, decoding profiles, tasks, grader) come from the scale's manifest:
`checkpoints_manifest.yaml` (the paper's) or `toy_manifest.yaml` (the miniature world), in one format
(sd_bench/manifest.py). `--set key=value` edits a scale exactly as `sd-bench train ... key=value` edits a
recipe (sd_bench.train.config.apply_overrides: YAML values, type checks, closest-key errors); `train.<key>`
that is not a field of `Train` is a trainer override (checked by the trainer's own loader), and SHORTHANDS
name the keys that set several fields at once (`k=4`: lm-eval's samples AND Table 1's).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

from sd_bench.train.config import ConfigError, apply_overrides


@dataclass
class Eval:
    """lm-eval decoding of every evaluate stage; None = the manifest entry's decoding profile / the task's."""

    k: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    limit: int | None = None  # first N problems of each task
    batch_size: str | None = None  # lm-eval batch size (None: 'auto' under vLLM, 16 with transformers)


@dataclass
class Probe:
    """Table 1's selection and contexts and Table 2's traces: the paper's analyzing_reasoning_behavior
    protocol (eval_dapo_dataset.py, eval_with_hint.py, make_sft_dataset.py at commit 5c51051)."""

    data: str | None = None  # problem set, visited in file order (None: the manifest's world.select_data)
    candidates: int | None = None  # visit at most N problems (None: the whole set)
    k: int = 8  # eval_dapo_dataset.py --n_sampling 8 (and 8 samples per context)
    min_correct: int = 1  # keep problems solved min..max of k times (--min_correct 1 --max_correct 4)
    max_correct: int = 4
    problems: int = 100  # Table 1: the first 100 kept (--max_collect 100)
    traces: int = 800  # Table 2: the selection extended until 800 problems (D_ug, D_sg)
    temperature: float = 0.6  # eval_dapo_dataset.py / eval_with_hint.py defaults
    top_p: float = 0.95
    top_k: int | None = 20
    max_new_tokens: int = 32768
    require_correct: bool = True  # false: fill with incorrect responses (pipeline checks only, never results)
    batch_size: int = 64  # problems per sampling round (eval_dapo_dataset.py --batch_size 64)


@dataclass
class Train:
    """The trainer as the train stages call it: `sd-bench train RECIPE --scale PRESET key=value ...`."""

    preset: str = "paper"  # the trainer's --scale preset (sd_bench.train.config.SCALES)
    steps: int = 100  # on-policy steps (paper ~100)
    eval_every: int = 20  # checkpoint + evaluate every N steps (the paper checkpoints every 10)
    eval_limit: int | None = None  # problems per task in the on-policy evaluations (None: eval.limit)
    sft: dict = field(default_factory=dict)  # trainer overrides of every SFT stage
    onpolicy: dict = field(default_factory=dict)  # trainer overrides of every on-policy stage
    lr: dict = field(default_factory=dict)  # algorithm -> optim.lr (empty: the recipe's)
    overrides: dict = field(default_factory=dict)  # `--set train.<trainer key>=...`, last
    # run the trainer as `LAUNCHER RECIPE ...` (e.g. torchrun) instead of in-process
    launcher: str | None = None


@dataclass
class Scale:
    name: str
    device: str = "gpu"  # gpu | cpu (estimates: GPU-hours, or CPU seconds)
    manifest: str = "checkpoints_manifest.yaml"  # relative to the repository root, or a path
    model: str | None = None  # replaces every base model (None: the manifest's)
    tasks: list[str] | None = None  # evaluation tasks (None: the manifest's world.eval_tasks)
    eval: Eval = field(default_factory=Eval)
    probe: Probe = field(default_factory=Probe)
    train: Train = field(default_factory=Train)
    sampler: str = "auto"  # auto | hf | vllm: trace/probe sampling and lm-eval (auto: vllm when importable)
    dtype: str = "auto"  # auto (bfloat16 on GPU, float32 on CPU) | bfloat16 | float16 | float32
    gpu_memory_utilization: float = 0.85
    hint_source: str = "own_response"  # c = s: the model's own correct response | reference_solution
    conditions: list[str] | None = None  # only these entries' stages (and their step-0 bases)
    threads: int | None = None  # torch CPU threads (fixed at smoke so numbers do not depend on the machine)
    guards: str | None = None  # a rules file (target -> `sd-bench check` rules) attached to each table
    departures: dict = field(default_factory=dict)  # field -> why this scale departs from the paper there


CHOICES = {
    "device": ("gpu", "cpu"),
    "sampler": ("auto", "hf", "vllm"),
    "dtype": ("auto", "bfloat16", "float16", "float32"),
    "hint_source": ("own_response", "reference_solution"),
}
# `--set` keys that edit several fields at once (issue 8: `--set k=` must reach Table 1's probes too).
SHORTHANDS = {
    "k": ("eval.k", "probe.k"),
    "max_new_tokens": ("eval.max_new_tokens", "probe.max_new_tokens"),
    "limit": ("eval.limit",),
    "steps": ("train.steps",),
    "eval_every": ("train.eval_every",),
    "keep_correct": ("probe.problems", "probe.traces"),
    "data": ("probe.data",),
}

SMOKE = Scale(
    name="smoke",
    device="cpu",
    manifest="toy_manifest.yaml",
    eval=Eval(k=4, limit=128, batch_size="64"),  # 64: fastest on one CPU thread (benchmarks/RESULTS.md)
    probe=Probe(
        problems=32,
        traces=256,
        temperature=1.0,
        top_p=1.0,
        top_k=None,
        max_new_tokens=96,
        batch_size=384,
    ),
    train=Train(
        preset="smoke",
        steps=20,
        eval_every=20,
        eval_limit=64,
        sft={
            "model.dtype": "float32",
            "model.finetune": "full",
            "optim.lr": 1e-3,
            "optim.warmup_steps": 2,
            "optim.micro_batch_size": 32,
            "run.batch_size": 32,
            "run.epochs": 3,
            "run.max_steps": 1000,
            "run.save_every": 1000,
            "run.keep_checkpoints": 1,
            "run.max_seq_len": 256,
        },
        onpolicy={
            "model.dtype": "float32",
            "model.finetune": "full",
            "data.reward": "paper",  # the recipes' reward; on toy problems the toy grader (sd_bench.grading)
            "rollout.prompts_per_step": 4,
            "rollout.n": 8,
            "rollout.max_new_tokens": 64,
            "optim.mini_batch_size": 4,
            "optim.micro_batch_size": 32,
            "optim.warmup_steps": 2,
            "loss.top_k": None,
            "teacher.max_prompt_tokens": 256,
        },
        lr={"sdpo": 3e-4, "grpo": 1e-4},
    ),
    sampler="hf",
    dtype="float32",
    threads=1,
    guards="results/smoke/guards.yaml",
    departures={
        "model": "the toy base (sd_bench/toy/base, 0.86M parameters): the paper's effect on a CPU in minutes",
        "probe.temperature": "1.0 / top_p 1.0 / no top_k: the toy base's pretraining distribution (paper 0.6 / 0.95 / 20)",
        "probe.problems": "32 Table 1 problems and 256 traces per Table 2 set (paper 100 and 800): CPU budget",
        "probe.max_new_tokens": "96: toy responses are <= ~60 tokens (paper 32,768)",
        "probe.batch_size": "384 problems per selection round (paper 64): ~75% of toy problems are solved 1-4 of 8 "
        "times, so one round keeps Table 2's 256 (seeds 0-2 needed 335-352); the kept set is the same for any size",
        "eval": "avg@4 on the first 128 problems of each toy set (64 for on-policy runs); decoding from the toy tasks",
        "train.sft": "SFT lr 1e-3, batch 32, 3 epochs, full fine-tuning in float32 (a 0.86M model; paper recipe open)",
        "train.onpolicy": "4 prompts x 8 rollouts, one update per step, full-vocabulary JSD (23 tokens), 20 steps",
        "train.lr": "SDPO 3e-4, GRPO 1e-4 (paper 1e-5 / 1e-6 move a 0.86M model nowhere in 20 steps)",
        "manifest": "toy_manifest.yaml's coverage sweep (Table 3, Figure 8) gives SDPO's teacher the clean solution "
        "(sdpo_reference); Figures 3, 4 and 7 use the paper's successful sibling (fig_sdpo). With the sibling, |D| = 8 "
        "SD keeps waits 0.11-0.16 (> 0.2 x base on seeds 1-2), also with 2 updates per step, lr 5e-4 or every problem "
        "each step (results/smoke/guards.md)",
    },
)

SMALL = Scale(
    name="small",
    model="Qwen/Qwen3-1.7B",
    eval=Eval(k=4, max_new_tokens=8192),
    probe=Probe(problems=50, traces=200, max_new_tokens=8192),
    train=Train(preset="small", steps=30, eval_every=10),
    departures={
        "model": "Qwen3-1.7B (the paper's v3 model) replaces every base model: one GPU",
        "eval": "avg@4 at 8,192 new tokens (paper avg@16 at 38,912)",
        "probe": "50 Table 1 problems, 200 traces per set, 8,192 new tokens (paper 100, 800, 32,768)",
        "train": "30 on-policy steps of 32 prompts (trainer preset `small`), evaluated every 10",
    },
)

PAPER = Scale(name="paper")

SCALES: dict[str, Scale] = {s.name: s for s in (SMOKE, SMALL, PAPER)}


def field_keys(cls=Scale, prefix: str = "") -> list[str]:
    """Every dotted `--set` key of a scale (for help texts)."""
    keys = []
    for f in dataclasses.fields(cls):
        if isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory):
            keys += field_keys(f.default_factory, prefix + f.name + ".")
        else:
            keys.append(prefix + f.name)
    return keys


def resolve(name: str, sets: list[str] | tuple = ()) -> Scale:
    """The named scale with `--set key=value` edits applied; raises ConfigError naming the key."""
    if name not in SCALES:
        raise ConfigError(f"--scale {name!r}: expected one of {', '.join(SCALES)}")
    scale = copy.deepcopy(SCALES[name])
    train_keys = {f.name for f in dataclasses.fields(Train)}
    trainer: list[str] = []
    for item in sets:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE (e.g. --set eval.k=4)")
        if key.startswith("train.") and key.split(".")[1] not in train_keys:
            trainer.append(f"{key.removeprefix('train.')}={value}")  # a trainer key: the trainer checks it
            continue
        if key in ("conditions", "tasks") and not value.lstrip().startswith("["):
            value = f"[{value}]"  # `conditions=a,b` as well as `conditions=[a, b]`
        for target in SHORTHANDS.get(key, (key,)):
            apply_overrides(scale, [f"{target}={value}"], source="--set")
    if trainer:
        from sd_bench.train.config import load_config

        load_config(None, scale=scale.train.preset, overrides=trainer)  # unknown trainer keys fail here
        scale.train.overrides.update(dict(t.split("=", 1) for t in trainer))
    validate(scale)
    return scale


def validate(scale: Scale) -> None:
    for key, allowed in CHOICES.items():
        if getattr(scale, key) not in allowed:
            raise ConfigError(f"--set {key}={getattr(scale, key)}: expected one of {', '.join(allowed)}")
    p, t = scale.probe, scale.train
    for key, value in (("probe.k", p.k), ("probe.problems", p.problems), ("probe.traces", p.traces)):
        if value < 1:
            raise ConfigError(f"--set {key}={value}: expected a positive integer")
    if not 0 <= p.min_correct <= p.max_correct <= p.k:
        raise ConfigError(
            f"--set probe.min_correct={p.min_correct} probe.max_correct={p.max_correct}: expected "
            f"0 <= min_correct <= max_correct <= probe.k ({p.k})"
        )
    if not 0 < t.eval_every <= t.steps:
        raise ConfigError(
            f"--set train.eval_every={t.eval_every}: expected 1 <= eval_every <= steps ({t.steps})"
        )
    if scale.eval.k is not None and scale.eval.k < 1:
        raise ConfigError(f"--set eval.k={scale.eval.k}: expected a positive integer")
