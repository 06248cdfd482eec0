"""Training configuration: typed dataclasses from a recipe YAML, a scale preset and `key=value` overrides.

Why dataclasses and not a dict tree: every field has a type, a default that cites the paper, and one place
where it is checked. Precedence (later wins): dataclass defaults (the paper's values, PAPER.md "Training
recipes") < the recipe file < the scale preset (`--scale smoke|small`) < command-line `key=value`
overrides (dotted keys, e.g. `teacher.context=answer optim.lr=1e-5`). An unknown key is one error that names
the file and the closest valid key; a wrong type or a bad value names the file and the field.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"


class ConfigError(ValueError):
    """A recipe or override that cannot be used; the message names the file, the field and the fix."""


@dataclass
class ModelConfig:
    # hub id or local folder; "tiny" builds sd_bench.tiny_model into <output>/tiny-model (smoke scale)
    path: str = "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"
    # compute dtype of every forward/backward, and the dtype of final/ (log-softmax is always fp32)
    dtype: str = "bfloat16"  # float32 | bfloat16
    # dtype of the weights that train (full FT: the whole model; LoRA: the adapters over a `dtype` base), of
    # AdamW's state, the EMA teacher and checkpoint-*/ (so resume is exact). Paper: float32 masters with bf16
    # compute [verl/workers/fsdp_workers.py: actor in fp32, FSDP MixedPrecision(param=bf16, reduce=fp32)].
    # = dtype: no master copy (pure bf16 AdamW: at lr 1e-6 most updates round away; not the paper)
    master_dtype: str = "float32"  # float32 | bfloat16
    # liger-kernel's fused RMSNorm / RoPE / SwiGLU (CUDA, `pip install liger-kernel`); not in the paper
    liger: bool = False
    finetune: str = "full"  # full | lora (the paper fine-tunes fully)
    lora_rank: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    gradient_checkpointing: bool = False
    # chat-template kwargs, e.g. {"enable_thinking": false} for Qwen3-8B thinking off (Sec. 6.2)
    template_kwargs: dict = field(default_factory=dict)


@dataclass
class DataConfig:
    # a set name for sd_bench.data.load_problems ("dapo_math_17k", "dapo_seen_64", ...), "smoke" (8 built-in
    # arithmetic problems), or a JSONL of {id, question|prompt, answer, solution} (SFT: {prompt|question, response})
    name: str = "dapo_math_17k"
    max_problems: int | None = None  # keep only the first N (after loading, before shuffling)
    # false (the paper): train on the file's rows as they are, repeats included, sampled at random (verl
    # RLHFDataset + RandomSampler over data/math/train.parquet = the Hub's dapo-math-17k.parquet, whose
    # rows repeat each problem ~100 times). true: one row per distinct problem (sd_bench.data.parse_dapo)
    dedupe: bool = False
    # drop problems whose chat-rendered prompt (template + generation prompt) is longer than this many
    # tokens (null = keep all); paper: verl data.max_prompt_length 2048 with filter_overlong_prompts true
    # (verl/trainer/config/user.yaml; verl/utils/dataset/rl_dataset.py maybe_filter_out_long_prompts)
    max_prompt_tokens: int | None = 2048
    # reward (sd_bench.train.onpolicy.reward): "paper" = the paper's training reward for math problems
    # (sd_bench.reward.paper_reward: the last \\boxed{ within the last 100 characters, equal to the gold or
    # math-verify-equal; verl/utils/reward_score/feedback/math.py), other kinds (toy) by their own checker
    # (sd_bench.grading); "grade" = sd-bench's evaluation checker (sd_bench.grading, math-verify after the
    # last </think>; an option); "contains_answer" = 1 when the gold answer string occurs in the response:
    # a SMOKE-TEST reward so a random tiny model gets some successes
    reward: str = "paper"


@dataclass
class RolloutConfig:
    backend: str = "hf"  # hf (transformers generate) | vllm (sd_bench.train.rollout_vllm)
    prompts_per_step: int = 256  # paper: 256 prompts x 8 rollouts per step
    n: int = 8
    temperature: float = 1.0  # paper: rollout temperature 1.0
    top_p: float = 1.0
    # keep only the k most probable tokens before top-p (vLLM's / HF's order); null = off. Paper training:
    # verl's rollout default top_k -1 (off); its Table 1 probes use 20 (sd_bench.reproduce)
    top_k: int | None = None
    max_new_tokens: int = 20480  # paper: max response 20,480
    # rollout.backend=vllm only (sd_bench.train.rollout_vllm). Fraction of each GPU vLLM may take (weights +
    # KV cache) beside the trainer [paper: verl rollout.yaml gpu_memory_utilization 0.5; sdpo.yaml keeps it]
    gpu_memory_utilization: float = 0.5
    # vLLM's context (prompt + response); null = the model's max_position_embeddings (smaller = less KV cache)
    max_model_len: int | None = None
    # free vLLM's weights and KV cache between rollouts (vLLM sleep mode, level 1; the paper's verl frees the
    # KV cache the same way: rollout.yaml free_cache_engine true). GPU only: on CPU a no-op with one note
    vllm_sleep: bool = False
    # LoRA into vLLM: adapter = load the trained adapter each sync (LoRARequest; the base loads once) |
    # merge = W + s B A fed as dense weights (no LoRA kernels; needs no enable_lora)
    vllm_lora_mode: str = "adapter"


@dataclass
class TeacherConfig:
    # none | answer | reference_solution | sibling | sibling_nothink | regenerated (PAPER.md "Teacher contexts")
    context: str = "sibling"
    mode: str = "frozen"  # frozen (paper: EMA rate 0.0) | ema | live
    ema_rate: float = 0.05  # used when mode = ema (paper's ablation: 0.05)
    max_prompt_tokens: int = 22528  # paper: max teacher prompt 22,528, truncated on the right
    success_threshold: float = 0.5  # a sibling is successful when its reward >= 0.5 (paper)
    regenerate_max_new_tokens: int | None = None  # c = y_r: defaults to rollout.max_new_tokens


@dataclass
class LossConfig:
    # jsd (generalized JSD, top-k + tail or full vocabulary) | sampled_token (reverse-KL surrogate on the
    # sampled token; needs alpha = 1). GRPO always uses the clipped policy loss.
    kind: str = "jsd"
    alpha: float = 0.5  # generalized JSD: 0 forward KL(T||S), 1 reverse KL(S||T); paper 0.5
    top_k: int | None = 100  # student's top-k + one tail bucket (paper 100); null = full vocabulary
    is_clip: float = 2.0  # importance-ratio clip (paper 2)
    chunk_size: int = 1024  # tokens per chunk of the [tokens, vocab] log-softmax
    clip_low: float = 0.2  # GRPO (paper 0.2 / 0.28)
    clip_high: float = 0.28
    # GRPO dual clip: a negative-advantage token's loss is capped at -A * c (verl core_algos.py
    # compute_policy_loss_vanilla, actor.yaml clip_ratio_c: 3.0); null = off
    clip_ratio_c: float | None = 3.0
    # seq_mean_token_mean (paper: verl dp_actor.py update_policy, one sequence per micro-batch, agg_loss
    # token-mean, / gradient accumulation) = the mean over ALL rollouts of a mini-batch of each sequence's
    # token-mean | token_mean (option: one token-mean over the mini-batch's tokens). sdpo and grpo
    # (losses.aggregation_weights)
    aggregation: str = "seq_mean_token_mean"
    # rollout correction: token = multiply each token's loss by min(pi_old / pi_rollout, threshold) (paper:
    # sdpo.yaml / baseline_grpo.yaml rollout_correction.rollout_is: token, rollout_is_threshold: 2.0) | none
    rollout_is: str = "token"
    rollout_is_threshold: float = 2.0
    # remedy (not in the paper): leave the tokens of epistemic markers (sd_bench.markers.MARKERS) out of the
    # SD loss (mask 0; the token-mean denominator is unchanged). sdpo only.
    exclude_markers: bool = False
    # remedy 2 (not in the paper): also leave out every response position where the student's sampling
    # distribution puts at least this probability on marker tokens (where hedging is a live choice: the SD
    # gradient there moves probability away from "wait" even when another token was sampled). null = off
    marker_mass_threshold: float | None = None


@dataclass
class OptimConfig:
    lr: float = 1e-5  # paper: 1e-5 SDPO, 1e-6 GRPO
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 1.0
    # lr x step/warmup_steps for steps 0..warmup_steps-1 (lr 0 at step 0), then constant: verl's
    # get_constant_schedule_with_warmup with optim.lr_warmup_steps=10 (sd_bench.train.runtime.warmup_factor)
    warmup_steps: int = 10
    mini_batch_size: int = 128  # prompts per optimizer update (paper 128 of 256 -> 2 updates per step)
    micro_batch_size: int = 4  # sequences per forward/backward (gradient accumulation); memory only


@dataclass
class RunConfig:
    max_steps: int = 100  # paper: ~100 steps
    save_every: int = 10  # paper: checkpoints every 10 steps
    keep_checkpoints: int | None = None  # keep the last N checkpoint-<step>/ folders; null keeps all
    seed: int = 0
    epochs: int = 1  # sft only: passes over the traces file (max_steps still caps)
    batch_size: int = 32  # sft only: sequences per optimizer step
    max_seq_len: int = 32768  # sft only: longer traces are truncated on the right
    log_wandb: bool = False  # log to wandb / tensorboard when installed and enabled
    log_tensorboard: bool = False
    log_trackio: bool = False  # trackio (local-first, offline): <output>/trackio unless TRACKIO_DIR is set


@dataclass
class DistributedConfig:
    # Used when launched with several processes (torchrun / accelerate launch); one process ignores it.
    # auto = ddp for LoRA (only the adapter is trained; a full replica per process is cheap), fsdp for full
    # fine-tuning (FSDP2 `fully_shard` per decoder layer + root: parameters, gradients and AdamW state sharded).
    strategy: str = "auto"  # auto | ddp | fsdp
    find_unused_parameters: bool = False  # ddp: set true only if some trainable weight gets no gradient


@dataclass
class TrainConfig:
    algorithm: str = "sdpo"  # sdpo | grpo | sft
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


# Allowed values of the string fields (checked after every merge).
CHOICES: dict[str, tuple[str, ...]] = {
    "algorithm": ("sdpo", "grpo", "sft"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.master_dtype": ("float32", "bfloat16", "float16"),
    "model.finetune": ("full", "lora"),
    "data.reward": ("paper", "grade", "contains_answer"),
    "rollout.backend": ("hf", "vllm"),
    "rollout.vllm_lora_mode": ("adapter", "merge"),
    "teacher.context": ("none", "answer", "reference_solution", "sibling", "sibling_nothink", "regenerated"),
    "teacher.mode": ("frozen", "ema", "live"),
    "loss.kind": ("jsd", "sampled_token"),
    "loss.aggregation": ("seq_mean_token_mean", "token_mean"),
    "loss.rollout_is": ("token", "none"),
    "distributed.strategy": ("auto", "ddp", "fsdp"),
}

# Scale presets, applied on top of the recipe. `paper` changes nothing: the recipes hold the paper's values.
SCALES: dict[str, dict] = {
    # tiny random local model, 8 arithmetic problems, CPU: a few seconds a step
    "smoke": {
        "model": {"path": "tiny", "dtype": "float32", "lora_rank": 8, "lora_alpha": 16},
        "data": {"name": "smoke", "reward": "contains_answer", "max_problems": None},
        "rollout": {"prompts_per_step": 2, "n": 4, "max_new_tokens": 24, "backend": "hf"},
        "teacher": {"max_prompt_tokens": 256, "regenerate_max_new_tokens": 24},
        "loss": {"top_k": 16, "chunk_size": 64},
        # no warmup: a 2-step run would otherwise spend its first step at lr 0
        "optim": {"mini_batch_size": 2, "micro_batch_size": 4, "warmup_steps": 0},
        "run": {"max_steps": 2, "save_every": 1, "batch_size": 4, "max_seq_len": 256},
    },
    # Qwen3-1.7B (the paper's v3 model) on one GPU: shorter generations, smaller batch
    "small": {
        "model": {"path": "Qwen/Qwen3-1.7B", "dtype": "bfloat16"},
        "rollout": {"prompts_per_step": 32, "n": 8, "max_new_tokens": 4096},
        "teacher": {"max_prompt_tokens": 8192},
        "optim": {"mini_batch_size": 16, "micro_batch_size": 2},
        "run": {"max_steps": 100, "save_every": 10},
    },
    "paper": {},
}


def field_names(cls=TrainConfig, prefix: str = "") -> list[str]:
    """All dotted keys of the config tree (for error hints)."""
    names = []
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if dataclasses.is_dataclass(
            f.default_factory if f.default_factory is not dataclasses.MISSING else None
        ):
            names.extend(field_names(f.default_factory, key + "."))
        else:
            names.append(key)
    return names


def _closest(key: str, root=None) -> str:
    valid = field_names(root or TrainConfig)
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    leaf = difflib.get_close_matches(key.split(".")[-1], [v.split(".")[-1] for v in valid], n=1, cutoff=0.6)
    if leaf:  # prefer a key whose last part matches (e.g. `lr` -> `optim.lr`)
        same_leaf = [v for v in valid if v.split(".")[-1] == leaf[0]]
        match = difflib.get_close_matches(key, same_leaf, n=1, cutoff=0.0) or same_leaf[:1]
    return match[0] if match else valid[0]


def _check_type(value, annotation, where: str):
    """Coerce/validate `value` against a field annotation; ints are accepted for floats."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {annotation}, got {value!r}")
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if annotation is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if annotation is bool and isinstance(value, bool):
        return value
    if annotation is str and isinstance(value, str):
        return value
    if origin is list and isinstance(value, list):
        return [_check_type(v, args[0], where) for v in value] if args else value
    if (annotation is dict or origin is dict) and isinstance(value, dict):
        return value
    raise ConfigError(f"{where}: expected {getattr(annotation, '__name__', annotation)}, got {value!r}")


