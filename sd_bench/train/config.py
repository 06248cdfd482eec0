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
    dtype: str = "bfloat16"  # float32 | bfloat16; parameters and compute (log-softmax is always fp32)
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
    # reward: "grade" = sd_bench.answer.grade (math-verify, the paper); "contains_answer" = 1 when the gold
    # answer string occurs in the response: a SMOKE-TEST reward so a random tiny model gets some successes
    reward: str = "grade"


@dataclass
class RolloutConfig:
    backend: str = "hf"  # hf (transformers generate) | vllm (sd_bench.train.rollout_vllm)
    prompts_per_step: int = 256  # paper: 256 prompts x 8 rollouts per step
    n: int = 8
    temperature: float = 1.0  # paper: rollout temperature 1.0
    top_p: float = 1.0
    max_new_tokens: int = 20480  # paper: max response 20,480


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
    warmup_steps: int = 10  # linear warmup, then constant (verl's default schedule)
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
    "model.finetune": ("full", "lora"),
    "data.reward": ("grade", "contains_answer"),
    "rollout.backend": ("hf", "vllm"),
    "teacher.context": ("none", "answer", "reference_solution", "sibling", "sibling_nothink", "regenerated"),
    "teacher.mode": ("frozen", "ema", "live"),
    "loss.kind": ("jsd", "sampled_token"),
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
        "optim": {"mini_batch_size": 2, "micro_batch_size": 4, "warmup_steps": 1},
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


def _closest(key: str) -> str:
    valid = field_names()
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


def _merge(obj, values: dict, source: str, prefix: str = "") -> None:
    """Set fields of dataclass `obj` from a nested dict, validating keys and types."""
    if not isinstance(values, dict):
        raise ConfigError(
            f"{source}: `{prefix.rstrip('.') or 'top level'}` must be a mapping, got {values!r}"
        )
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        dotted = prefix + str(key)
        if key not in names:
            raise ConfigError(f"{source}: unknown key `{dotted}`; did you mean `{_closest(dotted)}`?")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, source, dotted + ".")
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
    value = yaml.safe_load(raw) if raw != "" else ""
    return key.strip(), value


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
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        _merge(cfg, _fix_numbers(tree), str(path))
        validate(cfg, str(path))
    if scale not in SCALES:
        raise ConfigError(f"--scale {scale!r}: expected one of {', '.join(SCALES)}")
    _merge(cfg, SCALES[scale], f"scale preset `{scale}`")
    for item in overrides:
        key, value = parse_override(item)
        _merge(cfg, _fix_numbers(_nest(key, value)), f"command line `{item}`")
    validate(cfg, f"command line overrides {' '.join(overrides)}" if overrides else f"scale preset `{scale}`")
    return cfg


def validate(cfg: TrainConfig, source: str) -> None:
    """Value checks that types alone cannot express."""
    for dotted, allowed in CHOICES.items():
        value = get(cfg, dotted)
        if value not in allowed:
            raise ConfigError(f"{source}: field `{dotted}` = {value!r}; expected one of {', '.join(allowed)}")
    positive = [
        "rollout.n",
        "rollout.prompts_per_step",
        "rollout.max_new_tokens",
        "optim.mini_batch_size",
        "optim.micro_batch_size",
        "run.max_steps",
        "run.save_every",
        "run.batch_size",
        "loss.chunk_size",
        "teacher.max_prompt_tokens",
    ]
    for dotted in positive:
        if get(cfg, dotted) <= 0:
            raise ConfigError(f"{source}: field `{dotted}` = {get(cfg, dotted)!r} must be > 0")
    if not 0.0 <= cfg.loss.alpha <= 1.0:
        raise ConfigError(f"{source}: field `loss.alpha` = {cfg.loss.alpha} must be in [0, 1]")
    if not 0.0 <= cfg.teacher.ema_rate <= 1.0:
        raise ConfigError(f"{source}: field `teacher.ema_rate` = {cfg.teacher.ema_rate} must be in [0, 1]")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"{source}: field `optim.lr` = {cfg.optim.lr} must be > 0")
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
        raise ConfigError(
            f"{source}: field `distributed.strategy` = 'fsdp' is for full fine-tuning; with "
            "model.finetune=lora use distributed.strategy=ddp (or auto)"
        )
    if cfg.loss.top_k is not None and cfg.loss.top_k <= 0:
        raise ConfigError(f"{source}: field `loss.top_k` must be > 0 or null (full vocabulary)")


def get(cfg, dotted: str):
    for part in dotted.split("."):
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
