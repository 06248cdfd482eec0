"""`checkpoints_manifest.yaml`: one entry per condition of the paper, and `sd-bench manifest validate`.

Why a manifest: `sd-bench reproduce` must know, for every table row and figure line, which base model (and
revision) to start from, which recipe trains it, which released checkpoint can stand in for the training
(`--from-checkpoints`), how to decode, and what the paper reported. Keeping that in one validated YAML file
(not scattered over the planner) lets a reader audit the reproduction against the paper in one place.

Layout (see the file's header for the full description):

    version: 1
    models:                      # base models, referenced by key from entries
      r1-distill-qwen-7b: {id: deepseek-ai/DeepSeek-R1-Distill-Qwen-7B, revision: main, revision_note: ...}
    decoding:                    # named decoding profiles (PAPER.md "Evaluation protocol")
      thinking: {temperature: 0.6, top_p: 0.95, max_new_tokens: 38912, k: 16}
    entries:
      - id: t2_sft_unguided
        kind: sft                # probe | eval | sft | onpolicy
        groups: [table2]
        base_model: r1-distill-qwen-7b
        recipe: sft
        overrides: {}
        thinking: true
        decoding: thinking
        released_checkpoint: null
        expected:
          - {task: sd_aime24, metric: acc, value: 0.5104, source: "Table 2; PAPER.md secondary reading"}

Validation collects every problem and reports each once, naming the entry id and the field
(`entry 't2_sft_unguided': field 'recipe': unknown recipe 'sftt' (known: ...)`), so one run of
`sd-bench manifest validate` shows everything to fix. Light imports only (yaml, no torch).
"""

from __future__ import annotations

import argparse
import difflib
import functools
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PATH = REPO_ROOT / "checkpoints_manifest.yaml"

# Recipes the trainer ships (recipes/<name>.yaml, issue 3). Files found in recipes/ are accepted too.
KNOWN_RECIPES: frozenset[str] = frozenset(
    {
        "sdpo",
        "sdpo_nothink",
        "sdpo_answer",
        "sdpo_reference",
        "sdpo_regenerated",
        "sdpo_none",
        "sdpo_ema",
        "grpo",
        "sft",
    }
)
KINDS = ("probe", "eval", "sft", "onpolicy")
# Kinds that are produced by training (and therefore need a recipe).
TRAINED_KINDS = ("sft", "onpolicy")
# Table 1 teacher/hint contexts (PAPER.md "Teacher contexts"; `answer`: the gold answer as the hint, the
# miniature world's lowest rung, toy_manifest.yaml).
PROBE_CONTEXTS = ("none", "answer", "s", "s_nothink", "y_r")

# Tasks an expected number may refer to: the lm-eval tasks of issue 2 (and the toy world's), plus two
# pseudo-tasks that `reproduce` measures itself: `dapo_probe` (Table 1's generation probe on DAPO problems)
# and `train` (the training rollouts' metrics from metrics.jsonl).
KNOWN_TASKS: frozenset[str] = frozenset(
    {
        "sd_aime24",
        "sd_aime25",
        "sd_amc23",
        "sd_math500",
        "sd_ood_math",
        "sd_dapo_seen512",
        "sd_id_math",
        "sd_context_probe",
        "sd_toy_id",
        "sd_toy_ood",
        "sd_toy",
        "dapo_probe",
        "train",
    }
)
# Metrics an expected number may name. `acc` is avg@k; `*_rel_change` is (after - before) / before and
# `*_change` is after - before, both between step 0 and the entry's `step` (the figures' readings).
KNOWN_METRICS: frozenset[str] = frozenset(
    {
        "acc",
        "pass_at_k",
        "response_tokens",
        "response_chars",
        "epistemic_count",
        "epistemic_per_1k_tokens",
        "answer_rate",
        "score",
        "wait_count",
        "acc_rel_change",
        "wait_count_change",
    }
)
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")


class ManifestError(ValueError):
    """The manifest has problems; `problems` lists each one (entry id, field, what is wrong, how to fix)."""

    def __init__(self, path: Path | str, problems: list[str]):
        self.path = str(path)
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{path}: {len(problems)} problem(s):\n{lines}")


@dataclass(frozen=True)
class Model:
    key: str
    id: str  # Hugging Face model id
    revision: str  # commit or branch; "main" where the paper does not pin one (see revision_note)
    revision_note: str = ""
    chat_thinking: bool | None = None  # whether the chat template has a thinking switch (Qwen3)


