"""The problems a training run learns from: the `smoke` sums, a JSONL file, or a named / parquet set, as the
paper's code prepares them (rows as in the file, prompts over `data.max_prompt_tokens` dropped).

Both training loops import this module (the SFT loop never imports the on-policy loop's internals), and the
CLI calls `check_data_files` before any model loads, so a bad data file fails in a second, not after the
model is in memory.

Paper code for each rule: verl/utils/dataset/rl_dataset.py `RLHFDataset` (the whole parquet, repeats
included; `maybe_filter_out_long_prompts` keeps a row when `len(tokenizer.apply_chat_template(messages,
add_generation_prompt=True, **apply_chat_template_kwargs)) <= max_prompt_length`), with verl/trainer/config
user.yaml `data.max_prompt_length: 2048`, `filter_overlong_prompts: True`, `shuffle: True` (then
verl/trainer/main_ppo.py `create_rl_sampler`: a RandomSampler over the rows, i.e. an epoch-wise permutation:
sd_bench.train.runtime.Sampler).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from sd_bench import jsonl
from sd_bench.data import DataError
from sd_bench.problems import Problem
from sd_bench.prompts import problem_prompt, render
from sd_bench.train.config import DataConfig


def smoke_problems() -> list[Problem]:
    """8 one-digit sums: the `smoke` data set (answers are short, so `contains_answer` sees successes)."""
    out = []
    for i, (a, b) in enumerate([(1, 2), (2, 5), (3, 4), (1, 7), (4, 4), (2, 3), (5, 1), (3, 6)]):
        q = f"What is {a} + {b}?"
        out.append(
            Problem(
                id=f"smoke-{i}",
                question=q,
                prompt=problem_prompt(q),
                answer=str(a + b),
                solution=f"{a} + {b} = {a + b}, so the answer is \\boxed{{{a + b}}}.",
                kind="math",
                source="smoke",
            )
        )
    return out


def read_jsonl(path: Path, what: str) -> list[tuple[int, dict]]:
    """(line number, object) per non-blank line (sd_bench.jsonl); every failure is one DataError naming the
    file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file ({what} JSONL)")
    rows = list(jsonl.records(path, DataError))
    if not rows:
        raise DataError(f"{path}: no {what}s (the file is empty)")
    return rows


def text_field(path: Path, n: int, rec: dict, *names: str, required: bool = True) -> str | None:
    """The first of `names` present in `rec`, as text: null or a non-string/number value is an error."""
    for name in names:
        if name in rec:
            value = rec[name]
            if value is None:
                raise DataError(f"{path}:{n}: field `{name}` is null; give it a value or drop the line")
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise DataError(f"{path}:{n}: field `{name}` must be text, got {type(value).__name__}")
            if isinstance(value, str) and not value.strip():
                raise DataError(f"{path}:{n}: field `{name}` is empty")
            return str(value)
    if required:
        raise DataError(f"{path}:{n}: needs {' or '.join(f'`{x}`' for x in names)}, got {sorted(rec)}")
    return None


def problems_from_jsonl(path: Path) -> list[Problem]:
    """{id?, question|prompt, answer, solution?, kind?} per line."""
    path = Path(path)
    out = []
    for n, rec in read_jsonl(path, "problem"):
        question = text_field(path, n, rec, "question", "prompt")
        answer = text_field(path, n, rec, "answer")
        prompt = text_field(path, n, rec, "prompt", required=False)
        out.append(
            Problem(
                id=str(rec.get("id", n)),
                question=question,
                prompt=prompt or problem_prompt(question),
                answer=answer,
                solution=text_field(path, n, rec, "solution", required=False) if "solution" in rec else None,
                kind=text_field(path, n, rec, "kind", required=False) or "math",
                source=str(path),
            )
        )
    return out


