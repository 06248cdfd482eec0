"""Our SD update vs TRL's experimental SDPO trainer on the same tiny model, batch and loss (CPU, < 2 min).

    python benchmarks/bench_vs_trl.py [--json] [--batch 2] [--prompt-len 32] [--resp-len 96] [--demo-len 64]

Both sides do one SDPO update on the same random Qwen3-shaped model (benchmarks/bench_step.py's "tiny"
shape: Qwen3's 151,936-token vocabulary on a 2-layer body), the same token ids, the same rollout log-probs
and the same loss settings (top-100 + tail generalized JSD, alpha 0.5, IS clip 2, full fine-tuning, teacher
frozen at the initial weights, AdamW lr 1e-5 wd 0.01, grad-norm clip 1.0):
  * ours: benchmarks/bench_step.sd_update (hidden states -> losses.sd_loss_from_hidden, chunked);
  * TRL: trl.experimental.sdpo.SDPOTrainer (TRL >= 1.16) built for real (teacher_model_kind="base", which
    for a non-PEFT model is a frozen copy loaded from the model folder), then its own
    `compute_loss(model, inputs)` on a hand-built rollout batch (prompt/completion/teacher ids, masks,
    old_per_token_logps), backward, grad clip and the trainer's own optimizer. Rollout generation and
    reward scoring are skipped on both sides: the comparison is the update step.
Each side runs in a fresh subprocess: peak memory = resident-set high-water mark (ru_maxrss) over the
process's level after the models and optimizer are built, across 1 warm-up + --steps timed updates;
time = min over the timed updates of process CPU time (one torch thread) and of wall time.
The first update's loss from both sides is printed as a check that they compute the same loss.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

TOP_K, ALPHA, IS_CLIP = 100, 0.5, 2.0  # PAPER.md "Training recipes" (SDPO)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_model_dir(path: Path) -> None:
    """Save the bench_step 'tiny' random Qwen3 and the tiny BPE tokenizer (ids < 512 < vocab) to `path`."""
    import torch
    from bench_step import SHAPES
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from sd_bench.tiny_model import build_tokenizer

    torch.manual_seed(0)
    cfg = Qwen3Config(**SHAPES["tiny"], max_position_embeddings=4096, rope_theta=1e6, use_cache=False)
    model = Qwen3ForCausalLM(cfg)
    tok = build_tokenizer(512)
    model.config.pad_token_id = tok.pad_token_id
    model.config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)


def make_batch(args, vocab: int = 512) -> dict:
    import torch

    g = torch.Generator().manual_seed(0)
    b, p, r, d = args.batch, args.prompt_len, args.resp_len, args.demo_len
    prompt = torch.randint(3, vocab, (b, p), generator=g)  # ids >= 3: no pad/special tokens inside
    demo = torch.randint(3, vocab, (b, d), generator=g)
    resp = torch.randint(3, vocab, (b, r), generator=g)
    return {
        "prompt": prompt,
        "demo": demo,
        "resp": resp,
        "logp_old": torch.full((b, r), -11.9) + torch.randn(b, r, generator=g),
    }


def run_ours(args, model_dir: Path) -> dict:
    import copy

    import torch
    from bench_step import sd_update
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    model.train()
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-5, weight_decay=0.01)
    x = make_batch(args)
    batch = {
        "prompt_len": args.prompt_len,
        "resp_len": args.resp_len,
        "chunk": 0,
        "student_ids": torch.cat([x["prompt"], x["resp"]], 1),
        "teacher_ids": torch.cat([x["prompt"], x["demo"], x["resp"]], 1),
        "mask": torch.ones_like(x["logp_old"]),
        "logp_old": x["logp_old"],
    }
    return _timed(lambda: sd_update(model, teacher, opt, batch, lora=False)["loss"], args)


def run_trl(args, model_dir: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl.experimental.sdpo import SDPOConfig, SDPOTrainer

    b = args.batch
    cfg = SDPOConfig(
        output_dir=str(model_dir / "trl-out"),
        report_to=[],
        use_cpu=True,
        bf16=False,
        seed=0,
        per_device_train_batch_size=b,
        num_generations=b,
        max_prompt_length=args.prompt_len + args.demo_len,
        max_completion_length=args.resp_len,
        learning_rate=1e-5,
        weight_decay=0.01,
        max_grad_norm=1.0,
        temperature=1.0,
        distillation_mode="topk_logits",
        distillation_topk=TOP_K,
        distillation_alpha=ALPHA,
        distillation_is_clip=IS_CLIP,
        distillation_add_tail=True,
        distillation_weight=1.0,
        teacher_model_kind="base",
        logging_steps=1000,
    )
    tok = AutoTokenizer.from_pretrained(model_dir)
    trainer = SDPOTrainer(
        model=str(model_dir),
        reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
        args=cfg,
        train_dataset=Dataset.from_dict({"prompt": ["1 + 1?"] * b}),
        processing_class=tok,
    )
    model = trainer.model
    model.train()
    trainer.create_optimizer()
    opt = trainer.optimizer
    trainer.current_gradient_accumulation_steps = 1
    x = make_batch(args)
    ones = torch.ones_like
    teacher_ids = torch.cat([x["prompt"], x["demo"], x["resp"]], 1)
    inputs = {
        "prompt_ids": x["prompt"],
        "prompt_mask": ones(x["prompt"]),
        "completion_ids": x["resp"],
        "completion_mask": ones(x["resp"]),
        "teacher_input_ids": teacher_ids,
        "teacher_attention_mask": ones(teacher_ids),
        "self_distillation_mask": torch.ones(b),
        "old_per_token_logps": x["logp_old"],
        "advantages": torch.zeros(b),
    }

    def step():
        loss = trainer.compute_loss(model, inputs)
        trainer.accelerator.backward(loss)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return _timed(step, args)


def _timed(step, args) -> dict:
    base = _rss_mib()
    first_loss = step()  # warm-up: also allocates AdamW state, on both sides
    walls, cpus = [], []
    for _ in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return {"first_loss": first_loss, "cpu_s": min(cpus), "wall_s": min(walls), "peak_mib": _rss_mib() - base}


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    res = (run_ours if args.worker == "ours" else run_trl)(args, Path(args.model_dir))
    print(json.dumps(res))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--resp-len", type=int, default=96)
    ap.add_argument("--demo-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2, help="timed updates after one warm-up")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)

    try:
        import trl
        from trl.experimental.sdpo import SDPOTrainer  # noqa: F401
    except ImportError as e:
        raise SystemExit(f"bench_vs_trl: needs TRL >= 1.16 with trl.experimental.sdpo ({e}); pip install trl")
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "tiny-qwen3"
        make_model_dir(model_dir)
        for side in ("trl", "ours"):
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                side,
                "--model-dir",
                str(model_dir),
                "--batch",
                str(args.batch),
                "--prompt-len",
                str(args.prompt_len),
                "--resp-len",
                str(args.resp_len),
                "--demo-len",
                str(args.demo_len),
                "--steps",
                str(args.steps),
                "--threads",
                str(args.threads),
            ]
            env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
            out = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                raise SystemExit(f"bench_vs_trl: {side} worker failed:\n{out.stderr[-4000:]}")
            res[side] = json.loads(out.stdout.strip().splitlines()[-1])
    o, t = res["ours"], res["trl"]
    summary = {
        "trl_version": trl.__version__,
        "trl_trainer": "trl.experimental.sdpo.SDPOTrainer",
        "batch": args.batch,
        "prompt_len": args.prompt_len,
        "resp_len": args.resp_len,
        "demo_len": args.demo_len,
        "threads": args.threads,
        "ours_cpu_s": round(o["cpu_s"], 3),
        "trl_cpu_s": round(t["cpu_s"], 3),
        "ours_wall_s": round(o["wall_s"], 3),
        "trl_wall_s": round(t["wall_s"], 3),
        "ours_peak_mib": round(o["peak_mib"], 1),
        "trl_peak_mib": round(t["peak_mib"], 1),
        "time_ratio": round(o["cpu_s"] / t["cpu_s"], 3),
        "peak_ratio": round(o["peak_mib"] / max(t["peak_mib"], 1e-9), 3),
        "ours_first_loss": o["first_loss"],
        "trl_first_loss": t["first_loss"],
        "first_loss_rel_diff": abs(o["first_loss"] - t["first_loss"]) / max(abs(t["first_loss"]), 1e-30),
    }
    print(
        f"SD update, tiny Qwen3 (vocab 151,936), batch {args.batch}: prompt {args.prompt_len} + response "
        f"{args.resp_len}, demo {args.demo_len}; top-{TOP_K}+tail JSD alpha {ALPHA}, IS clip {IS_CLIP}; "
        f"TRL {trl.__version__} SDPOTrainer; {args.threads} thread(s)"
    )
    print(f"  {'':28s} {'ours':>10s} {'TRL':>10s} {'ours/TRL':>9s}")
    print(f"  {'CPU s / update':28s} {o['cpu_s']:10.3f} {t['cpu_s']:10.3f} {summary['time_ratio']:9.2f}")
    print(
        f"  {'wall s / update':28s} {o['wall_s']:10.3f} {t['wall_s']:10.3f} {o['wall_s'] / t['wall_s']:9.2f}"
    )
    print(
        f"  {'peak MiB (RSS over setup)':28s} {o['peak_mib']:10.1f} {t['peak_mib']:10.1f} "
        f"{summary['peak_ratio']:9.2f}"
    )
    print(
        f"  {'first-update loss':28s} {o['first_loss']:10.4g} {t['first_loss']:10.4g}   "
        f"(relative difference {summary['first_loss_rel_diff']:.1e})"
    )
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