def _merge(obj, values: dict, source: str, prefix: str = "", root=None) -> None:
    """Set fields of dataclass `obj` from a nested dict, validating keys and types. `root`: the dataclass
    whose keys an unknown key is matched against (default: `obj`'s own type; sd_bench.reproduce.scale
    edits its `Scale` with the same machinery)."""
    root = root or type(obj)
    if not isinstance(values, dict):
        raise ConfigError(
            f"{source}: `{prefix.rstrip('.') or 'top level'}` must be a mapping, got {values!r}"
        )
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        dotted = prefix + str(key)
        if key not in names:
            raise ConfigError(f"{source}: unknown key `{dotted}`; did you mean `{_closest(dotted, root)}`?")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, source, dotted + ".", root)
        else:
            setattr(obj, key, _check_type(value, hints[key], f"{source}: field `{dotted}`"))


def _nest(dotted: str, value) -> dict:
    out: dict = {}
    node = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def parse_override(item: str) -> tuple[str, object]:
    """`key=value` with the value parsed as YAML (so `1e-5`, `true`, `null`, `[a, b]` work)."""
    if "=" not in item:
        raise ConfigError(f"command line: override `{item}` is not key=value (e.g. optim.lr=1e-5)")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"command line `{item}`: the value is not valid YAML ({yaml_problem(exc)}); quote it, e.g. "
            f"{key.strip()}='\"{raw}\"'"
        ) from None
    return key.strip(), value


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where (PyYAML's own message spans several lines)."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def read_recipe(path: Path) -> dict:
    """The recipe file's top-level mapping; an empty file, a list, bad YAML or non-UTF-8 bytes are one
    ConfigError naming the file."""
    from sd_bench.jsonl import decode_utf8

    text = decode_utf8(path, path.read_bytes(), ConfigError)
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(exc)}") from None
    if tree is None:
        raise ConfigError(
            f"{path}: the recipe is empty; give at least `algorithm: sdpo|grpo|sft` (see recipes/*.yaml)"
        )
    if not isinstance(tree, dict):
        raise ConfigError(
            f"{path}: the recipe's top level must be a mapping of sections (algorithm, model, data, ...), "
            f"got a {type(tree).__name__}"
        )
    return tree


