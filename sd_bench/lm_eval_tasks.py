"""lm-eval hooks for the paper's math tasks, and where lm-eval finds them.

The task YAMLs in `tasks/` (also copied into lm-eval's own task folder by the wheel) call the functions here:
`load_dataset` (custom_dataset), `doc_to_text`, `keep_all` (filter) and `process_results`.

    lm_eval --tasks sd_ood_math --model vllm --model_args pretrained=Qwen/Qwen3-8B \\
        --include_path "$(sd-bench tasks-path)"
    lm_eval --tasks sd_ood_math --model hf --model_args pretrained=PATH \\
        --include_path "$(sd-bench tasks-path --k 4 --thinking off)" --log_samples --output_path runs/x

Protocol (PAPER.md, "Prompt" and "Evaluation protocol"):
- One user message, no system prompt, rendered with the evaluated model's own chat template. lm-eval's
  `--apply_chat_template` is not needed: the tasks learn the tokenizer from `--model_args` (`tokenizer=` or
  `pretrained=`; lm-eval passes model_args to tasks as metadata) and render the prompt themselves. To send the
  plain prompt instead (base models, or when you do pass --apply_chat_template: never both), add
  `--metadata '{"chat_template": false}'`. Qwen3 thinking off: `--metadata '{"thinking": false}'`.
- Decoding: k = 16 samples, temperature 0.6, top_p 0.95, up to 38,912 new tokens, no stop strings.
  lm-eval's CLI cannot change `repeats`; `sd-bench tasks-path --k K --thinking off` writes the same tasks with
  other settings (thinking off: temperature 0.7, top_p 0.8) into a folder for `--include_path`, which
  overrides the installed ones. `--gen_kwargs temperature=0.7,top_p=0.8` also works for sampling settings.

Metrics, each a mean over the task's problems, with k responses y_1..y_k per problem (tasks/README.md):
  acc = mean_i [correct(y_i)] (avg@k); pass_at_k = [any_i correct(y_i)]; pass_at_<j> = unbiased pass@j
  (Chen et al. 2021) for j in 1, 2, 4, 8, 16 up to k; maj_at_k = [the most frequent answer is correct];
  each also as *_paper under the paper's own rule (sd_bench.paper_answer), the rest under math-verify;
  epistemic_count = mean_i E(y_i); epistemic_per_1k_tokens = mean_i 1000 E(y_i) / max(tokens(y_i), 1);
  response_tokens = mean_i tokens(y_i) (the model's tokenizer, no special tokens); thinking_tokens = mean_i
  tokens(think content of y_i); answer_rate = mean_i [y_i has a non-empty final \\boxed{} answer];
  marker_<m> = mean_i count_m(y_i) for each marker. lm-eval adds <metric>_stderr over problems.
When no tokenizer can be resolved, the length metrics are `response_chars` / `epistemic_per_1k_chars` instead
(one warning; never mixed within a run). Sample logs carry the k responses and the per-doc marker means;
`sd-bench markers` recomputes exact per-response counts from them.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
from pathlib import Path

from sd_bench import atomic, lm_eval_guards
from sd_bench.grading import METRIC_SUFFIX, RULES, grade
from sd_bench.markers import MARKERS, marker_counts
from sd_bench.paper_answer import thinking_text
from sd_bench.sampling_metrics import majority_correct, pass_at_ks

log = logging.getLogger(__name__)

TEMPLATE_NAME = "_sd_math_template"
# PAPER.md "Evaluation protocol": thinking models 0.6 / 0.95; thinking off 0.7 / 0.8.
SAMPLING = {"on": {"temperature": 0.6, "top_p": 0.95}, "off": {"temperature": 0.7, "top_p": 0.8}}
PROMPT_VARIANTS = ("plain", "answer_hint", "solution_hint")

_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


# ---------------------------------------------------------------- tokenizer (from lm-eval metadata)


def _truthy(value, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off", "")
    return bool(value)


def tokenizer_name(metadata: dict) -> str | None:
    """The evaluated model's tokenizer: model_args `tokenizer=` if given, else `pretrained=` (a name or path)."""
    for key in ("tokenizer", "pretrained"):
        value = metadata.get(key)
        if isinstance(value, (str, os.PathLike)) and str(value):
            return str(value)
    return None


