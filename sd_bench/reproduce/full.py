"""`sd-bench reproduce --scale small|paper`: the real-model stages (GPU; vLLM when installed, else HF).

The protocol plan (plan.py, from checkpoints_manifest.yaml) already says WHAT each stage does; this module
says HOW, with the paper's models and data and sd-bench's real pieces:

    generate  sample with vLLM (`vllm.LLM` + SamplingParams(n, temperature, top_p, max_tokens, seed)), or
              transformers `generate` when vLLM is not importable; prompts are the paper's user turns
              (sd_bench.prompts) rendered with the model's chat template; graded with sd_bench.answer.grade;
              traces written as JSONL atomically.
    train     `sd-bench train <recipe> --scale <scale>` in-process (sd_bench.train.cli), or under a launcher
              (`--set train_launcher="torchrun --nproc-per-node 4 -m sd_bench.cli train"`) for models that
              do not fit one GPU with full fine-tuning.
    evaluate  `lm_eval.simple_evaluate` (model "vllm" when importable, else "hf") on the sd-bench tasks with
              the stage's k / temperature / top_p / max tokens / thinking (lm_eval_tasks.task_manager);
              one sd-bench result file per task and group (`tables.from_lm_eval`), per-sample logs
              `samples_<task>.jsonl` for `sd-bench markers eval/<cond> eval/<base>`.
    render    plan.render_table_run (sd_bench.tables: ours beside the paper).

    sd-bench reproduce --table 2 --scale small --output out/t2-small      # Qwen3-1.7B, one GPU
    sd-bench reproduce --table 2 --scale paper --output out/t2-paper      # DeepSeek-R1-Distill-Qwen-7B
    sd-bench reproduce --table 1 --scale small --output out/t1-small      # the context-richness probe

    sd-bench reproduce --table 3 --scale paper --output out/t3            # coverage sweep, Qwen3-8B no-think
    sd-bench reproduce --figure 3 --scale small --output out/f3 --set conditions=r1_7b_sdpo_s

Implemented here: Tables 1, 2, 3 and Figures 3-8. On-policy targets (Table 3, figures) are plan.py's protocol
(`_onpolicy`): the base evaluated at step 0, each run trained in place (resumable, a checkpoint every
`eval_every` steps), its `checkpoint-<N>/model` evaluated at every `eval_every` step and `final/` at the last,
then the table (final train score from metrics.jsonl + OOD accuracy) or the figure (sd_bench.plots: curves
from metrics.jsonl and the evaluations; Figure 4: per-marker deltas of the last evaluation vs step 0).

Table 2 (PAPER.md): D_ug = correct responses of the base to plain DAPO prompts (the first `keep_correct`:
800 at paper scale, 200 small); D_sg = for each D_ug problem, a response of the base to the hint prompt
carrying that correct response s (its <think> included, PAPER.md "c = s"), kept when correct and stored
with the PLAIN prompt, so SFT teaches the student to answer the plain problem the way the guided model did.
Departures: one guided sample per D_ug problem, so |D_sg| <= |D_ug| (the paper keeps 800 of each; the
solution-guided solve rate is ~98%, Table 1); DAPO problems are visited in a seeded random order.

`--set key=value` (repeatable; `sd-bench reproduce --help`) changes a run without editing code. Every value
ends up in the stage params, so `--dry-run` shows it and `.sd-bench/plan-<target>.json` records it:

    model=PATH|ID           replace every base model (e.g. a local copy, or a tiny model for a CPU check)
    data=SET                the DAPO set traces are sampled from (default dapo_math_17k: the Hub or
                            $SD_BENCH_DATA_DIR/math/dapo_math_17k/; offline: dapo_seen_512 etc.)
    candidates=N            at most N DAPO problems sampled for D_ug (default 3 x keep_correct)
    keep_correct=N          traces kept per set
    require_correct=false   fill up to keep_correct with INCORRECT traces when too few are correct (only for
                            checking the pipeline with a model that solves nothing; never for results)
    k=N, max_new_tokens=N   evaluation samples per problem / generation limit (all stages)
    limit=N                 evaluate only the first N problems of each task
    backend=auto|vllm|hf    generation and evaluation backend (auto: vllm when importable)
    dtype=auto|bfloat16|float32   (auto: bfloat16 on GPU, float32 on CPU)
    eval_batch_size=..., gen_batch_size=N   batch sizes of the hf backend (vLLM schedules itself)
    gpu_memory_utilization=F                vLLM's share of GPU memory (default 0.85)
    train.<key>=<value>     a trainer override (sd_bench/train/config.py keys), e.g. train.model.finetune=lora
    train_launcher=CMD      run the trainer as `CMD <recipe> ...` in a subprocess instead of in-process
    steps=N, eval_every=M   on-policy: train N steps, checkpoint and evaluate every M (scale default: small 30/10,
                            paper 100/20); the evaluation stages follow
    conditions=A,B          on-policy: only these runs (and their step-0 base), e.g. one |D| of Table 3 per GPU
"""