@dataclass(frozen=True)
class World:
    """Where a manifest's conditions live: the tasks every evaluate stage runs, the problem set Tables 1-2
    select from, and the name of Table 1's probe task (its result files). Defaults: the paper's."""

    eval_tasks: tuple[str, ...] = ("sd_aime24", "sd_aime25", "sd_amc23", "sd_math500")
    eval_group: str | None = "sd_ood_math"  # lm-eval group of eval_tasks (one more result file), or null
    select_data: str = "dapo_math_17k"  # sd_bench.data set, visited in file order
    probe_task: str = "dapo_probe"


@dataclass(frozen=True)
class Decoding:
    name: str
    temperature: float
    top_p: float
    max_new_tokens: int
    k: int  # samples per problem (avg@k)
    note: str = ""


@dataclass(frozen=True)
class Checkpoint:
    id: str
    revision: str = "main"
    step: int | None = None


@dataclass(frozen=True)
class Expected:
    task: str
    metric: str
    value: float
    source: str
    step: int | None = None  # training step the reading refers to (figures); None = final / not trained
    note: str = ""


@dataclass(frozen=True)
class Entry:
    id: str
    kind: str
    groups: tuple[str, ...]
    description: str
    base_model: Model
    thinking: bool
    decoding: Decoding
    recipe: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    context: str | None = None  # Table 1 probe context
    train_data: str | None = None  # training set (e.g. dapo_math_17k, seen_64)
    released_checkpoint: Checkpoint | None = None
    expected: tuple[Expected, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class Manifest:
    path: str
    models: dict[str, Model]
    decoding: dict[str, Decoding]
    entries: tuple[Entry, ...]
    world: World = World()

    def model_ref(self, model: Model) -> str:
        """What to load: an absolute folder for an id that is a path in this repository (the toy base),
        else `hub-id@revision`."""
        local = REPO_ROOT / model.id
        return str(local) if local.is_dir() else f"{model.id}@{model.revision}"

    def entry(self, entry_id: str) -> Entry:
        for e in self.entries:
            if e.id == entry_id:
                return e
        raise KeyError(
            f"{self.path}: no entry '{entry_id}'{_suggest(entry_id, [e.id for e in self.entries])}"
        )

    def in_group(self, group: str) -> list[Entry]:
        """Entries that belong to `group` (e.g. 'table2', 'figure4'), in file order."""
        return [e for e in self.entries if group in e.groups]


def _suggest(value: str, choices) -> str:
    close = difflib.get_close_matches(str(value), list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _known_recipes(recipes_dir: Path | None) -> set[str]:
    names = set(KNOWN_RECIPES)
    if recipes_dir is not None and recipes_dir.is_dir():
        names |= {p.stem for p in recipes_dir.glob("*.yaml")}
    return names


@functools.lru_cache(maxsize=1)
def _task_files() -> frozenset[str]:
    """Task names of the lm-eval YAMLs in tasks/ (any depth), so new sd-bench tasks need no edit here."""
    tasks_dir = REPO_ROOT / "tasks"
    return frozenset(p.stem for p in tasks_dir.rglob("*.yaml")) if tasks_dir.is_dir() else frozenset()


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _parse_models(raw, problems: list[str]) -> dict[str, Model]:
    models: dict[str, Model] = {}
    if not isinstance(raw, dict) or not raw:
        problems.append("top level: field 'models': must be a mapping key -> {id, revision, ...}")
        return models
    for key, m in raw.items():
        where = f"model '{key}'"
        if not isinstance(m, dict):
            problems.append(f"{where}: must be a mapping with 'id' and 'revision'")
            continue
        unknown = set(m) - {"id", "revision", "revision_note", "chat_thinking"}
        for u in sorted(unknown):
            problems.append(f"{where}: unknown field '{u}'{_suggest(u, ['id', 'revision', 'revision_note'])}")
        if not isinstance(m.get("id"), str) or "/" not in m.get("id", ""):
            problems.append(f"{where}: field 'id': missing or not a Hugging Face id like 'org/name'")
            continue
        rev = m.get("revision")
        if not isinstance(rev, str) or not rev:
            problems.append(f"{where}: field 'revision': missing (use 'main' and say so in revision_note)")
            continue
        if rev == "main" and not m.get("revision_note"):
            problems.append(f"{where}: field 'revision_note': required when revision is 'main' (say why)")
        models[key] = Model(
            key=key,
            id=m["id"],
            revision=rev,
            revision_note=m.get("revision_note", ""),
            chat_thinking=m.get("chat_thinking"),
        )
    return models


def _parse_decoding(raw, problems: list[str]) -> dict[str, Decoding]:
    out: dict[str, Decoding] = {}
    if not isinstance(raw, dict) or not raw:
        problems.append("top level: field 'decoding': must be a mapping name -> {temperature, top_p, ...}")
        return out
    for name, d in raw.items():
        where = f"decoding '{name}'"
        if not isinstance(d, dict):
            problems.append(f"{where}: must be a mapping")
            continue
        bad = False
        for f_name, check, what in (
            ("temperature", lambda v: _num(v) and v >= 0, "a number >= 0"),
            ("top_p", lambda v: _num(v) and 0 < v <= 1, "a number in (0, 1]"),
            ("max_new_tokens", lambda v: isinstance(v, int) and v > 0, "a positive integer"),
            ("k", lambda v: isinstance(v, int) and v > 0, "a positive integer"),
        ):
            if not check(d.get(f_name)):
                problems.append(f"{where}: field '{f_name}': {d.get(f_name)!r} is not {what}")
                bad = True
        if not bad:
            out[name] = Decoding(
                name=name,
                temperature=float(d["temperature"]),
                top_p=float(d["top_p"]),
                max_new_tokens=d["max_new_tokens"],
                k=d["k"],
                note=d.get("note", ""),
            )
    return out


_ENTRY_FIELDS = {
    "id",
    "kind",
    "groups",
    "description",
    "base_model",
    "thinking",
    "decoding",
    "recipe",
    "overrides",
    "context",
    "train_data",
    "released_checkpoint",
    "expected",
    "note",
}


def _parse_entry(
    raw, i: int, models, decodings, recipes: set[str], problems: list[str], invalid_decodings=frozenset()
) -> Entry | None:
    if not isinstance(raw, dict):
        problems.append(f"entry #{i}: must be a mapping")
        return None
    eid = raw.get("id")
    where = f"entry '{eid}'" if isinstance(eid, str) else f"entry #{i}"
    n_before = len(problems)
    if not isinstance(eid, str) or not _ID_RE.match(eid):
        problems.append(
            f"{where}: field 'id': {eid!r} must be lower-case letters, digits and '_' "
            "(ids appear in dotted check paths)"
        )
    for u in sorted(set(raw) - _ENTRY_FIELDS):
        problems.append(f"{where}: unknown field '{u}'{_suggest(u, _ENTRY_FIELDS)}")
    kind = raw.get("kind")
    if kind not in KINDS:
        problems.append(f"{where}: field 'kind': {kind!r} is not one of {', '.join(KINDS)}")
    groups = raw.get("groups")
    if not isinstance(groups, list) or not groups or not all(isinstance(g, str) for g in groups):
        problems.append(f"{where}: field 'groups': must list the tables/figures it belongs to, e.g. [table2]")
        groups = []
    else:
        for g in groups:
            if not re.match(r"^(table[1-3]|figure[3-8]|ablation_ema|ablations|coverage_sweep)$", g):
                problems.append(
                    f"{where}: field 'groups': unknown group '{g}' "
                    "(tableN, figureN, ablation_ema, ablations, coverage_sweep)"
                )
    base = raw.get("base_model")
    model = models.get(base) if isinstance(base, str) else None
    if base is None:
        problems.append(f"{where}: field 'base_model': missing base model (a key of 'models')")
    elif model is None:
        problems.append(f"{where}: field 'base_model': unknown model '{base}'{_suggest(base, models)}")
    recipe = raw.get("recipe")
    if kind in TRAINED_KINDS and not recipe:
        problems.append(
            f"{where}: field 'recipe': a {kind} entry needs a recipe ({', '.join(sorted(recipes))})"
        )
    elif recipe is not None and recipe not in recipes:
        problems.append(
            f"{where}: field 'recipe': unknown recipe '{recipe}'{_suggest(recipe, recipes)} "
            f"(known: {', '.join(sorted(recipes))})"
        )
    elif recipe is not None and kind in KINDS and kind not in TRAINED_KINDS:
        problems.append(f"{where}: field 'recipe': a {kind} entry trains nothing; remove the recipe")
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        problems.append(f"{where}: field 'overrides': must be a mapping key -> value")
        overrides = {}
    context = raw.get("context")
    if kind == "probe" and context not in PROBE_CONTEXTS:
        problems.append(f"{where}: field 'context': {context!r} is not one of {', '.join(PROBE_CONTEXTS)}")
    thinking = raw.get("thinking")
    if not isinstance(thinking, bool):
        problems.append(f"{where}: field 'thinking': must be true or false")
    dec_name = raw.get("decoding")
    decoding = decodings.get(dec_name) if isinstance(dec_name, str) else None
    if decoding is None and not (isinstance(dec_name, str) and dec_name in invalid_decodings):
        # (a profile that exists but is invalid was reported once, under its own name)
        problems.append(
            f"{where}: field 'decoding': unknown profile {dec_name!r}{_suggest(dec_name, decodings)}"
        )
    ckpt = None
    rc = raw.get("released_checkpoint")
    if rc is not None:
        if not isinstance(rc, dict) or not isinstance(rc.get("id"), str) or "/" not in rc["id"]:
            problems.append(
                f"{where}: field 'released_checkpoint': must be null or {{id: org/name, revision, step}}"
            )
        else:
            ckpt = Checkpoint(id=rc["id"], revision=rc.get("revision", "main"), step=rc.get("step"))
            if kind in KINDS and kind not in TRAINED_KINDS:
                problems.append(
                    f"{where}: field 'released_checkpoint': only trained entries have checkpoints"
                )
    expected: list[Expected] = []
    for j, ex in enumerate(raw.get("expected") or []):
        ewhere = f"{where}: field 'expected[{j}]'"
        if not isinstance(ex, dict):
            problems.append(f"{ewhere}: must be a mapping {{task, metric, value, source}}")
            continue
        ok = True
        if ex.get("task") not in KNOWN_TASKS | _task_files():
            problems.append(
                f"{ewhere}: expected metric for unknown task {ex.get('task')!r}"
                f"{_suggest(ex.get('task'), KNOWN_TASKS)}"
            )
            ok = False
        if ex.get("metric") not in KNOWN_METRICS:
            problems.append(
                f"{ewhere}: unknown metric {ex.get('metric')!r}{_suggest(ex.get('metric'), KNOWN_METRICS)}"
            )
            ok = False
        if not _num(ex.get("value")):
            problems.append(f"{ewhere}: field 'value': {ex.get('value')!r} is not a number")
            ok = False
        if not isinstance(ex.get("source"), str) or not ex.get("source"):
            problems.append(f"{ewhere}: field 'source': say where the number comes from (table/figure)")
            ok = False
        if ok:
            expected.append(
                Expected(
                    task=ex["task"],
                    metric=ex["metric"],
                    value=float(ex["value"]),
                    source=ex["source"],
                    step=ex.get("step"),
                    note=ex.get("note", ""),
                )
            )
    if len(problems) > n_before:
        return None
    return Entry(
        id=eid,
        kind=kind,
        groups=tuple(groups),
        description=raw.get("description", ""),
        base_model=model,
        thinking=thinking,
        decoding=decoding,
        recipe=recipe,
        overrides=dict(overrides),
        context=context,
        train_data=raw.get("train_data"),
        released_checkpoint=ckpt,
        expected=tuple(expected),
        note=raw.get("note", ""),
    )


def override_args(overrides: dict[str, Any]) -> list[str]:
    """Manifest overrides -> `sd-bench train` key=value arguments (booleans as true/false)."""
    return [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in overrides.items()]


def _check_overrides(entry: Entry, problems: list[str]) -> None:
    """Load the entry's recipe + overrides with the trainer's own config loader (light: yaml + dataclasses),
    so a misspelt key or a bad value is reported here, not hours into a reproduction."""
    try:
        from sd_bench.train.config import ConfigError, load_config
    except ImportError:  # trainer not installed: names are still checked against KNOWN_RECIPES
        return
    try:
        load_config(entry.recipe, scale="paper", overrides=override_args(entry.overrides))
    except ConfigError as exc:
        problems.append(f"entry '{entry.id}': field 'overrides': {exc}")


def parse(data: Any, path: Path | str = "<manifest>", recipes_dir: Path | None = None) -> Manifest:
    """Validate a loaded manifest; raise ManifestError listing every problem."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ManifestError(
            path, ["top level: must be a mapping with 'version', 'models', 'decoding', 'entries'"]
        )
    if data.get("version") != 1:
        problems.append(f"top level: field 'version': {data.get('version')!r} is not 1")
    world = _parse_world(data.get("world"), problems)
    models = _parse_models(data.get("models"), problems)
    decodings = _parse_decoding(data.get("decoding"), problems)
    recipes = _known_recipes(recipes_dir if recipes_dir is not None else REPO_ROOT / "recipes")
    raw_entries = data.get("entries")
    entries: list[Entry] = []
    if not isinstance(raw_entries, list) or not raw_entries:
        problems.append("top level: field 'entries': must be a non-empty list")
        raw_entries = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(raw_entries):
        eid = raw.get("id") if isinstance(raw, dict) else None
        if isinstance(eid, str):
            if eid in seen:
                problems.append(f"entry '{eid}': field 'id': duplicate id (also entry #{seen[eid]})")
            seen.setdefault(eid, i)
        invalid = (
            set(data.get("decoding") or {}) - set(decodings) if isinstance(data.get("decoding"), dict) else ()
        )
        entry = _parse_entry(raw, i, models, decodings, recipes, problems, invalid)
        if entry is not None:
            entries.append(entry)
            if (
                entry.recipe
                and recipes_dir is None
                and (REPO_ROOT / "recipes" / f"{entry.recipe}.yaml").is_file()
            ):
                _check_overrides(entry, problems)
    if problems:
        raise ManifestError(path, problems)
    return Manifest(path=str(path), models=models, decoding=decodings, entries=tuple(entries), world=world)


def _parse_world(raw, problems: list[str]) -> World:
    if raw is None:
        return World()
    fields = {f.name for f in World.__dataclass_fields__.values()}
    if not isinstance(raw, dict):
        problems.append(f"top level: field 'world': must be a mapping with {', '.join(sorted(fields))}")
        return World()
    for u in sorted(set(raw) - fields):
        problems.append(f"world: unknown field '{u}'{_suggest(u, fields)}")
    tasks = raw.get("eval_tasks", list(World.eval_tasks))
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks):
        problems.append("world: field 'eval_tasks': must list lm-eval task names, e.g. [sd_toy_id]")
        tasks = list(World.eval_tasks)
    for t in tasks:
        if t not in KNOWN_TASKS | _task_files():
            problems.append(f"world: field 'eval_tasks': unknown task '{t}'{_suggest(t, KNOWN_TASKS)}")
    kw = {k: raw[k] for k in ("eval_group", "select_data", "probe_task") if k in raw}
    return World(eval_tasks=tuple(tasks), **kw)


def load(path: Path | str | None = None) -> Manifest:
    """Load and validate `path` (default: checkpoints_manifest.yaml at the repository root)."""
    path = Path(path) if path is not None else DEFAULT_PATH
    if not path.is_file():
        what = "a folder, not a file" if path.is_dir() else "file not found"
        raise ManifestError(path, [f"{what} (pass the manifest path, e.g. checkpoints_manifest.yaml)"])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ManifestError(path, [f"not UTF-8 text (byte offset {exc.start}); save it as UTF-8"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise ManifestError(path, [f"not valid YAML{where}: {what}"]) from None
    return parse(data, path)


# --- `sd-bench manifest` ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # A positional action rather than argparse sub-parsers: sd_bench/cli.py parses with
    # parse_intermixed_args (for the trainer's key=value overrides), which rejects sub-parsers.
    parser.add_argument(
        "manifest_command",
        choices=("validate",),
        metavar="validate",
        help="validate the manifest; one line per problem",
    )
    parser.add_argument(
        "path", nargs="?", default=str(DEFAULT_PATH), help="manifest file (default: %(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    if args.manifest_command == "validate":
        try:
            m = load(args.path)
        except ManifestError as exc:
            print(str(exc), file=sys.stderr)
            return 1
        n_exp = sum(len(e.expected) for e in m.entries)
        n_ckpt = sum(e.released_checkpoint is not None for e in m.entries)
        print(
            f"{args.path}: OK: {len(m.entries)} entries, {len(m.models)} models, "
            f"{n_ckpt} released checkpoints, {n_exp} expected numbers"
        )
        return 0
    return 2