@functools.lru_cache(maxsize=8)
def _hf_tokenizer(name: str, trust_remote_code: bool = False):
    """transformers tokenizer (for the chat template); None when it cannot be loaded."""
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001  missing offline, gated, unknown name...
        _warn_once(f"sd_bench: cannot load tokenizer {name!r} ({exc})")
        return None


@functools.lru_cache(maxsize=8)
def batch_token_counter(name: str):
    """A function list of texts -> their numbers of tokens (no special tokens) for tokenizer `name`, or None.

    Uses the `tokenizers` library on tokenizer.json (a local folder or the Hub cache) when possible: its Rust
    `encode_batch_fast` counts all k responses of a doc in one call (no offsets; several threads unless
    TOKENIZERS_PARALLELISM=false) and needs no torch import; falls back to a transformers tokenizer.
    """
    if not name:
        return None
    path = Path(name).expanduser()
    file = path / "tokenizer.json" if path.is_dir() else None
    if file is None or not file.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, "tokenizer.json")
            file = Path(cached) if isinstance(cached, str) else None
        except Exception:  # noqa: BLE001  no hub library / cache: fall back to transformers below
            file = None
    if file is not None and file.is_file():
        from tokenizers import Tokenizer

        fast = Tokenizer.from_file(str(file))
        fast.no_padding()  # a tokenizer.json saved with padding/truncation on would pad a batch to its longest
        fast.no_truncation()
        # tokenizers >= 0.21 has encode_batch_fast (skips offsets, ~25% faster than encode_batch)
        encode = getattr(fast, "encode_batch_fast", fast.encode_batch)
        from sd_bench.token_count import checked_counter

        # the same counts ~4x faster via tiktoken where that is exact (sd_bench/token_count.py)
        return checked_counter(
            file, lambda texts: [len(e.ids) for e in encode(list(texts), add_special_tokens=False)]
        )
    tok = _hf_tokenizer(name)
    if tok is None:
        return None
    return lambda texts: [len(ids) for ids in tok(list(texts), add_special_tokens=False)["input_ids"]]


def token_counter(name: str):
    """A function text -> number of tokens (no special tokens) for tokenizer `name`, or None."""
    count = batch_token_counter(name)
    return None if count is None else (lambda text: count([text])[0])


# ---------------------------------------------------------------- dataset (custom_dataset hook)


def _user_turn(problem, variant: str) -> str:
    from sd_bench.prompts import hint_prompt

    if variant == "plain":
        return problem.prompt
    if variant == "answer_hint":
        return hint_prompt(problem.prompt, problem.answer)
    if not problem.solution:
        raise ValueError(
            f"{problem.id}: prompt_variant 'solution_hint' needs a reference solution (MATH500 only)"
        )
    return hint_prompt(problem.prompt, problem.solution)


def load_dataset(set_name: str, prompt_variant: str = "plain", dedupe: bool = False, **metadata):
    """custom_dataset hook: one pinned set as a DatasetDict {"test": docs}, prompts already templated.

    lm-eval calls it with the task's metadata merged with the run's `--model_args` and `--metadata`, which
    is how the evaluated model's tokenizer (and chat template) becomes known here.
    """
    import datasets

    from sd_bench.data import load_problems, provenance
    from sd_bench.prompts import render

    if prompt_variant not in PROMPT_VARIANTS:
        raise ValueError(f"prompt_variant {prompt_variant!r}: expected one of {PROMPT_VARIANTS}")
    lm_eval_guards.check_model_args(metadata)  # think_end_token= would strip the thinking before scoring
    problems = load_problems(set_name)
    if dedupe:  # 1x64 / 8x8 repeat problems for training; evaluate each once
        seen: set[str] = set()
        problems = [p for p in problems if not (p.id in seen or seen.add(p.id))]

    name = tokenizer_name(metadata)
    thinking = _truthy(metadata.get("thinking"), True)
    use_template = _truthy(metadata.get("chat_template"), True)
    hf_tok = (
        _hf_tokenizer(name, _truthy(metadata.get("trust_remote_code"), False))
        if name and use_template
        else None
    )
    if use_template and hf_tok is None:
        _warn_once(
            "sd_bench: no chat template could be applied (no tokenizer= or pretrained= in --model_args, or "
            "it failed to load): the model gets the plain prompt"
        )
    template_kwargs = {} if thinking else {"enable_thinking": False}
    counter = token_counter(name) if name else None
    if counter is None:
        _warn_once(
            "sd_bench: no tokenizer resolved from --model_args; reporting response_chars and "
            "epistemic_per_1k_chars instead of token counts"
        )
    data = provenance(set_name)
    docs = []
    for p in problems:
        user = _user_turn(p, prompt_variant)
        docs.append(
            {
                "id": p.id,
                "problem": p.question,
                "prompt": user,
                "input": render(hf_tok, user, **template_kwargs) if hf_tok is not None else user,
                "answer": p.answer,
                "kind": p.kind,
                "solution": p.solution or "",
                "tokenizer": name if counter is not None else "",
                "data_sha256": data["sha256"],
            }
        )
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def doc_to_text(doc: dict) -> str:
    lm_eval_guards.check_calling_task()  # --gen_kwargs seed=N would give all k repeats one seed
    return doc["input"]