from __future__ import annotations

import difflib
import gc
import json
import random
import re
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

from sd_bench.reproduce.io import (
    jsonl_text,
    lm_eval_run,
    lm_eval_summary,
    probe_result,
    read_jsonl,
    run_trainer,
    sample_rows,
)
from sd_bench.reproduce.plan import (
    PROFILES,
    Plan,
    PlanError,
    PlanRequest,
    StageContext,
    implement,
    protocol_plan,
    register,
)

DEFAULT_DATA = "dapo_math_17k"  # PAPER.md "Data": the training set every trace is sampled from
CANDIDATE_FACTOR = 3  # D_ug: sample up to 3 x keep_correct DAPO problems (solve rate ~30-60%)
GEN_ROUND = 1024  # problems per generation round: stop sampling once keep_correct traces are correct
PROMPT_MARGIN = 2048  # vLLM max_model_len = prompt budget + max_new_tokens (hint prompts add a solution)
GPU_MEMORY_UTILIZATION = 0.85  # leave room for the trainer's allocator remnants between stages
HF_GEN_BATCH = 16
HF_EVAL_BATCH = 16
CHECKPOINT_NAME = re.compile(r"^checkpoint-\d+$")  # sd_bench/train/checkpoint.py: checkpoint-<step>/model/

# --set keys -> type. `train.<key>` entries pass through to the trainer unchanged.
SETTINGS: dict[str, type] = {
    "model": str,
    "data": str,
    "candidates": int,
    "keep_correct": int,
    "require_correct": bool,
    "k": int,
    "max_new_tokens": int,
    "limit": int,
    "backend": str,
    "dtype": str,
    "eval_batch_size": str,
    "gen_batch_size": int,
    "gpu_memory_utilization": float,
    "train_launcher": str,
    "steps": int,
    "eval_every": int,
    "conditions": str,
}
CHOICES = {"backend": ("auto", "vllm", "hf"), "dtype": ("auto", "bfloat16", "float16", "float32")}


# --- settings ----------------------------------------------------------------------------------------