def apply_overrides(obj, items, source: str = "command line") -> None:
    """`key=value` edits of any config dataclass `obj` (TrainConfig, sd_bench.reproduce.scale.Scale): the
    same parsing, type checks and closest-key errors as a recipe's overrides."""
    for item in items:
        key, value = parse_override(item)
        _merge(obj, _fix_numbers(_nest(key, value), type(obj)), f"{source} `{item}`")


def _yaml_number(value):
    # PyYAML reads `1e-5` (no dot) as a string; accept it as the number it obviously is.
    if isinstance(value, str):
        try:
            return float(value) if any(c in value.lower() for c in "e.") else value
        except ValueError:
            return value
    return value


def _fix_numbers(tree, cls=TrainConfig):
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in tree.items():
        hint = hints.get(key)
        if isinstance(value, dict) and hint is not None and dataclasses.is_dataclass(hint):
            out[key] = _fix_numbers(value, hint)
        elif hint is not None and float in (typing.get_args(hint) or (hint,)):
            out[key] = _yaml_number(value)
        else:
            out[key] = value
    return out


def resolve_recipe(recipe: str) -> Path:
    """A recipe name (`sdpo` -> recipes/sdpo.yaml) or a YAML path."""
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"recipe file {path} does not exist")
        return path
    candidate = RECIPES_DIR / f"{recipe}.yaml"
    if candidate.is_file():
        return candidate
    names = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
    hint = difflib.get_close_matches(recipe, names, n=1)
    raise ConfigError(
        f"unknown recipe `{recipe}`: not a file and not in {RECIPES_DIR}"
        + (f"; did you mean `{hint[0]}`?" if hint else f"; available: {', '.join(names)}")
    )