def keep_all(resps, docs):
    """Filter: keep all k responses per doc (lm-eval's default keeps only the first)."""
    return [list(r) for r in resps]


# ---------------------------------------------------------------- scoring (process_results hook)


def _answer_key(rule: str):
    """How maj@k compares extracted answers under each rule (string normalisation, not equivalence)."""
    if rule == "paper":
        from sd_bench.paper_answer import strip_string

        return strip_string
    from sd_bench.answer import _normalize

    return _normalize


def score_responses(
    responses: list[str], gold: str, tokenizer: str = "", kind: str = "math"
) -> dict[str, float]:
    """The per-problem metrics of k responses (module docstring has the equations).

    `kind` picks the checkers (`sd_bench.grading`): "math" for the paper's sets, "toy" for the miniature
    world's tasks, which reuse these hooks with a `kind` field in their docs. Every response is graded under
    both rules (math-verify: `acc`...; the paper's code: `acc_paper`...).
    Cost: the token count dominates, so all k responses and their thinking parts are counted in one batched
    call (`sd_bench.token_count`: exact, tiktoken speed where it applies); each response is lower-cased once
    (in `marker_counts`).
    """
    count = batch_token_counter(tokenizer) if tokenizer else None
    unit = "tokens" if count is not None else "chars"
    thinking = [thinking_text(text) for text in responses]
    if count is not None:
        counted = count(responses + [t for t in thinking if t])
        lengths, rest = counted[: len(responses)], iter(counted[len(responses) :])
        think_lengths = [next(rest) if t else 0 for t in thinking]
    else:
        lengths, think_lengths = [len(text) for text in responses], [len(t) for t in thinking]
    n = len(responses)
    k = max(n, 1)
    metrics: dict[str, float] = {}
    for rule in RULES:
        grades = [grade(kind, text, gold, rule) for text in responses]
        c = sum(g.correct for g in grades)
        suffix = METRIC_SUFFIX[rule]
        metrics[f"acc{suffix}"] = c / k
        metrics[f"pass_at_k{suffix}"] = float(c > 0)
        if n:
            metrics.update({f"pass_at_{j}{suffix}": v for j, v in pass_at_ks(n, c).items()})
        metrics[f"maj_at_k{suffix}"] = majority_correct(
            [g.extracted for g in grades], [g.correct for g in grades], _answer_key(rule)
        )
        if rule == RULES[0]:  # an empty \boxed{} is no answer (issue 8, item 7)
            metrics["answer_rate"] = sum(bool(g.extracted) for g in grades) / k
    e_sum = rate_sum = 0.0
    per_marker = dict.fromkeys(MARKERS, 0)
    for text, length in zip(responses, lengths):
        counts = marker_counts(text)
        e = sum(counts.values())
        e_sum += e
        rate_sum += 1000.0 * e / max(length, 1)
        for m, c in counts.items():
            per_marker[m] += c
    metrics.update(
        {
            "epistemic_count": e_sum / k,
            f"epistemic_per_1k_{unit}": rate_sum / k,
            f"response_{unit}": sum(lengths) / k,
            f"thinking_{unit}": sum(think_lengths) / k,
        }
    )
    metrics.update({f"marker_{m}": c / k for m, c in per_marker.items()})
    return metrics


def process_results(doc: dict, results: list) -> dict[str, float]:
    """process_results hook: `results` is [[y_1..y_k]] with the keep_all filter ([y_1] with take_first)."""
    if len(results) == 1 and isinstance(results[0], (list, tuple)):
        responses = list(results[0])
    else:
        responses = list(results)
    return score_responses(
        [r if isinstance(r, str) else str(r) for r in responses],
        doc["answer"],
        doc.get("tokenizer") or "",
        doc.get("kind") or "math",
    )


