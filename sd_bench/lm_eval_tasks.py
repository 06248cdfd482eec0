"""lm-eval hooks for the paper's math tasks, and where lm-eval finds them.

The task YAMLs in `tasks/` (installed into lm-eval's own task folder by the wheel) call the functions here:
`load_dataset` (custom_dataset), `doc_to_text`, `keep_all` (filter) and `process_results`.

    lm_eval --tasks sd_ood_math --model vllm --model_args pretrained=Qwen/Qwen3-8B
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

Metrics, each a mean over the task's problems, with k responses y_1..y_k per problem:
  acc = mean_i [correct(y_i)] (avg@k); pass_at_k = [any_i correct(y_i)];
  epistemic_count = mean_i E(y_i); epistemic_per_1k_tokens = mean_i 1000 E(y_i) / max(tokens(y_i), 1);
  response_tokens = mean_i tokens(y_i) (the model's tokenizer, no special tokens);
  answer_rate = mean_i [y_i has a final \\boxed{} answer]; marker_<m> = mean_i count_m(y_i) for each marker.
When no tokenizer can be resolved, the length metrics are `response_chars` / `epistemic_per_1k_chars` instead
(one warning; never mixed within a run). Sample logs carry the k responses and the per-doc marker means;
`sd-bench markers` recomputes exact per-response counts from them.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
from pathlib import Path

from sd_bench import atomic
from sd_bench.answer import grade
from sd_bench.markers import MARKERS, marker_counts

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
        return lambda texts: [len(e.ids) for e in encode(list(texts), add_special_tokens=False)]
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
    return doc["input"]


def keep_all(resps, docs):
    """Filter: keep all k responses per doc (lm-eval's default keeps only the first)."""
    return [list(r) for r in resps]


# ---------------------------------------------------------------- scoring (process_results hook)


def score_responses(
    responses: list[str], gold: str, tokenizer: str = "", kind: str = "math"
) -> dict[str, float]:
    """The per-problem metrics of k responses (module docstring has the equations).

    `kind` picks the answer checker (`sd_bench.answer.grade`): "math" for the paper's sets, "toy" for the
    miniature world's tasks, which reuse these hooks with a `kind` field in their docs.
    Cost: the token count (one BPE pass over every response) dominates, so all k responses are counted in
    one batched call; each response is graded once and lower-cased once (in `marker_counts`).
    """
    count = batch_token_counter(tokenizer) if tokenizer else None
    unit = "tokens" if count is not None else "chars"
    lengths = count(responses) if count is not None else [len(text) for text in responses]
    k = max(len(responses), 1)
    correct = answered = e_sum = rate_sum = 0.0
    per_marker = dict.fromkeys(MARKERS, 0)
    for text, n in zip(responses, lengths):
        g = grade(kind, text, gold)
        counts = marker_counts(text)
        e = sum(counts.values())
        correct += g.correct
        answered += g.extracted is not None
        e_sum += e
        rate_sum += 1000.0 * e / max(n, 1)
        for m, c in counts.items():
            per_marker[m] += c
    metrics = {
        "acc": correct / k,
        "pass_at_k": float(correct > 0),
        "epistemic_count": e_sum / k,
        f"epistemic_per_1k_{unit}": rate_sum / k,
        f"response_{unit}": sum(lengths) / k,
        "answer_rate": answered / k,
    }
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
    """The task folder: `tasks/` of a source checkout, else the copy installed into lm_eval/tasks/sd_bench.

    Also the `lm_eval.tasks` entry point, for lm-eval releases that discover tasks that way.
    """
    repo_tasks = Path(__file__).resolve().parent.parent / "tasks"
    if (repo_tasks / TEMPLATE_NAME).is_file():
        return str(repo_tasks)
    import lm_eval

    installed = Path(lm_eval.__file__).resolve().parent / "tasks" / "sd_bench"
    if (installed / TEMPLATE_NAME).is_file():
        return str(installed)
    raise FileNotFoundError(
        f"sd-bench task YAMLs not found in {repo_tasks} or {installed}; reinstall sd-bench"
    )


def _sub_once(pattern: str, repl: str, text: str) -> str:
    new, n = re.subn(pattern, repl, text, flags=re.MULTILINE)
    if n != 1:
        raise RuntimeError(f"{TEMPLATE_NAME}: expected one line matching {pattern!r}, found {n}")
    return new


def write_tasks(
    dest: str | os.PathLike | None = None,
    k: int | None = None,
    thinking: str = "on",
    max_gen_toks: int | None = None,
) -> Path:
    """Copy the task folder with other decoding settings (same task names), atomically; returns the folder.

    Pass it as `--include_path`: lm-eval lets later include paths override the installed tasks.
    """
    if thinking not in SAMPLING:
        raise ValueError(f"thinking must be 'on' or 'off', got {thinking!r}")
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    src = Path(tasks_path())
    if dest is None:
        from sd_bench.data import cache_dir

        dest = cache_dir() / "tasks" / f"k{k or 'default'}-thinking-{thinking}-max{max_gen_toks or 'default'}"
    dest = Path(dest)
    with atomic.atomic_dir(dest) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
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
    return dest


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

    default = k is None and thinking == "on" and max_gen_toks is None
    path = tasks_path() if default else str(write_tasks(k=k, thinking=thinking, max_gen_toks=max_gen_toks))
    args = simple_parse_args_string(model_args) if isinstance(model_args, str) else dict(model_args or {})
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
    parser.add_argument("--out", default=None, help="folder to write (default: under $SD_BENCH_CACHE/tasks)")


def run(args) -> int:
    if args.k is None and args.thinking == "on" and args.max_gen_toks is None and args.out is None:
        print(tasks_path())
    else:
        print(write_tasks(args.out, k=args.k, thinking=args.thinking, max_gen_toks=args.max_gen_toks))
    return 0