def load_config(
    recipe: str | Path | None = None, *, scale: str = "paper", overrides: list[str] | tuple = ()
) -> TrainConfig:
    """Defaults < recipe YAML < scale preset < `key=value` overrides, validated at every layer."""
    cfg = TrainConfig()
    if recipe is not None:
        path = resolve_recipe(str(recipe))
        tree = read_recipe(path)
        _merge(cfg, _fix_numbers(tree), str(path))
        validate(cfg, str(path))
    if scale not in SCALES:
        raise ConfigError(f"--scale {scale!r}: expected one of {', '.join(SCALES)}")
    _merge(cfg, SCALES[scale], f"scale preset `{scale}`")
    for item in overrides:
        key, value = parse_override(item)
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"command line `{item}`: empty key; write key=value, e.g. optim.lr=1e-5")
        _merge(cfg, _fix_numbers(_nest(key, value)), f"command line `{item}`")
    validate(cfg, f"command line overrides {' '.join(overrides)}" if overrides else f"scale preset `{scale}`")
    return cfg


# Allowed range of every numeric field, checked after every merge (text: what the error says). A nullable
# field's null passes (its meaning is in the field's comment). New numeric fields: add a row; every float,
# listed or not, must be finite.
_GE1, _GE0, _GT0 = (lambda v: v >= 1, ">= 1"), (lambda v: v >= 0, ">= 0"), (lambda v: v > 0, "> 0")
_UNIT = (lambda v: 0.0 <= v <= 1.0, "in [0, 1]")
RANGES: dict[str, tuple] = {
    "model.lora_rank": _GE1,
    "model.lora_alpha": _GT0,
    "model.lora_dropout": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "data.max_problems": (_GE1[0], ">= 1 or null (all)"),
    "data.max_prompt_tokens": (_GE1[0], ">= 1 or null (no filter)"),
    "rollout.prompts_per_step": _GE1,
    "rollout.n": _GE1,
    "rollout.temperature": (_GT0[0], "> 0 (sampling; the paper trains at 1.0)"),
    "rollout.top_p": (lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    "rollout.top_k": (_GE1[0], ">= 1 or null (off)"),
    "rollout.max_new_tokens": _GE1,
    "rollout.gpu_memory_utilization": (lambda v: 0.0 < v <= 1.0, "in (0, 1] (fraction of a GPU)"),
    "rollout.max_model_len": (_GE1[0], ">= 1 or null (the model's context)"),
    "teacher.ema_rate": _UNIT,
    "teacher.max_prompt_tokens": _GE1,
    "teacher.success_threshold": _UNIT,
    "teacher.regenerate_max_new_tokens": (_GE1[0], ">= 1 or null (rollout.max_new_tokens)"),
    "loss.alpha": _UNIT,
    "loss.top_k": (_GE1[0], ">= 1 or null (full vocabulary)"),
    "loss.is_clip": _GT0,
    "loss.chunk_size": _GE1,
    "loss.clip_low": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "loss.clip_high": _GE0,
    "loss.marker_mass_threshold": (lambda v: 0.0 < v <= 1.0, "in (0, 1] or null (off)"),
    "loss.rollout_is_threshold": _GT0,
    "loss.clip_ratio_c": (lambda v: v > 1.0, "> 1 or null (off)"),
    "optim.lr": _GT0,
    "optim.weight_decay": _GE0,
    "optim.grad_clip": _GT0,
    "optim.warmup_steps": _GE0,
    "optim.mini_batch_size": _GE1,
    "optim.micro_batch_size": _GE1,
    "run.max_steps": _GE1,
    "run.save_every": _GE1,
    "run.keep_checkpoints": (_GE1[0], ">= 1 or null (keep all)"),
    "run.seed": _GE0,
    "run.epochs": _GE1,
    "run.batch_size": _GE1,
    "run.max_seq_len": (lambda v: v >= 2, ">= 2"),
}


_DTYPE_BITS = {"float32": 32, "bfloat16": 16, "float16": 16}


def _numbers(obj, prefix: str = ""):
    """(dotted key, value) of every number in the config tree, lists element by element."""
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            yield from _numbers(value, key + ".")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield key, value
        elif isinstance(value, list):
            for i, v in enumerate(value):
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    yield f"{key}[{i}]", v


def validate(cfg: TrainConfig, source: str) -> None:
    """Value checks that types alone cannot express: choices, finite numbers, ranges, consistency. Each
    failure is one ConfigError naming the field, its value and what is allowed."""
    for dotted, allowed in CHOICES.items():
        value = get(cfg, dotted, None)
        if value is not None and value not in allowed:
            raise ConfigError(f"{source}: field `{dotted}` = {value!r}; expected one of {', '.join(allowed)}")
    for dotted, value in _numbers(cfg):
        if not math.isfinite(value):
            raise ConfigError(f"{source}: field `{dotted}` = {value} must be a finite number")
    for dotted, (ok, allowed) in RANGES.items():
        value = get(cfg, dotted, None)
        if value is not None and not ok(value):
            raise ConfigError(f"{source}: field `{dotted}` = {value!r} must be {allowed}")
    betas = cfg.optim.betas
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ConfigError(
            f"{source}: field `optim.betas` = {betas!r} must be two numbers in [0, 1), e.g. [0.9, 0.999]"
        )
    master = getattr(cfg.model, "master_dtype", None)
    if master is not None and _DTYPE_BITS[master] < _DTYPE_BITS[cfg.model.dtype]:
        raise ConfigError(
            f"{source}: field `model.master_dtype` = {master!r} is narrower than `model.dtype` = "
            f"{cfg.model.dtype!r}; the weights that train must be at least as precise as the compute "
            f"(e.g. model.master_dtype=float32)"
        )
    if not cfg.model.path.strip():
        raise ConfigError(f"{source}: field `model.path` is empty; give a Hugging Face repo id or a folder")
    if not cfg.data.name.strip():
        raise ConfigError(f"{source}: field `data.name` is empty; give a set name or a file")
    if cfg.algorithm != "sft" and cfg.rollout.prompts_per_step % cfg.optim.mini_batch_size:
        raise ConfigError(
            f"{source}: field `optim.mini_batch_size` = {cfg.optim.mini_batch_size} must divide "
            f"`rollout.prompts_per_step` = {cfg.rollout.prompts_per_step}"
        )
    if cfg.loss.kind == "sampled_token" and cfg.loss.alpha != 1.0:
        raise ConfigError(
            f"{source}: field `loss.alpha` must be 1.0 with loss.kind=sampled_token (reverse KL)"
        )
    if cfg.distributed.strategy == "fsdp" and cfg.model.finetune == "lora":
        raise ConfigError(f"{source}: {FSDP_LORA_UNSUPPORTED}")


# One message for config validation and the engine's own guard (sd_bench.train.distributed.Engine).
FSDP_LORA_UNSUPPORTED = (
    "field `distributed.strategy` = 'fsdp' with model.finetune=lora is not supported; supported: "
    "model.finetune=lora with distributed.strategy=ddp (or auto), model.finetune=full with "
    "distributed.strategy=fsdp (or auto) or ddp; with model.finetune=lora use distributed.strategy=ddp"
)

_MISSING = object()


def get(cfg, dotted: str, default=_MISSING):
    """The value at a dotted key; `default` (when given) for a key the tree does not have."""
    for part in dotted.split("."):
        if default is not _MISSING and not hasattr(cfg, part):
            return default
        cfg = getattr(cfg, part)
    return cfg


def to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(tree: dict, source: str = "resolved config") -> TrainConfig:
    cfg = TrainConfig()
    _merge(cfg, tree, source)
    validate(cfg, source)
    return cfg


def save_config(cfg: TrainConfig, path: Path) -> None:
    """The resolved config, as YAML, written atomically (the run's record of what it ran)."""
    import os

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp-config")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    os.replace(tmp, path)


def dumps(cfg: TrainConfig) -> str:
    return json.dumps(to_dict(cfg), sort_keys=True)