# ---------------------------------------------------------------- where lm-eval finds the tasks


def tasks_path() -> str:
    """The task folder sd-bench ships, found without asking where lm-eval lives:
    1. `tasks/` of a source checkout (an editable install, or running from a clone);
    2. the files the sd-bench wheel installed (`lm_eval/tasks/sd_bench/` inside sd-bench's own site folder,
       found through sd-bench's installed-files record, so an lm-eval imported from elsewhere does not matter);
    3. the copy inside the lm-eval that imports here.
    Also the `lm_eval.tasks` entry point, for lm-eval releases that discover tasks that way.
    """
    repo_tasks = Path(__file__).resolve().parent.parent / "tasks"
    if (repo_tasks / TEMPLATE_NAME).is_file():
        return str(repo_tasks)
    wheel = _wheel_tasks()
    if wheel is not None:
        return str(wheel)
    installed = installed_copy()
    if installed is not None and (installed / TEMPLATE_NAME).is_file():
        return str(installed)
    raise FileNotFoundError(
        f"sd-bench task YAMLs not found in {repo_tasks}, in sd-bench's installed files or in lm-eval's task "
        "folder; reinstall sd-bench (pip install sd-bench)"
    )


def _wheel_tasks() -> Path | None:
    """lm_eval/tasks/sd_bench as the sd-bench wheel installed it (its RECORD), wherever lm-eval is."""
    import importlib.metadata as md

    try:
        files = md.files("sd-bench") or []
    except md.PackageNotFoundError:
        return None
    for f in files:
        if f.as_posix() == f"lm_eval/tasks/sd_bench/{TEMPLATE_NAME}":
            path = Path(str(f.locate())).resolve()
            if path.is_file():
                return path.parent
    return None


def installed_copy() -> Path | None:
    """`lm_eval/tasks/sd_bench` of the lm-eval that imports here (what bare `lm_eval --tasks` indexes), or
    None when lm-eval is not importable; the folder may not exist."""
    try:
        import lm_eval
    except ImportError:
        return None
    return Path(lm_eval.__file__).resolve().parent / "tasks" / "sd_bench"


def _task_files(folder: Path) -> dict[str, bytes]:
    """relative path -> bytes of the files lm-eval reads from a task folder (YAMLs, template, utils.py)."""
    out = {}
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder).as_posix()
        read_by_lm_eval = f.suffix in (".yaml", ".py") or f.name == TEMPLATE_NAME
        if f.is_file() and "__pycache__" not in rel and read_by_lm_eval:
            out[rel] = f.read_bytes()
    return out


def copy_state(folder: Path | str, installed: Path | None) -> tuple[str, list[str]]:
    """("missing" | "current" | "stale", files of `folder` that `installed` lacks or holds otherwise)."""
    ours = _task_files(Path(folder))
    if installed is None or not (installed / TEMPLATE_NAME).is_file():
        return "missing", sorted(ours)
    theirs = _task_files(installed)
    differ = sorted(rel for rel, data in ours.items() if theirs.get(rel) != data)
    return ("current" if not differ else "stale"), differ


def _sub_once(pattern: str, repl: str, text: str) -> str:
    new, n = re.subn(pattern, repl, text, flags=re.MULTILINE)
    if n != 1:
        raise RuntimeError(f"{TEMPLATE_NAME}: expected one line matching {pattern!r}, found {n}")
    return new


class TaskSettingsError(ValueError):
    """Task settings (k, thinking, max_gen_toks) out of range; the message names the setting and the value."""