@dataclass
class TrainingSet:
    """The problems, and what was done to get them (printed at the start of a run)."""

    problems: list[Problem]
    loaded: int  # rows loaded (after data.max_problems)
    distinct: int  # distinct prompts among them
    too_long: int = 0  # dropped: prompt longer than data.max_prompt_tokens
    notes: list[str] = field(default_factory=list)

    def summary(self, cfg: DataConfig) -> str:
        parts = [f"{len(self.problems)} problems", f"{self.distinct} distinct"]
        if cfg.max_prompt_tokens is not None:
            parts.append(f"{self.too_long} dropped with a prompt over {cfg.max_prompt_tokens} tokens")
        return f"data: {cfg.name} ({', '.join(parts + self.notes)})"


def load_training_set(cfg: DataConfig, tokenizer=None, template_kwargs: dict | None = None) -> TrainingSet:
    """`smoke`, a JSONL path, or a set name / parquet path for sd_bench.data.load_problems; then the first
    `data.max_problems`; then, given a tokenizer, the prompt-length filter (the order of verl's RLHFDataset:
    `max_samples` selection, then `maybe_filter_out_long_prompts`)."""
    if cfg.name == "smoke":
        problems = smoke_problems()
    elif cfg.name.endswith((".jsonl", ".json")):
        problems = problems_from_jsonl(Path(cfg.name))
    else:
        from sd_bench.data import load_problems

        problems = list(load_problems(cfg.name, dedupe=cfg.dedupe))
        if cfg.dedupe:  # the pinned sets keep their repeats in load_problems; dedupe them here
            seen: set[tuple[str, str]] = set()
            problems = [
                p for p in problems if not ((p.prompt, p.answer) in seen or seen.add((p.prompt, p.answer)))
            ]
    if cfg.max_problems is not None:
        problems = problems[: cfg.max_problems]
    loaded = len(problems)
    too_long = 0
    if tokenizer is not None and cfg.max_prompt_tokens is not None:
        lengths = prompt_lengths(problems, tokenizer, template_kwargs or {})
        kept = [p for p in problems if lengths[p.prompt] <= cfg.max_prompt_tokens]
        too_long, problems = len(problems) - len(kept), kept
    if not problems:
        why = f" (all {loaded} prompts are longer than data.max_prompt_tokens={cfg.max_prompt_tokens})"
        raise DataError(f"data.name={cfg.name!r}: no problems to train on{why if too_long else ''}")
    return TrainingSet(problems, loaded, len({p.prompt for p in problems}), too_long)


def prompt_lengths(problems: list[Problem], tokenizer, template_kwargs: dict) -> dict[str, int]:
    """Token count of each distinct prompt as the trainer feeds it: chat template + generation prompt (what
    verl's filter measures), tokenised once per distinct prompt (the Hub file repeats each ~100 times)."""
    out: dict[str, int] = {}
    for p in problems:
        if p.prompt not in out:
            text = render(tokenizer, p.prompt, **template_kwargs)
            out[p.prompt] = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return out


def load_training_problems(
    cfg: DataConfig, tokenizer=None, template_kwargs: dict | None = None, *, verbose: bool = True
) -> list[Problem]:
    """`load_training_set`'s problems; prints its one-line summary (the data actually used) when `verbose`."""
    data = load_training_set(cfg, tokenizer, template_kwargs)
    if verbose:
        print(data.summary(cfg), file=sys.stderr)
    return data.problems


def check_data_files(cfg) -> None:
    """Load the data before any model loads, so a bad file or an unavailable set fails in seconds: a JSONL
    of problems (on-policy) or traces (SFT), or a named / parquet set (memoised by sd_bench.data, so the
    trainer's own load later costs nothing)."""
    name = cfg.data.name
    if name == "smoke":
        return
    if cfg.algorithm == "sft":
        from sd_bench.train.sft import load_traces

        load_traces(Path(name))
    elif name.endswith((".jsonl", ".json")):
        problems_from_jsonl(Path(name))
    else:
        from sd_bench.data import known_sets

        if name not in known_sets() and not Path(name).expanduser().exists():
            raise DataError(
                f"data.name={name!r}: not a known set ({', '.join(['smoke', *known_sets()])}) and no such "
                "file or folder (a .jsonl of problems or a .parquet file / folder)"
            )
        from sd_bench.data import load_problems

        load_problems(name, dedupe=cfg.data.dedupe)