def parse_settings(raw: dict[str, Any] | None) -> dict[str, Any]:
    """`--set` values (strings) -> typed settings; an unknown key names the closest valid one."""
    out: dict[str, Any] = {}
    for key, value in (raw or {}).items():
        if key.startswith("train."):
            if len(key) == len("train."):
                raise PlanError("--set train.<key>=<value>: the trainer key is missing")
            out[key] = value
            continue
        if key not in SETTINGS:
            close = difflib.get_close_matches(key, list(SETTINGS) + ["train.<key>"], n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise PlanError(
                f"--set {key}={value}: unknown setting{hint} (settings: {', '.join(SETTINGS)}, train.<key>)"
            )
        typ = SETTINGS[key]
        try:
            if typ is bool:
                if str(value).lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(value)
                v: Any = str(value).lower() in ("1", "true", "yes", "on")
            else:
                v = typ(value)
        except ValueError:
            raise PlanError(f"--set {key}={value}: expected a {typ.__name__}") from None
        if key in CHOICES and v not in CHOICES[key]:
            raise PlanError(f"--set {key}={value}: expected one of {', '.join(CHOICES[key])}")
        out[key] = v
    return out


def _vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:  # noqa: BLE001  missing, or installed without a usable backend
        return False
    return True


def _backend(p: dict) -> str:
    b = p.get("backend", "auto")
    if b == "auto":
        return "vllm" if _vllm_available() else "hf"
    if b == "vllm" and not _vllm_available():
        raise RuntimeError("--set backend=vllm but `import vllm` fails; install vllm or use backend=hf")
    return b


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _dtype(p: dict) -> str:
    d = p.get("dtype", "auto")
    if d == "auto":
        return "bfloat16" if _device() == "cuda" else "float32"
    return d


def _split_ref(ref: str) -> tuple[str, str | None]:
    """'org/name@rev' -> ('org/name', 'rev'); local paths and bare ids -> (ref, None)."""
    if "@" in ref and not Path(ref).exists():
        name, rev = ref.rsplit("@", 1)
        return name, rev
    return ref, None


def resolve_model(ctx: StageContext, ref: str) -> tuple[str, str | None, str | None]:
    """(model to load, revision, LoRA adapter folder or None) for a stage's model reference.

    `runs/<cond>/final` under the output folder: a full HF folder, or a PEFT adapter (adapter_config.json)
    whose base model is read from the adapter's config. `runs/<cond>/checkpoint-<N>` (the on-policy curves'
    intermediate evaluations): the trainer keeps the weights in its `model/` subfolder, beside the optimizer
    and RNG state (sd_bench/train/checkpoint.py), so that subfolder is what gets loaded.
    """
    local = ctx.path(ref)
    if not Path(ref).is_absolute() and local.exists():
        if CHECKPOINT_NAME.match(local.name) and (local / "model").is_dir():
            local = local / "model"
        if (local / "adapter_config.json").is_file():
            base = json.loads((local / "adapter_config.json").read_text()).get("base_model_name_or_path")
            if not base:
                raise RuntimeError(f"{local}/adapter_config.json: no base_model_name_or_path")
            return base, None, str(local)
        if not (local / "config.json").is_file():
            raise FileNotFoundError(
                f"stage '{ctx.stage.name}': {local} has no config.json or adapter_config.json"
            )
        return str(local), None, None
    name, rev = _split_ref(ref)
    return name, rev, None


# --- sampling (vLLM or transformers) -----------------------------------------------------------------


def sample(
    model: str,
    user_turns: list[str],
    *,
    n: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
    thinking: bool,
    backend: str,
    dtype: str,
    revision: str | None = None,
    batch_size: int = HF_GEN_BATCH,
    gpu_memory_utilization: float = GPU_MEMORY_UTILIZATION,
    progress=None,
) -> list[list[tuple[str, int]]]:
    """n responses per user turn: (text, tokens), tokens = the model tokenizer's count without special tokens
    (PAPER.md "Response length"). Prompts: the chat template with the generation prompt (sd_bench.prompts),
    tokenized without adding special tokens (the template already holds BOS where the model wants one)."""
    from sd_bench.prompts import render

    kw = {} if thinking else {"enable_thinking": False}
    if backend == "vllm":
        from vllm import LLM, SamplingParams

        llm = LLM(
            model=model,
            revision=revision,
            seed=seed,
            dtype=dtype,
            max_model_len=2 * max_new_tokens + PROMPT_MARGIN,  # hint prompts carry a solution of <= max_new
            gpu_memory_utilization=gpu_memory_utilization,
        )
        try:
            tok = llm.get_tokenizer()
            prompts = [
                {"prompt_token_ids": tok(render(tok, u, **kw), add_special_tokens=False)["input_ids"]}
                for u in user_turns
            ]
            params = SamplingParams(
                n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed
            )
            outs = llm.generate(prompts, params)
            texts = [[c.text for c in o.outputs] for o in outs]
        finally:
            del llm
            _free_memory()
    else:
        texts, tok = _hf_generate(
            model,
            user_turns,
            kw,
            n,
            temperature,
            top_p,
            max_new_tokens,
            seed,
            dtype,
            revision,
            batch_size,
            progress,
        )
    return [[(t, len(tok(t, add_special_tokens=False)["input_ids"])) for t in row] for row in texts]


def _hf_generate(
    model_name, user_turns, kw, n, temperature, top_p, max_new, seed, dtype, revision, batch, progress
):
    """transformers fallback: left-padded batches, `generate(do_sample=True, num_return_sequences=n)`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sd_bench.prompts import render

    tok = AutoTokenizer.from_pretrained(model_name, revision=revision)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    device = _device()
    model = AutoModelForCausalLM.from_pretrained(model_name, revision=revision, dtype=getattr(torch, dtype))
    model.to(device).eval()
    torch.manual_seed(seed)
    texts: list[list[str]] = []
    try:
        for i in range(0, len(user_turns), batch):
            rendered = [render(tok, u, **kw) for u in user_turns[i : i + batch]]
            enc = tok(rendered, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.no_grad():
                out = model.generate(
                    **enc,
                    do_sample=True,
                    temperature=temperature,
                    top_p=top_p,
                    max_new_tokens=max_new,
                    num_return_sequences=n,
                    pad_token_id=tok.pad_token_id,
                )
            resp = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            texts += [resp[j * n : (j + 1) * n] for j in range(len(rendered))]
            if progress:
                progress(min(i + batch, len(user_turns)), len(user_turns))
    finally:
        del model
        _free_memory()
    return texts, tok


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def _sample_stage(ctx: StageContext, model_ref: str, turns: list[str], n: int, seed: int, progress=None):
    p = ctx.stage.params
    model, rev, adapter = resolve_model(ctx, model_ref)
    if adapter:
        raise RuntimeError(
            f"stage '{ctx.stage.name}': generation from a LoRA adapter ({adapter}) is not supported"
        )
    return sample(
        model,
        turns,
        n=n,
        temperature=p["temperature"],
        top_p=p["top_p"],
        max_new_tokens=p["max_new_tokens"],
        seed=seed,
        thinking=p.get("thinking", True),
        backend=_backend(p),
        dtype=_dtype(p),
        revision=rev,
        batch_size=p.get("gen_batch_size", HF_GEN_BATCH),
        gpu_memory_utilization=p.get("gpu_memory_utilization", GPU_MEMORY_UTILIZATION),
        progress=progress,
    )


# --- Table 2: traces ---------------------------------------------------------------------------------


def _problems(set_name: str, seed: int):
    """The DAPO set in a seeded random order (deduplicated by id: the 1x64 / 8x8 subsets repeat rows)."""
    from sd_bench.data import load_problems

    seen: set[str] = set()
    problems = [q for q in load_problems(set_name) if not (q.id in seen or seen.add(q.id))]
    random.Random(seed).shuffle(problems)
    return problems


def _trace(q, response: str, tokens: int, correct: bool, **extra) -> dict:
    from sd_bench.markers import epistemic_count

    return {
        "id": q.id,
        "prompt": q.prompt,  # the PLAIN user turn: what sd_bench/train/sft.py renders for SFT
        "response": response,
        "answer": q.answer,
        "correct": correct,
        "tokens": tokens,
        "epistemic_count": epistemic_count(response),
        **extra,
    }


def _keep(rows: list[dict], keep: int, require_correct: bool) -> list[dict]:
    kept = [r for r in rows if r["correct"]][:keep]
    if not require_correct:  # pipeline checks only (module docstring): fill up with incorrect traces
        kept += [r for r in rows if not r["correct"]][: keep - len(kept)]
    return kept


def generate_traces(ctx: StageContext) -> None:
    """D_ug (plain prompts, sampled in rounds until keep_correct are correct) or D_sg (hint prompt with the
    D_ug response as s). Writes the traces JSONL and a .stats.json beside it."""
    from sd_bench import provenance
    from sd_bench.answer import grade
    from sd_bench.prompts import hint_prompt

    p = ctx.stage.params
    keep, strict = p["keep_correct"], p.get("require_correct", True)
    guided = p["traces"] == "solution_guided"
    t0 = time.monotonic()
    problems = _problems(p["data"], ctx.seed)
    rows: list[dict] = []
    sampled = 0
    if guided:
        by_id = {q.id: q for q in problems}
        src = read_jsonl(ctx.path(ctx.stage.inputs[0]))
        missing = [r["id"] for r in src if r["id"] not in by_id]
        if missing:
            raise RuntimeError(f"{ctx.stage.inputs[0]}: problem {missing[0]} is not in set {p['data']!r}")
        qs = [by_id[r["id"]] for r in src]
        turns = [hint_prompt(q.prompt, r["response"]) for q, r in zip(qs, src)]
        ctx.report(0, len(turns), "sampling (solution-guided)")
        out = _sample_stage(ctx, ctx.stage.model, turns, p["k"], ctx.seed * 1000 + 2)
        for q, r, resp in zip(qs, src, out):
            for text, n in resp:
                rows.append(
                    _trace(q, text, n, grade(q.kind, text, q.answer).correct, guide_tokens=r["tokens"])
                )
        sampled = len(rows)
    else:
        pool = problems[: p["candidates"]]
        for start in range(0, len(pool), GEN_ROUND):
            if sum(r["correct"] for r in rows) >= keep:
                break
            qs = pool[start : start + GEN_ROUND]
            ctx.report(sum(r["correct"] for r in rows), keep, f"sampling problems {start}-{start + len(qs)}")
            out = _sample_stage(
                ctx, ctx.stage.model, [q.prompt for q in qs], p["k"], ctx.seed * 1000 + 1 + start
            )
            for q, resp in zip(qs, out):
                for text, n in resp:
                    rows.append(_trace(q, text, n, grade(q.kind, text, q.answer).correct))
            sampled += len(qs) * p["k"]
    kept = _keep(rows, keep, strict)
    if not kept:
        raise RuntimeError(
            f"no correct {p['traces']} trace among {sampled} samples of {ctx.stage.model}; raise "
            "--set candidates=N or max_new_tokens (responses cut at the limit have no answer)"
        )
    out_path = ctx.stage.outputs[0]
    ctx.write_text(out_path, jsonl_text(kept))
    n_correct = sum(r["correct"] for r in rows)
    stats = {
        "traces": p["traces"],
        "model": ctx.stage.model,
        "data": p["data"],
        "sampled": sampled,
        "correct": n_correct,
        "solve_rate": n_correct / max(sampled, 1),
        "kept": len(kept),
        "kept_incorrect": sum(not r["correct"] for r in kept),
        "require_correct": strict,
        "mean_tokens": sum(r["tokens"] for r in kept) / len(kept),
        "mean_epistemic_count": sum(r["epistemic_count"] for r in kept) / len(kept),
        "sampling": {k: p.get(k) for k in ("k", "temperature", "top_p", "max_new_tokens", "thinking")},
        "backend": _backend(p),
        "seed": ctx.seed,
        "wall_time_s": round(time.monotonic() - t0, 3),
    }
    from sd_bench.data import provenance as data_provenance

    stats["provenance"] = {**provenance.collect(), "data": data_provenance(p["data"])}
    ctx.write_json(out_path.replace(".jsonl", ".stats.json"), stats)
    ctx.report(len(kept), keep)


# --- training ----------------------------------------------------------------------------------------


def train(ctx: StageContext) -> None:
    """`sd-bench train <recipe> --scale <scale> --output runs/<cond> key=value...` with the plan's overrides.

    SFT trains into a temporary folder renamed into place (a crash restarts the short run); on-policy runs
    train in place with `--resume`, so a crash loses at most the steps since the last checkpoint.
    """
    p = ctx.stage.params
    cond = p["condition"]
    overrides = dict(p.get("overrides", {}))
    data = ctx.stage.inputs[-1] if len(ctx.stage.inputs) > 1 else None
    if data:
        overrides["data.name"] = str(ctx.path(data)) if ctx.path(data).exists() else data
    overrides["run.seed"] = ctx.seed
    sft = ctx.stage.recipe == "sft"
    if not sft:
        overrides.setdefault("run.max_steps", p["steps"])
        overrides.setdefault("run.save_every", p.get("save_every", PROFILES[ctx.scale].eval_every))
    overrides.update(p.get("train_overrides", {}))
    args = [f"{k}={v}" for k, v in overrides.items()]
    scale = ctx.scale if ctx.scale in ("small", "paper") else "paper"
    launcher = p.get("train_launcher")

    def run_in(folder: Path, resume: bool) -> None:
        cmd = ["--scale", scale, "--output", str(folder), *(["--resume"] if resume else []), ctx.stage.recipe]
        if launcher:
            subprocess.run([*shlex.split(launcher), *cmd, *args], check=True)
        else:
            run_trainer(ctx.stage.recipe, folder, args, scale=scale, resume=resume)
        shown = " ".join(shlex.quote(a) for a in args).replace(str(ctx.out_dir) + "/", "")  # relative to DIR
        (folder / "command.txt").write_text(
            f"sd-bench train {ctx.stage.recipe} --scale {scale} --output runs/{cond} {shown}\n"
        )

    try:
        if sft:
            with ctx.atomic_dir(f"runs/{cond}") as tmp:
                run_in(tmp, resume=False)
        else:
            run_dir = ctx.path(f"runs/{cond}")
            run_dir.mkdir(parents=True, exist_ok=True)
            run_in(run_dir, resume=(run_dir / "config.yaml").is_file())
    finally:
        _free_memory()


# --- evaluation --------------------------------------------------------------------------------------


def _model_args(ctx: StageContext, backend: str, p: dict) -> tuple[str, str]:
    """(lm-eval model_args, the same with local paths replaced by the plan's reference)."""
    model, rev, adapter = resolve_model(ctx, ctx.stage.model)
    args = {"pretrained": model, "dtype": _dtype(p)}
    if rev:
        args["revision"] = rev
    if backend == "vllm":
        args.update(
            seed=ctx.seed,
            max_model_len=p["max_new_tokens"] + PROMPT_MARGIN,
            gpu_memory_utilization=p.get("gpu_memory_utilization", GPU_MEMORY_UTILIZATION),
        )
        if adapter:
            rank = json.loads((Path(adapter) / "adapter_config.json").read_text()).get("r", 64)
            args.update(enable_lora=True, lora_local_path=adapter, max_lora_rank=rank)
    elif adapter:
        args["peft"] = adapter
    text = ",".join(f"{k}={v}" for k, v in args.items())
    shown = text.replace(str(ctx.out_dir) + "/", "").replace(str(ctx.out_dir), ".")
    return text, shown


def evaluate(ctx: StageContext) -> None:
    """lm-eval on the stage's tasks (the sd_ood_math group when the tasks are its four members)."""
    from sd_bench import lm_eval_tasks, provenance, tables

    p = ctx.stage.params
    backend = _backend(p)
    model_args, shown = _model_args(ctx, backend, p)
    tasks = list(p["tasks"])
    group = [Path(o).stem for o in ctx.stage.outputs if Path(o).stem not in tasks and o.endswith(".json")]
    group = [g for g in group if g not in ("lm_eval_results",)]
    run_tasks = group or tasks
    thinking = "on" if p.get("thinking", True) else "off"
    tm = lm_eval_tasks.task_manager(
        k=p["k"],
        thinking=thinking,
        max_gen_toks=p["max_new_tokens"],
        model_args=model_args,
        include_defaults=False,
    )
    default = lm_eval_tasks.SAMPLING[thinking]
    gen_kwargs = None
    if (p["temperature"], p["top_p"]) != (default["temperature"], default["top_p"]):
        gen_kwargs = f"temperature={p['temperature']},top_p={p['top_p']}"
    ctx.report(0, None, f"lm-eval {','.join(run_tasks)} ({backend})")
    res, wall = lm_eval_run(
        seed=ctx.seed,
        model=backend,
        model_args=model_args,
        tasks=run_tasks,
        task_manager=tm,
        batch_size=p.get("eval_batch_size") or ("auto" if backend == "vllm" else HF_EVAL_BATCH),
        device=_device(),
        limit=p.get("limit"),
        gen_kwargs=gen_kwargs,
    )
    _free_memory()
    where = str(Path(ctx.stage.outputs[0]).parent)
    summary = lm_eval_summary(res)
    summary["config"]["model_args"] = shown
    raw = ctx.write_json(f"{where}/lm_eval_results.json", summary)
    per_task = sample_rows(res, tasks)
    for task, rows in per_task.items():
        ctx.write_text(f"{where}/samples_{task}.jsonl", jsonl_text(rows))  # `sd-bench markers` reads these
    results = {r["task"]: r for r in tables.from_lm_eval(raw, p["condition"], step=p.get("step"))}
    sampling = {k: p.get(k) for k in ("temperature", "top_p", "max_new_tokens", "thinking")}
    for out in ctx.stage.outputs:
        name = Path(out).stem
        if name == "samples":
            ctx.write_text(out, jsonl_text([r for rows in per_task.values() for r in rows]))
        elif name != "lm_eval_results":
            if name not in results:
                raise RuntimeError(f"lm-eval returned no results for {name} (got {sorted(results)})")
            stamped = provenance.stamp(
                results[name],
                model=ctx.stage.model,
                data=name,
                seed=ctx.seed,
                k=p["k"],
                sampling=sampling,
                wall_time_s=wall,
                limit=p.get("limit"),
                backend=backend,
                model_args=shown,
            )
            ctx.write_json(out, stamped)


# --- plans -------------------------------------------------------------------------------------------


def apply_settings(plan: Plan, req: PlanRequest, settings: dict[str, Any]) -> Plan:
    """Fill the protocol plan's stage params with the scale's defaults and the `--set` values."""
    base_refs = {st.model for st in plan.stages if st.model and not st.model.startswith("runs/")}
    train_overrides = {k.removeprefix("train."): v for k, v in settings.items() if k.startswith("train.")}
    shared = {k: settings[k] for k in ("backend", "dtype", "gpu_memory_utilization") if k in settings}
    for st in plan.stages:
        p = st.params
        if "model" in settings and st.model in base_refs:
            st.inputs = tuple(settings["model"] if i == st.model else i for i in st.inputs)
            st.model = settings["model"]
        if "max_new_tokens" in settings and "max_new_tokens" in p:
            p["max_new_tokens"] = settings["max_new_tokens"]
        if "k" in settings and st.kind == "evaluate":  # generation keeps its protocol k (traces: 1)
            p["k"] = settings["k"]
        if st.kind == "generate":
            p.update(shared)
            p.setdefault("data", settings.get("data", DEFAULT_DATA))
            if "keep_correct" in settings:
                p["keep_correct"] = settings["keep_correct"]
            if "keep_correct" in p:  # Table 2's traces (Table 1's selection sets its own, in _table1)
                p["candidates"] = settings.get("candidates", CANDIDATE_FACTOR * p["keep_correct"])
            p["require_correct"] = settings.get("require_correct", True)
            if "gen_batch_size" in settings:
                p["gen_batch_size"] = settings["gen_batch_size"]
        elif st.kind == "train":
            if "model" in settings:
                p["overrides"]["model.path"] = settings["model"]
            if "steps" in p:  # on-policy: a checkpoint at every evaluated step (the profile's eval_every)
                p["save_every"] = (getattr(req, "profile", None) or PROFILES[req.scale]).eval_every
            p["train_overrides"] = train_overrides
            if "train_launcher" in settings:
                p["train_launcher"] = settings["train_launcher"]
        elif st.kind == "evaluate":
            p.update(shared)
            for key in ("limit", "eval_batch_size"):
                if key in settings:
                    p[key] = settings[key]
            if "tasks" in p:  # lm-eval stages keep lm-eval's own summary beside the result files
                st.outputs = st.outputs + (f"{Path(st.outputs[0]).parent}/lm_eval_results.json",)
    if settings:
        plan.notes.append("--set " + " ".join(f"{k}={v}" for k, v in settings.items()))
    if settings.get("require_correct") is False:
        plan.notes.append("require_correct=false: traces may be INCORRECT (a pipeline check, not a result)")
    return plan


def _table2(req: PlanRequest) -> Plan:
    settings = parse_settings(getattr(req, "settings", None))
    plan = apply_settings(protocol_plan(req), req, settings)
    for st in plan.stages:
        if st.kind == "generate":
            st.params["traces"] = "unguided" if st.name.endswith("unguided") else "solution_guided"
            st.outputs = st.outputs + (st.outputs[0].replace(".jsonl", ".stats.json"),)
    return implement(plan, {"generate": generate_traces, "train": train, "evaluate": evaluate})


for _scale in ("small", "paper"):
    register("table2", _scale)(_table2)


# --- Table 1: context richness probe -----------------------------------------------------------------


def _selection_row(q, rate: float, solution: str) -> dict:
    return {
        "id": q.id,
        "prompt": q.prompt,
        "answer": q.answer,
        "kind": q.kind,
        "solve_rate": rate,
        "solution": solution,
    }


def t1_select(ctx: StageContext) -> None:
    """k plain responses per candidate DAPO problem; keep up to `problems` with solve rate in [1/8, 4/8],
    each with its first correct response as s (PAPER.md Table 1)."""
    from sd_bench.answer import grade

    p = ctx.stage.params
    lo, hi = p["solve_rate"]
    pool = _problems(p["data"], ctx.seed)[: p["candidates"]]
    kept: list[dict] = []
    rest: list[dict] = []
    for start in range(0, len(pool), GEN_ROUND):
        if len(kept) >= p["problems"]:
            break
        qs = pool[start : start + GEN_ROUND]
        ctx.report(len(kept), p["problems"], f"solve rates of problems {start}-{start + len(qs)}")
        out = _sample_stage(
            ctx, ctx.stage.model, [q.prompt for q in qs], p["k"], ctx.seed * 1000 + 11 + start
        )
        for q, resp in zip(qs, out):
            ok = [grade(q.kind, text, q.answer).correct for text, _ in resp]
            rate = sum(ok) / len(ok)
            if lo <= rate <= hi:
                kept.append(_selection_row(q, rate, resp[ok.index(True)][0]))
            else:
                rest.append(_selection_row(q, rate, resp[0][0]))
    kept = kept[: p["problems"]]
    if not p.get("require_correct", True):  # pipeline checks only: s may be an incorrect response
        kept += rest[: p["problems"] - len(kept)]
    if not kept:
        raise RuntimeError(
            f"no DAPO problem with solve rate in [{lo}, {hi}] among {len(pool)}; raise --set candidates=N"
        )
    ctx.write_text(ctx.stage.outputs[0], jsonl_text(kept))


def t1_generate(ctx: StageContext) -> None:
    """k responses per selected problem under one context (hint prompt with s, s\\think, or y_r)."""
    from sd_bench.answer import grade
    from sd_bench.markers import marker_counts
    from sd_bench.prompts import hint_prompt, strip_think

    p = ctx.stage.params
    context = p["context"]
    src = read_jsonl(ctx.path(ctx.stage.inputs[0]))
    if context == "y_r":  # y_r: a correct c = s response per problem (the first), as the hint
        first: dict[str, dict] = {}
        for r in src:
            if r["id"] not in first or (r["correct"] and not first[r["id"]]["correct"]):
                first[r["id"]] = r
        strict = p.get("require_correct", True)
        src = [{**r, "solution": r["response"]} for r in first.values() if r["correct"] or not strict]
    hint = {"none": None, "s": lambda s: s, "s_nothink": strip_think, "y_r": lambda s: s}[context]
    turns = [r["prompt"] if hint is None else hint_prompt(r["prompt"], hint(r["solution"])) for r in src]
    seed = ctx.seed * 1000 + 20 + ["none", "s", "s_nothink", "y_r"].index(context)
    out = _sample_stage(ctx, ctx.stage.model, turns, p["k"], seed)
    rows = []
    for r, resp in zip(src, out):
        for text, n in resp:
            counts = marker_counts(text)
            rows.append(
                {
                    "id": r["id"],
                    "prompt": r["prompt"],
                    "answer": r["answer"],
                    "kind": r["kind"],
                    "context": context,
                    "condition": p["condition"],
                    "response": text,
                    "tokens": n,
                    "correct": grade(r["kind"], text, r["answer"]).correct,
                    "epistemic_count": sum(counts.values()),
                    "markers": counts,
                }
            )
    ctx.write_text(ctx.stage.outputs[0], jsonl_text(rows))


def t1_evaluate(ctx: StageContext) -> None:
    """Score, length (tokens) and E(y) per context -> eval/<cond>/dapo_probe.json (Table 1's columns)."""
    for src, out in zip(ctx.stage.inputs, ctx.stage.outputs):
        rows = read_jsonl(ctx.path(src))
        k = len(rows) // max(len({r["id"] for r in rows}), 1)
        result = probe_result(
            Path(out).parent.name,
            "dapo_probe",
            rows,
            [r["markers"] for r in rows],
            "epistemic_count",
            k=k,
            source=src,
            model=ctx.stage.params.get("model"),
            data="dapo_probe",
            seed=ctx.seed,
        )
        ctx.write_json(out, result)


def _table1(req: PlanRequest) -> Plan:
    settings = parse_settings(getattr(req, "settings", None))
    plan = apply_settings(protocol_plan(req), req, settings)
    prof = PROFILES[req.scale]
    gens = [st for st in plan.stages if st.kind == "generate"]
    sampling = {k: v for k, v in gens[1].params.items() if k not in ("context",)}
    for st in gens:
        st.params = {**sampling, **st.params}
        if st.name == "generate/t1_select":
            st.params["k"] = 8  # PAPER.md Table 1: 8 samples per problem
            st.params["problems"] = settings.get("keep_correct", prof.probe_problems)
            st.params["candidates"] = settings.get("candidates", prof.probe_candidates)
            st.run = t1_select
        else:
            st.params["condition"] = st.name.removeprefix("generate/")
            st.run = t1_generate
    for st in plan.stages:
        if st.name == "evaluate/t1":
            st.params = {"model": gens[0].model}
            st.run = t1_evaluate
    return plan


for _scale in ("small", "paper"):
    register("table1", _scale)(_table1)


# --- Table 3 and Figures 3-8: on-policy runs, checkpoint evaluations, curves -------------------------


def _onpolicy_plan(req: PlanRequest) -> Plan:
    """The protocol's on-policy stages (plan._onpolicy: step-0 base, training, an evaluation every
    `eval_every` steps, render) with `train` and `evaluate` above.

    `--set steps=N eval_every=M` shorten the runs (every evaluation stage follows); `--set conditions=a,b`
    keeps the stages of those conditions (and their step-0 bases), e.g. one |D| of the sweep per GPU.
    """
    import dataclasses

    settings = parse_settings(getattr(req, "settings", None))
    if "steps" in settings or "eval_every" in settings:
        prof = PROFILES[req.scale]
        steps = settings.get("steps", prof.train_steps)
        every = settings.get("eval_every", min(prof.eval_every, steps))
        if not 0 < every <= steps:
            raise PlanError(f"--set eval_every={every}: expected 1 <= eval_every <= steps ({steps})")
        req = dataclasses.replace(req, profile=dataclasses.replace(prof, train_steps=steps, eval_every=every))
    plan = apply_settings(protocol_plan(req), req, settings)
    if "conditions" in settings:
        plan = _only(plan, settings["conditions"].split(","))
    return implement(plan, {"train": train, "evaluate": evaluate})


def _only(plan: Plan, keep: list[str]) -> Plan:
    """The plan restricted to `keep`'s train/evaluate stages, the step-0 evaluations of their bases, and
    the render stage (which renders what was measured)."""
    conds = {st.params.get("condition") for st in plan.stages if st.kind == "train"}
    unknown = [c for c in keep if c not in conds]
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(conds), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise PlanError(
            f"--set conditions: {unknown[0]} is not a condition of {plan.target}{hint} "
            f"(conditions: {', '.join(sorted(conds))})"
        )
    stages, base = [], None
    for st in plan.stages:
        cond = st.params.get("condition")
        if st.kind == "evaluate" and cond not in conds:  # a step-0 base: kept when a kept run follows it
            base = st
            continue
        if cond in keep and base is not None:
            stages.append(base)
            base = None
        if cond in keep or st.kind == "render":
            stages.append(st)
    plan.stages = stages
    plan.notes.append(f"conditions: only {', '.join(keep)}")
    return plan


for _scale in ("small", "paper"):
    register("table3", _scale)(_onpolicy_plan)
    for _n in range(3, 9):
        register(f"figure{_n}", _scale)(_onpolicy_plan)