def _render_tasks(tmp: Path, k: int | None, thinking: str, max_gen_toks: int | None) -> None:
    """The shipped task folder, copied into `tmp` with the template's decoding settings replaced."""
    if thinking not in SAMPLING:
        raise TaskSettingsError(f"thinking must be 'on' or 'off', got {thinking!r}")
    if k is not None and k < 1:
        raise TaskSettingsError(f"k must be >= 1, got {k}")
    if max_gen_toks is not None and max_gen_toks < 1:
        raise TaskSettingsError(f"max_gen_toks must be >= 1, got {max_gen_toks}")
    shutil.copytree(tasks_path(), tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    template = tmp / TEMPLATE_NAME
    text = template.read_text()
    if k is not None:
        text = _sub_once(r"^repeats: \d+$", f"repeats: {k}", text)
    for key, value in SAMPLING[thinking].items():
        text = _sub_once(rf"^  {key}: [\d.]+$", f"  {key}: {value}", text)
    if max_gen_toks is not None:
        text = _sub_once(r"^  max_gen_toks: \d+$", f"  max_gen_toks: {max_gen_toks}", text)
    text = _sub_once(r"^  thinking: \w+$", f"  thinking: {'true' if thinking == 'on' else 'false'}", text)
    template.write_text(text)


def _variant_name(k: int | None, thinking: str, max_gen_toks: int | None) -> str:
    return f"k{k or 'default'}-thinking-{thinking}-max{max_gen_toks or 'default'}"


def _cached_folder(name: str, fill) -> Path:
    """A content-addressed folder `$SD_BENCH_CACHE/tasks/<name>-<digest>` filled by `fill(tmp)`.

    Shared by every run on the machine (issue 8, item 3): the folder is built in a private temporary
    folder, and moved into place under an exclusive lock only when no folder with that content exists. A
    folder never changes once written, so a reader (lm-eval indexing it) is never disturbed by a writer; a
    changed sd-bench gets a new digest, hence a new folder.
    """
    import fcntl
    import hashlib
    import tempfile

    from sd_bench.data import cache_dir

    root = cache_dir() / "tasks"
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}.tmp-", dir=root) as work:
        tmp = Path(work) / "tasks"
        tmp.mkdir()
        fill(tmp)
        digest = hashlib.sha256()
        for rel, data in sorted(_task_files(tmp).items()):
            digest.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
        final = root / f"{name}-{digest.hexdigest()[:12]}"
        if (final / TEMPLATE_NAME).is_file():
            return final
        with open(root / f".{final.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if not (final / TEMPLATE_NAME).is_file():
                (tmp / atomic.OUTPUT_MARKER).write_text("written by sd-bench (sd_bench/lm_eval_tasks.py)\n")
                os.replace(tmp, final)
    return final


def write_tasks(
    dest: str | os.PathLike | None = None,
    k: int | None = None,
    thinking: str = "on",
    max_gen_toks: int | None = None,
) -> Path:
    """The task folder with other decoding settings (same task names); returns the folder.

    `dest` None: a shared cache folder (`_cached_folder`); else `dest`, written atomically (a folder sd-bench
    did not write is refused, never emptied). Pass it as `--include_path`: lm-eval lets later include paths
    override the installed tasks.
    """
    if dest is None:
        name = _variant_name(k, thinking, max_gen_toks)
        return _cached_folder(name, lambda tmp: _render_tasks(tmp, k, thinking, max_gen_toks))
    with atomic.atomic_dir(Path(dest)) as tmp:
        _render_tasks(tmp, k, thinking, max_gen_toks)
    return Path(dest)


def include_path(k: int | None = None, thinking: str = "on", max_gen_toks: int | None = None) -> Path:
    """The folder to pass to `lm_eval --include_path`: the sd-bench tasks with these settings that the
    lm-eval here does not already hold byte for byte.

    Why not always the whole folder: lm-eval indexes its own task folder first, where the sd-bench wheel
    put a copy, and warns once per task that an include path registers again ("Task ... overrides existing
    task", lm_eval/tasks/_index.py TaskIndex.build). Leaving out the task YAMLs that copy already holds
    identically removes the double registration, and every remaining warning is a real override (other
    settings, or a stale copy). An lm-eval without the copy (installed elsewhere, editable from a clone)
    gets every task: the route never depends on where lm-eval lives.
    """
    default = k is None and thinking == "on" and max_gen_toks is None
    installed = installed_copy()
    state, _ = copy_state(tasks_path(), installed)
    if default and state == "missing":
        return Path(tasks_path())

    def fill(tmp: Path) -> None:
        _render_tasks(tmp, k, thinking, max_gen_toks)
        _, differ = copy_state(tmp, installed)
        shared = {TEMPLATE_NAME, "utils.py"}
        if not any(rel in shared for rel in differ):  # tasks `include:` the template: keep it either way
            for rel in _task_files(tmp):
                if rel.endswith(".yaml") and rel not in differ:
                    (tmp / rel).unlink()

    return _cached_folder("include-" + _variant_name(k, thinking, max_gen_toks), fill)


PROMPT_RESERVE = 2048  # the paper's 38,912 new tokens = Qwen3's 40,960 context - 2,048 for the prompt


def model_context_length(model_args: dict) -> int | None:
    """The evaluated model's context in tokens: `max_length=` (hf) / `max_model_len=` (vllm) in model_args,
    else its config.json (`text_config` first, then n_positions / max_position_embeddings / n_ctx, as
    lm_eval.models.utils.resolve_max_length); None when unknown (nothing is downloaded)."""
    for key in ("max_length", "max_model_len"):
        if str(model_args.get(key) or "").isdigit():
            return int(model_args[key])
    name = tokenizer_name({"pretrained": model_args.get("pretrained")})
    if name is None:
        return None
    path = Path(name).expanduser() / "config.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, "config.json")
        except Exception:  # noqa: BLE001  no hub library or cache: unknown
            return None
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for section in (config.get("text_config") or {}, config):
        for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
            if isinstance(section.get(attr), int):
                return section[attr]
    return None


def clamp_max_gen_toks(max_gen_toks: int | None, model_args: dict) -> int | None:
    """`max_gen_toks` (None: the template's 38,912), lowered to the model's context minus PROMPT_RESERVE
    (at most half the context) with one warning naming both numbers, when it would not fit. lm-eval would
    otherwise stop with a bare assertion (hf) or truncate silently; unchanged when the context is unknown."""
    context = model_context_length(model_args)
    if context is None:
        return max_gen_toks
    requested = max_gen_toks
    if requested is None:
        template = (Path(tasks_path()) / TEMPLATE_NAME).read_text()
        requested = int(re.search(r"^  max_gen_toks: (\d+)$", template, re.MULTILINE).group(1))
    allowed = context - min(PROMPT_RESERVE, context // 2)
    if requested <= allowed:
        return max_gen_toks
    _warn_once(
        f"sd_bench: max_gen_toks {requested} does not fit the model's context of {context} tokens; generating "
        f"at most {allowed} new tokens ({context} - {context - allowed} for the prompt)"
    )
    return allowed


def task_manager(
    k: int | None = None,
    thinking: str = "on",
    max_gen_toks: int | None = None,
    model_args: str | dict | None = None,
    metadata: dict | None = None,
    include_defaults: bool = True,
):
    """A ready TaskManager for `lm_eval.simple_evaluate(..., task_manager=...)`.

    simple_evaluate passes model_args to tasks only when it builds the TaskManager itself, so give the same
    `model_args` here (the tasks read the tokenizer and chat template from them). `include_defaults=False`
    skips indexing lm-eval's ~10k built-in YAMLs (seconds) when only sd-bench tasks are needed.
    """
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import simple_parse_args_string

    args = simple_parse_args_string(model_args) if isinstance(model_args, str) else dict(model_args or {})
    max_gen_toks = clamp_max_gen_toks(max_gen_toks, args)  # issue 8, item 7
    default = k is None and thinking == "on" and max_gen_toks is None
    settings = {"k": k, "thinking": thinking, "max_gen_toks": max_gen_toks}
    # lm-eval's own folder (with the wheel's copy) is indexed too: no double registration
    if include_defaults:
        path = str(include_path(**settings))
    else:
        path = tasks_path() if default else str(write_tasks(**settings))
    return TaskManager(include_path=path, include_defaults=include_defaults, metadata=args | (metadata or {}))


# ---------------------------------------------------------------- `sd-bench tasks-path`


def add_arguments(parser) -> None:
    parser.add_argument("--k", type=int, default=None, help="samples per problem (paper: 16)")
    parser.add_argument(
        "--thinking",
        choices=("on", "off"),
        default="on",
        help="on: temperature 0.6, top_p 0.95; off: 0.7 / 0.8 and enable_thinking=False",
    )
    parser.add_argument("--max-gen-toks", type=int, default=None, help="max new tokens (paper: 38912)")
    parser.add_argument(
        "--out",
        default=None,
        help="write a full copy into this folder (default: print the shared folder under $SD_BENCH_CACHE/tasks "
        "holding what lm-eval's own copy lacks)",
    )


def run(args) -> int:
    """Print the folder for `--include_path` (`include_path`), or write a full copy into `--out`."""
    if args.out is None:
        print(include_path(k=args.k, thinking=args.thinking, max_gen_toks=args.max_gen_toks))
    else:
        print(write_tasks(args.out, k=args.k, thinking=args.thinking, max_gen_toks=args.max_gen_toks))
    return 0
