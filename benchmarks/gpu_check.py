"""Every GPU check of issue 11 in one call: one JSON line per figure on stdout and in OUT/figures.jsonl.

    python benchmarks/gpu_check.py --out OUT [--wheels DIR] [--budget-s 480]   # the GPU machine
    python benchmarks/gpu_check.py --out OUT --cpu                              # CI: the same code, tiny

Why one script: the GPU machine is lent for 15 minutes in all, has no internet, and lacks some of sd-bench's
dependencies; one prepared call that cannot stop halfway for a missing module gets every figure or none.
What the machine lacks comes as pure-Python wheels in `--wheels DIR`: each `*.whl` is unpacked (a wheel is a
zip: `python3 -m zipfile -e W.whl DIR` does the same) into one folder put first on sys.path and PYTHONPATH.
sd-bench itself runs from this source tree. Models are random-initialised at real shapes (nothing can be
downloaded there); token ids are random.

Checks, each with a baseline measured in the same run (or the project's H100 reference where none can be):
1. `matmul_peak`: bf16 [n, n] @ [n, n] matmuls, TFLOP/s (best of several): the MFU denominator; baseline:
   the same in fp32 (TF32 off) and the H100 figure the reference quotes (798).
2. `update`: benchmarks/bench_step.py at the Qwen3-1.7B shape (untied head, 2.03B), 512 prompt + 3,584
   response, 2k demonstration, top-100 + tail JSD, activation checkpointing: full fine-tuning with float32
   masters + bf16 compute batch 4 (the target: >= 50% of check 1), against pure bf16 (the reference's setting);
   LoRA r=64 all-linear batch 8 (target: response tokens/s >= full fine-tuning's); both again with
   liger-kernel (`model.liger=true`). Seconds per phase and peak memory for each.
3. `train_step`: one real `sd-bench train sdpo` step at that shape under the paper recipe's precision (HF
   rollouts, short generations; `teacher.context=answer` so every rollout has a teacher: a random model never
   solves a problem, so a sibling context would leave no sample with a loss): seconds per phase (rollout,
   teacher, student, optimizer, checkpoint) and peak memory; baseline: check 2's update per token.
4. `precision`: the SD loss and NLL on a small shape, same inputs and weights, in float32 (baseline), mixed
   precision (float32 masters + bf16 compute) and pure bf16: relative differences; and the share of the
   weights one AdamW step at lr 1e-6 moves in each (float32 masters: ~all; pure bf16: few).

`--cpu` runs the same functions at tiny shapes (the `micro` bench shape, 256 matmuls) in under a minute,
in one process; on the GPU each update benchmark runs in a fresh process (clean peak
memory; liger patches transformers' classes process-wide). `--budget-s` skips what would not fit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # sd-bench from the source tree
sys.path.insert(0, str(ROOT / "benchmarks"))

H100_BF16_PEAK_TFLOPS = 798.0  # issue 3: the measured peak the H100 reference is quoted against
# issue 11: the same update in pure bf16 on an H100 80GB (batch, s / update, response tok/s, % of peak)
REFERENCE = {
    "full": {"batch": 4, "s_per_update": 1.14, "resp_tok_per_s": 12.6e3, "pct_of_peak": 34},
    "full_liger": {"batch": 4, "s_per_update": 0.79, "resp_tok_per_s": 18.2e3, "pct_of_peak": 49},
    "lora": {"batch": 8, "s_per_update": 3.0, "resp_tok_per_s": 9.6e3},
    "lora_liger": {"batch": 8, "s_per_update": 2.24, "resp_tok_per_s": 12.8e3},
}
TARGET_PCT_OF_PEAK = 50.0  # issue 11: full fine-tuning with master weights


class Figures:
    """One JSON line per figure: printed (flushed, so a timeout still leaves what was measured) and kept."""

    def __init__(self, out: Path):
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "figures.jsonl"
        self.path.write_text("")

    def emit(self, check: str, figure: str, value, unit: str = "", **extra) -> None:
        line = json.dumps({"check": check, "figure": figure, "value": value, "unit": unit, **extra})
        print(line, flush=True)
        with open(self.path, "a") as fh:
            fh.write(line + "\n")


# ------------------------------------------------------------------------------------------ environment


def unpack_wheels(wheels: Path | None, site: Path) -> list[str]:
    """Unpack every pure-Python wheel in `wheels` into `site`, put it first on sys.path and PYTHONPATH."""
    if wheels is None:
        return []
    found = sorted(Path(wheels).glob("*.whl"))
    if not found:
        raise SystemExit(f"--wheels {wheels}: no *.whl files there")
    site.mkdir(parents=True, exist_ok=True)
    for whl in found:
        with zipfile.ZipFile(whl) as z:
            z.extractall(site)
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return [w.name for w in found]


def check_environment(figures: Figures, wheels: list[str]) -> dict:
    import importlib.util

    import torch

    cuda = torch.cuda.is_available()
    needed = ["torch", "transformers", "peft", "safetensors", "tokenizers", "yaml", "numpy", "tqdm"]
    optional = ["liger_kernel", "triton", "math_verify"]
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    absent = [m for m in optional if importlib.util.find_spec(m) is None]
    info = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "wheels": wheels,
        "missing_required": missing,
        "missing_optional": absent,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    figures.emit("environment", "modules", "ok" if not missing else "missing", **info)
    try:  # the liger wheel unpacks and imports (its kernels then need CUDA and Triton)
        import liger_kernel.transformers  # noqa: F401

        figures.emit("environment", "liger_kernel", "importable")
    except Exception as err:  # noqa: BLE001  (a report, not a failure: the liger runs are then skipped)
        figures.emit("environment", "liger_kernel", f"not importable: {type(err).__name__}: {err}"[:300])
    if missing:
        raise SystemExit(f"gpu_check: missing modules {missing}: pass their wheels with --wheels DIR")
    return info


# ------------------------------------------------------------------------------------------ 1. matmul


def matmul_peak(figures: Figures, cpu: bool) -> float:
    """Best TFLOP/s of [n, n] @ [n, n] in bf16 (and fp32 without TF32 as the baseline)."""
    import torch

    device = "cpu" if cpu else "cuda"
    sizes = [256] if cpu else [4096, 8192, 16384]
    repeats = 3 if cpu else 20
    best: dict[str, float] = {}
    torch.backends.cuda.matmul.allow_tf32 = False
    for dtype in (torch.bfloat16, torch.float32):
        for n in sizes:
            a = torch.randn(n, n, device=device, dtype=dtype)
            b = torch.randn(n, n, device=device, dtype=dtype)
            for _ in range(2):
                a @ b  # warm-up (kernel selection)
            _sync(cpu)
            t0 = time.perf_counter()
            for _ in range(repeats):
                a @ b
            _sync(cpu)
            tflops = 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e12
            key = str(dtype).removeprefix("torch.")
            best[key] = max(best.get(key, 0.0), tflops)
            figures.emit("matmul_peak", f"{key}_n{n}", round(tflops, 2), "TFLOP/s")
            del a, b
    figures.emit(
        "matmul_peak",
        "bf16_peak",
        round(best["bfloat16"], 2),
        "TFLOP/s",
        baseline_fp32=round(best["float32"], 2),
        h100_reference=H100_BF16_PEAK_TFLOPS,
    )
    return best["bfloat16"]


def _sync(cpu: bool) -> None:
    if not cpu:
        import torch

        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------ 2. update


def update_runs(cpu: bool) -> list[tuple[str, list[str]]]:
    """(name, bench_step arguments): the configurations of check 2."""
    if cpu:
        shape = ["--shape", "micro", "--threads", "1", "--prompt-len", "16", "--resp-len", "32"]
        shape += ["--demo-len", "16", "--checkpointing", "--steps", "1"]
        full, lora = [*shape, "--batch", "2"], [*shape, "--batch", "2", "--lora"]
    else:
        shape = ["--shape", "qwen3-1.7b", "--checkpointing", "--steps", "2"]
        full, lora = [*shape, "--batch", "4"], [*shape, "--batch", "8", "--lora"]
    return [
        ("full_bf16", [*full, "--precision", "bf16"]),  # baseline: the reference's pure-bf16 update
        ("full", [*full, "--precision", "mixed"]),  # the paper's precision: the target
        ("lora", [*lora, "--precision", "mixed"]),
        ("full_liger", [*full, "--precision", "mixed", "--liger"]),
        ("lora_liger", [*lora, "--precision", "mixed", "--liger"]),
    ]


def run_update(name: str, args: list[str], peak: float, cpu: bool, timeout: float) -> dict:
    """One bench_step run: in this process on CPU, in a fresh one on the GPU. Returns its JSON record."""
    argv = [*args, "--profile", "--json", "--peak-tflops", str(peak)]
    if cpu:
        import bench_step

        with contextlib.redirect_stdout(open(os.devnull, "w")):
            return bench_step.main(argv)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_step.py"), *argv],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: bench_step exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report_update(figures: Figures, name: str, rec: dict, results: dict) -> None:
    ref = REFERENCE.get(name.removesuffix("_bf16"))
    common = {"run": name, "batch": rec["batch"], "precision": rec["precision"], "liger": rec["liger"]}
    for figure, unit in (("s_per_update", "s"), ("resp_tok_per_s", "tokens/s"), ("pct_of_peak", "%")):
        if figure in rec:
            extra = {"h100_reference_bf16": ref[figure]} if ref and figure in ref else {}
            if figure == "pct_of_peak" and name == "full":
                extra["target"] = TARGET_PCT_OF_PEAK
            if figure == "resp_tok_per_s" and name.startswith("lora") and "full" in results:
                extra["target_at_least_full"] = results["full"][figure]  # LoRA at least as fast per token
            base = results.get("full_bf16")
            if base is not None and name != "full_bf16" and figure in base:
                extra["baseline_full_bf16"] = base[figure]
            figures.emit("update", f"{name}.{figure}", rec[figure], unit, **common, **extra)
    figures.emit("update", f"{name}.peak_mib", rec["peak_mib"], "MiB", kind=rec["peak_kind"], **common)
    figures.emit("update", f"{name}.phase_s", rec.get("phase_s", {}), "s", **common)
    figures.emit("update", f"{name}.params", rec["params"], "", trainable=rec["trainable_params"], **common)


# --------------------------------------------------------------------------------------- 3. train step


def write_random_model(folder: Path, shape: str) -> None:
    """A random Qwen3 of bench_step's `shape`, in bf16 safetensors, with the tiny model's tokenizer."""
    import bench_step
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    cfg = Qwen3Config(**bench_step.SHAPES[shape], max_position_embeddings=40960, rope_theta=1e6)
    tokenizer = bench_step._tokenizer()
    cfg.eos_token_id = tokenizer.eos_token_id
    cfg.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model


class PhaseClock:
    """Seconds per phase of `sd-bench train`, timed from outside the loop (device-synchronised): the
    rollout and update phases of sd_bench.train.onpolicy, the teacher's forwards (`Teacher.weights`), the
    optimizer steps (torch's global optimizer hooks), checkpoint and final/ writes. student = update minus
    teacher minus optimizer."""

    def __init__(self, cuda: bool):
        self.cuda, self.seconds, self.undo = cuda, {}, []

    def _now(self) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    def _add(self, name: str, dt: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + dt

    def wrap(self, owner, attr: str, name: str) -> None:
        original = getattr(owner, attr, None)
        if original is None:
            self.seconds.setdefault("not_timed", []).append(f"{getattr(owner, '__name__', owner)}.{attr}")
            return

        def timed(*args, **kwargs):
            t0 = self._now()
            try:
                return original(*args, **kwargs)
            finally:
                self._add(name, self._now() - t0)

        setattr(owner, attr, timed)
        self.undo.append(lambda: setattr(owner, attr, original))

    def wrap_context(self, owner, attr: str, name: str) -> None:
        original = getattr(owner, attr)
        clock = self

        @contextlib.contextmanager
        def timed(*args, **kwargs):
            t0 = clock._now()
            with original(*args, **kwargs) as value:
                yield value
            clock._add(name, clock._now() - t0)

        setattr(owner, attr, timed)
        self.undo.append(lambda: setattr(owner, attr, original))

    def time_optimizer(self) -> None:
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        start = {}
        pre = register_optimizer_step_pre_hook(lambda opt, args, kwargs: start.update(t=self._now()))
        post = register_optimizer_step_post_hook(
            lambda opt, args, kwargs: self._add("optimizer", self._now() - start["t"])
        )
        self.undo += [pre.remove, post.remove]

    def restore(self) -> None:
        for undo in reversed(self.undo):
            undo()


def train_step(figures: Figures, cpu: bool, work: Path, update_full: dict | None) -> None:
    import torch

    from sd_bench.cli import main as sd_bench_main
    from sd_bench.train import model as model_module
    from sd_bench.train import onpolicy

    run = work / "train-sdpo"
    if not cpu:  # what the earlier checks left cached is not this step's
        import gc

        gc.collect()
        torch.cuda.empty_cache()
    # the same run in both modes, only smaller on CPU: a random model of bench_step's shape in a folder
    name = "micro" if cpu else "qwen3-1.7b"
    folder = work / f"{name}-random"
    t0 = time.perf_counter()
    write_random_model(folder, name)
    figures.emit("train_step", "write_random_model_s", round(time.perf_counter() - t0, 2), "s")
    args = [
        "--scale",
        "paper",
        f"model.path={folder}",
        "model.gradient_checkpointing=true",
        "data.name=smoke",
    ]
    args += ["data.reward=contains_answer", "rollout.backend=hf", "rollout.prompts_per_step=2", "rollout.n=4"]
    args += [f"rollout.max_new_tokens={16 if cpu else 256}", "optim.mini_batch_size=2"]
    args += ["optim.micro_batch_size=4", "teacher.max_prompt_tokens=2048", "loss.chunk_size=256"]
    args += ["optim.warmup_steps=0"]  # one step: at the full lr (the paper's warmup would make it lr 0)
    shape = f"{name} (random, untied)"
    # the paper recipe's precision: model.dtype=bfloat16 with the default master_dtype=float32
    argv = ["train", "sdpo", "--output", str(run), *args, "model.dtype=bfloat16", "teacher.context=answer"]
    argv += ["--max-steps", "1", "run.save_every=1"]
    clock = PhaseClock(cuda=not cpu)
    clock.wrap(onpolicy, "rollout_phase", "rollout")
    clock.wrap(onpolicy, "update_phase", "update")
    clock.wrap(onpolicy, "save_checkpoint", "checkpoint")
    clock.wrap(onpolicy, "save_final", "final")
    clock.wrap_context(model_module.Teacher, "weights", "teacher")
    clock.time_optimizer()
    if not cpu:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        code = sd_bench_main(argv)
    finally:
        clock.restore()
    wall = time.perf_counter() - t0
    if code != 0:
        raise RuntimeError(f"sd-bench train sdpo exited {code}")
    s = clock.seconds
    s["student"] = s.get("update", 0.0) - s.get("teacher", 0.0) - s.get("optimizer", 0.0)
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    tokens = record.get("response_tokens", 0) * record.get("samples_with_loss", 0) or None  # mean x count
    common = {"shape": shape, "argv": argv}
    figures.emit("train_step", "wall_s", round(wall, 2), "s", **common)
    for name in ("rollout", "teacher", "student", "optimizer", "update", "checkpoint", "final"):
        if name in s:
            figures.emit("train_step", f"{name}_s", round(s[name], 3), "s")
    if "not_timed" in s:
        figures.emit("train_step", "not_timed", s["not_timed"])
    figures.emit(
        "train_step",
        "peak_mib",
        round(torch.cuda.max_memory_allocated() / 2**20, 1) if not cpu else record.get("peak_mem_mib"),
        "MiB",
        kind="torch.cuda.max_memory_allocated" if not cpu else "trainer's peak_mem_mib",
    )
    extra = {}
    if update_full and tokens:
        extra["baseline_update_s_per_resp_token"] = round(
            update_full["s_per_update"] / (update_full["batch"] * update_full["resp_len"]), 8
        )
        extra["update_s_per_resp_token"] = round(s.get("update", 0.0) / tokens, 8)
    figures.emit("train_step", "metrics", {k: record[k] for k in sorted(record)}, "", **extra)


# ---------------------------------------------------------------------------------------- 4. precision


def precision_losses(figures: Figures, cpu: bool) -> None:
    """NLL and top-k JSD of the same inputs and weights in fp32, mixed (fp32 masters + bf16 compute) and
    pure bf16: the relative difference of each from fp32."""
    import bench_step
    import torch

    from sd_bench.train.losses import sd_loss_from_hidden, token_logprobs_from_hidden
    from sd_bench.train.model import hidden_states
    from sd_bench.train.runtime import build_optimizer

    device = "cpu" if cpu else "cuda"
    shape = "micro" if cpu else "tiny"  # tiny: Qwen3's vocabulary on a 2-layer body
    values = {}
    for precision in ("fp32", "mixed", "bf16"):
        model, _ = bench_step.build_model(shape, precision, device, lora=False, checkpointing=False)
        vocab = bench_step.SHAPES[shape]["vocab_size"]
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, vocab, (2, 128), generator=g).to(device)
        mask = torch.ones_like(ids)
        h, w = hidden_states(model, ids, mask)
        with torch.no_grad():
            ht, wt = hidden_states(model, ids.flip(1), mask)
        hs, ht = h[:, :-1].reshape(-1, h.shape[-1]), ht[:, :-1].reshape(-1, h.shape[-1])
        targets = ids[:, 1:].reshape(-1)
        nll = -token_logprobs_from_hidden(hs, w, targets).mean()
        ones = torch.ones_like(targets, dtype=torch.float32)
        jsd, _ = sd_loss_from_hidden(hs, w, ht, wt, targets, ones, top_k=100, is_clip=None)
        values[precision] = {"nll": float(nll.detach()), "jsd": float(jsd.detach())}
        # one AdamW step at the paper's GRPO lr: the share of the weights that move (what masters are for)
        (nll + jsd).backward()
        params = [q for q in model.parameters() if q.requires_grad]
        before = [q.detach().clone() for q in params]
        build_optimizer(params, 1e-6, 0.01, (0.9, 0.999)).step()
        live = [q.grad != 0 for q in params]
        moved = sum(int(((q != b) & m).sum()) for q, b, m in zip(params, before, live))
        figures.emit(
            "precision",
            f"{precision}.changed_at_lr_1e-6",
            moved / max(1, sum(int(m.sum()) for m in live)),
            "fraction of weights with a gradient",
            shape=shape,
        )
        del model, params, before
    for precision in ("mixed", "bf16"):  # the same forward (bf16 weights) by construction; the updates differ
        for loss in ("nll", "jsd"):
            ref, val = values["fp32"][loss], values[precision][loss]
            figures.emit(
                "precision",
                f"{precision}.{loss}_rel_diff",
                abs(val - ref) / abs(ref),
                "",
                fp32=ref,
                measured=val,
                shape=shape,
            )


# ------------------------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for figures.jsonl")
    ap.add_argument("--wheels", type=Path, default=None, help="folder of pure-Python wheels to unpack")
    ap.add_argument("--cpu", action="store_true", help="tiny shapes on CPU (CI)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="skip checks that would not fit")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    figures = Figures(args.out)
    work = args.work or Path(tempfile.mkdtemp(prefix="sd-gpu-check-"))
    wheels = unpack_wheels(args.wheels, work / "site")
    check_environment(figures, wheels)
    import torch

    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device; use --cpu for the CPU check")
    if args.cpu:
        torch.set_num_threads(1)

    def left() -> float:
        return args.budget_s - (time.perf_counter() - start)

    failures = 0

    def attempt(check: str, need_s: float, fn):
        nonlocal failures
        if left() < need_s:
            figures.emit(check, "skipped", f"{left():.0f} s of budget left, needs ~{need_s:.0f} s")
            return None
        try:
            return fn()
        except Exception as err:  # noqa: BLE001  (one check failing must not lose the others' figures)
            failures += 1
            figures.emit(check, "error", f"{type(err).__name__}: {str(err)[-800:]}")
            return None

    peak = attempt("matmul_peak", 0, lambda: matmul_peak(figures, args.cpu)) or 0.0
    results: dict[str, dict] = {}

    def update(name: str, run_args: list[str]) -> None:
        if "liger" in name and args.cpu:
            figures.emit("update", f"{name}.skipped", "liger-kernel's Triton kernels need CUDA")
            return
        if "liger" in name and not liger_importable():
            figures.emit("update", f"{name}.skipped", "liger-kernel not importable: pass its wheel")
            return
        rec = attempt(
            "update",
            5 if args.cpu else 60,
            lambda: run_update(name, run_args, peak, args.cpu, timeout=max(30.0, left())),
        )
        if rec is not None:
            results[name] = rec
            report_update(figures, name, rec, results)

    # the most wanted figures first (a short budget skips the liger runs, not the target)
    runs = update_runs(args.cpu)
    for name, run_args in [r for r in runs if "liger" not in r[0]]:
        update(name, run_args)
    attempt("precision", 5 if args.cpu else 20, lambda: precision_losses(figures, args.cpu))
    attempt(
        "train_step",
        10 if args.cpu else 150,
        lambda: train_step(figures, args.cpu, work, results.get("full")),
    )
    for name, run_args in [r for r in runs if "liger" in r[0]]:
        update(name, run_args)
    figures.emit("gpu_check", "wall_s", round(time.perf_counter() - start, 1), "s", failures=failures)
    return 1 if failures else 0


def liger_importable() -> bool:
    try:
        import liger_kernel.transformers  # noqa: F401
    except Exception:  # noqa: BLE001  (ImportError, or Triton failing to initialise)
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
