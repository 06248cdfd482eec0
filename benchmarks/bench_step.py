"""One self-distillation update on a Qwen3-shaped random model: tokens/s, model TFLOP/s, peak memory.

    python benchmarks/bench_step.py                              # tiny shape, CPU, < 1 minute
    python benchmarks/bench_step.py --shape qwen3-1.7b --batch 4 # GPU: the reference configuration
    python benchmarks/bench_step.py --shape qwen3-1.7b --lora --batch 8
    python benchmarks/bench_step.py --shape qwen3-1.7b --precision bf16   # the pre-parity pure-bf16 update

Precision (`--precision`, sd_bench.train.lm): `mixed` (GPU default, the paper's and the trainer's: float32
master weights and AdamW state, bfloat16 compute through the trainer's own cast hooks, frozen teacher held
in bfloat16; LoRA: float32 adapters over a bfloat16 base), `bf16` (everything bfloat16, no master copy: how
the H100 reference below was measured), `fp32` (CPU default). The model, teacher and forward are the
trainer's (`prepare_model`'s precision rules, `Teacher`, `hidden_states`, `build_optimizer`), so the figures are
what `sd-bench train` pays. `--liger`: liger-kernel's fused RMSNorm / RoPE / SwiGLU (`model.liger=true`).
`--profile`: seconds per phase (teacher forward, student forward, loss, backward, optimizer), with a device
synchronisation between phases (the total is then a little slower than the unprofiled update).

The update is the SDPO step of PAPER.md "Training recipes": the teacher (frozen copy for full fine-tuning,
the same model with its LoRA adapter disabled for LoRA) runs forward under no_grad over prompt +
demonstration + the student's response; the student runs forward and backward over prompt + response;
the loss is sd_bench.train.losses.sd_loss_from_hidden (top-100 + tail JSD, alpha 0.5, IS clip 2, chunked);
AdamW (wd 0.01) after clipping the gradient norm to 1.0. The model is random (transformers
Qwen3ForCausalLM built from a config); inputs are random token ids of the requested lengths, no padding.

Model FLOPs (the brief's convention): 2 per matmul parameter per token forward, 4 backward, 2 more for the
recompute under activation checkpointing; embedding lookups and attention's score/value products excluded;
the lm_head counts only at response positions (that is all the loss projects); the teacher counts
forward over its own tokens. LoRA runs are counted with the same formula (model FLOPs, not the smaller work
LoRA really does), so TFLOP/s compare per token with full fine-tuning.

Reference measured for this project (issue 3): H100, Qwen3-1.7B shape, 512 prompt + 3,584 response, 2k
demonstration, top-100 + tail JSD: full FT batch 4, 12.6k response tok/s, 1.14 s/update (~34% of the
measured 798 TFLOP/s bf16 peak); LoRA r=64 batch 8, 9.6k response tok/s.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch

from sd_bench.train.losses import sd_loss_from_hidden

SHAPES = {
    # Qwen3-1.7B (config.json of Qwen/Qwen3-1.7B): GQA 16/8 heads of 128. Untied lm_head as issue 11 sets it
    # (2.03B parameters; the Hub checkpoint ties it, 1.72B): a full fine-tuning then also trains and keeps
    # AdamW state for a separate 311M-parameter head. Model FLOPs are the same either way.
    "qwen3-1.7b": {
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 151936,
        "tie_word_embeddings": False,
    },
    # Qwen3-0.6B: for a smaller GPU check.
    "qwen3-0.6b": {
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
    # CPU default: Qwen3's real vocabulary (so the loss does its real work) on a 2-layer body. The wider
    # init (0.2, not 0.02) gives peaked next-token distributions, so top-k and the JSD are not degenerate.
    "tiny": {
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "vocab_size": 151936,
        "tie_word_embeddings": False,
        "initializer_range": 0.2,
    },
    # benchmarks/gpu_check.py --cpu: the same code paths in seconds (small vocabulary)
    "micro": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "vocab_size": 4096,
        "tie_word_embeddings": False,
        "initializer_range": 0.2,
    },
}
PRECISIONS = {  # --precision -> (model.dtype, model.master_dtype) of sd_bench.train.config.ModelConfig
    "mixed": ("bfloat16", "float32"),
    "bf16": ("bfloat16", "bfloat16"),
    "fp32": ("float32", "float32"),
}
H100_MEASURED_BF16_PEAK = (
    798e12  # issue 3: the measured bf16 dense matmul peak the reference is quoted against
)
REFERENCE = {"full": (4, 12.6e3, 1.14), "lora": (8, 9.6e3, None)}  # batch, response tok/s, s/update


def build_model(
    shape: str, precision: str, device: str, lora: bool, checkpointing: bool, liger: bool = False
):
    """(model, Teacher) as `sd-bench train` builds them: a random model in `load_dtype`, then the trainer's
    `prepare_model` (precision, LoRA, checkpointing, liger) and `Teacher`."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    from sd_bench.train.config import ModelConfig
    from sd_bench.train.model import Teacher, load_dtype, prepare_model

    dtype, master = PRECISIONS[precision]
    model_cfg = ModelConfig(
        path="random",
        dtype=dtype,
        master_dtype=master,
        finetune="lora" if lora else "full",
        lora_rank=64,
        lora_alpha=128,
        lora_targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        gradient_checkpointing=checkpointing,
        liger=liger,
    )
    cfg = Qwen3Config(
        **SHAPES[shape],
        max_position_embeddings=40960,
        rope_theta=1e6,
        use_cache=False,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    with torch.device(device):  # built in the dtype the trainer loads (buffers stay fp32, as from_pretrained)
        model = AutoModelForCausalLM.from_config(cfg, dtype=load_dtype(model_cfg))
    model = prepare_model(model, model_cfg)
    # the paper's teacher is frozen at the initial weights (EMA rate 0); LoRA: the adapter disabled
    return model, Teacher(model, "frozen", 0.0)


def _tokenizer():
    """The tiny model's offline BPE (sd_bench.tiny_model), for gpu_check's model folder (`sd-bench train`
    reads a tokenizer beside the weights): its ids (< 600) are valid in every shape's vocabulary."""
    from sd_bench.tiny_model import build_tokenizer

    return build_tokenizer()


def body_and_head(model):
    """(decoder stack returning final-norm hidden states, lm_head) of a plain or peft-wrapped causal LM."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model, base.lm_head


def matmul_params(model) -> tuple[int, int]:
    """(params of nn.Linear layers in the decoder body, lm_head params); embeddings excluded."""
    body, head = body_and_head(model)
    n = sum(m.weight.numel() for m in body.modules() if isinstance(m, torch.nn.Linear))
    return n, head.weight.numel()


class Phases:
    """Seconds per phase (`--profile`): a device synchronisation closes each phase; off, it costs nothing."""

    def __init__(self, enabled: bool, device: str):
        self.enabled, self.cuda = enabled, device.startswith("cuda")
        self.seconds: dict[str, float] = {}
        self.t = time.perf_counter()

    def mark(self, name: str) -> None:
        if not self.enabled:
            return
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self.t
        self.t = now


def sd_update(model, teacher, opt, batch: dict, phases: Phases | None = None) -> dict:
    """Teacher forward, student forward + backward, chunked SD loss, clip, AdamW step. Returns loss stats."""
    from sd_bench.train.model import hidden_states

    phases = phases or Phases(False, "cpu")
    phases.mark("start")
    p, r = batch["prompt_len"], batch["resp_len"]
    resp = batch["student_ids"][:, p:]
    tp = batch["teacher_ids"].shape[1] - r  # teacher prompt length (prompt + demonstration)
    with torch.no_grad(), teacher.weights(model) as teacher_model:
        h_t, w_t = hidden_states(teacher_model, batch["teacher_ids"], torch.ones_like(batch["teacher_ids"]))
        h_t = h_t[:, tp - 1 : -1]
    phases.mark("teacher_forward")
    h_s, w_s = hidden_states(model, batch["student_ids"], torch.ones_like(batch["student_ids"]))
    h_s = h_s[:, p - 1 : -1]
    phases.mark("student_forward")
    hdim = h_s.shape[-1]
    loss, stats = sd_loss_from_hidden(
        h_s.reshape(-1, hdim),
        w_s,
        h_t.reshape(-1, hdim),
        w_t,
        resp.reshape(-1),
        batch["mask"].reshape(-1),
        batch["logp_old"].reshape(-1),
        alpha=0.5,
        top_k=100,
        is_clip=2.0,
        chunk_size=batch.get("chunk") or None,
    )
    phases.mark("loss")  # the fused loss also forms d loss / d logits here (sd_bench.train.losses)
    loss.backward()
    phases.mark("backward")
    params = [q for q in model.parameters() if q.requires_grad]
    gnorm = torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    teacher.update(model)  # frozen: a no-op, as in the trainer
    phases.mark("optimizer")
    return {"loss": loss.item(), "grad_norm": float(gnorm), **stats}


def peak_mib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # whole process, KiB on Linux


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--lora", action="store_true", help="LoRA r=64 all-linear (peft); default full FT")
    ap.add_argument("--batch", type=int, default=None, help="sequences per update (default 2 on CPU, 4 GPU)")
    ap.add_argument("--prompt-len", type=int, default=None, help="default 32 tiny / 512")
    ap.add_argument("--resp-len", type=int, default=None, help="default 96 tiny / 3584")
    ap.add_argument("--demo-len", type=int, default=None, help="default 64 tiny / 2048")
    ap.add_argument(
        "--checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="activation checkpointing (default: on for GPU shapes, off for tiny)",
    )
    ap.add_argument("--chunk", type=int, default=0, help="loss chunk in tokens (0: losses default)")
    ap.add_argument("--steps", type=int, default=2, help="timed updates after one warm-up update")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="CPU torch threads (0: torch default)")
    ap.add_argument("--json", action="store_true", help="end with one JSON line")
    ap.add_argument(
        "--precision",
        choices=sorted(PRECISIONS),
        default=None,
        help="mixed: fp32 masters + bf16 compute (GPU default, the paper's); bf16: no masters; fp32 (CPU default)",
    )
    ap.add_argument("--liger", action="store_true", help="liger-kernel fused RMSNorm/RoPE/SwiGLU (CUDA)")
    ap.add_argument("--profile", action="store_true", help="seconds per phase (synchronised)")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="measured bf16 peak: adds pct_of_peak")
    args = ap.parse_args(argv)

    tiny = args.shape in ("tiny", "micro")
    cuda = args.device.startswith("cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    batch_size = args.batch or (2 if tiny else (8 if args.lora else 4))
    p = args.prompt_len or (32 if tiny else 512)
    r = args.resp_len or (96 if tiny else 3584)
    d = args.demo_len or (64 if tiny else 2048)
    ckpt = (not tiny) if args.checkpointing is None else args.checkpointing
    precision = args.precision or ("mixed" if cuda else "fp32")
    dtype = getattr(torch, PRECISIONS[precision][0])

    from sd_bench.train.runtime import build_optimizer

    model, teacher = build_model(args.shape, precision, args.device, args.lora, ckpt, args.liger)
    params = [q for q in model.parameters() if q.requires_grad]
    opt = build_optimizer(params, 1e-5, 0.01, (0.9, 0.999))  # the trainer's AdamW
    vocab = SHAPES[args.shape]["vocab_size"]
    g = torch.Generator(device="cpu").manual_seed(0)
    prompt = torch.randint(0, vocab, (batch_size, p), generator=g)
    demo = torch.randint(0, vocab, (batch_size, d), generator=g)
    resp = torch.randint(0, vocab, (batch_size, r), generator=g)
    batch = {
        "prompt_len": p,
        "resp_len": r,
        "chunk": args.chunk,
        "student_ids": torch.cat([prompt, resp], 1).to(args.device),
        "teacher_ids": torch.cat([prompt, demo, resp], 1).to(args.device),
        "mask": torch.ones(batch_size, r, device=args.device),
        # rollout log-probs of a random model sit near log(1 / vocab); jitter puts ratios on both sides of 2
        "logp_old": (torch.full((batch_size, r), -11.9) + torch.randn(batch_size, r, generator=g)).to(
            args.device
        ),
    }

    sd_update(model, teacher, opt, batch)  # warm-up (allocations, kernels, AdamW state)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, cpu_times, stats, profiles = [], [], {}, []
    for _ in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        phases = Phases(args.profile, args.device)
        stats = sd_update(model, teacher, opt, batch, phases)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        profiles.append(phases.seconds)
    sec = min(times)

    body_p, head_p = matmul_params(model)
    s_tok, t_tok, r_tok = batch_size * (p + r), batch_size * (p + d + r), batch_size * r
    fb = 2 + 4 + (2 if ckpt else 0)
    flops = fb * body_p * s_tok + 6 * head_p * r_tok + 2 * body_p * t_tok + 2 * head_p * r_tok
    out = {
        "shape": args.shape,
        "finetune": "lora-r64" if args.lora else "full",
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
        "dtype": str(dtype).replace("torch.", ""),
        "precision": precision,
        "master_dtype": PRECISIONS[precision][1],
        "liger": args.liger,
        "params": sum(q.numel() for q in model.parameters()),
        "trainable_params": sum(q.numel() for q in params),
        "batch": batch_size,
        "prompt_len": p,
        "resp_len": r,
        "demo_len": d,
        "checkpointing": ckpt,
        "threads": torch.get_num_threads(),
        "s_per_update": round(sec, 4),
        "cpu_s_per_update": round(min(cpu_times), 4),
        "resp_tok_per_s": round(r_tok / sec, 1),
        "model_tflops": round(flops / sec / 1e12, 4),
        "peak_mib": round(peak_mib(args.device), 1),
        "peak_kind": "torch.cuda.max_memory_allocated" if cuda else "process ru_maxrss (whole process)",
        "loss": float(f"{stats['loss']:.4g}"),
        "grad_norm": float(f"{stats['grad_norm']:.3g}"),
        "kl_k3": round(stats["sd/kl_k3"], 6),
        "is_clip_frac": round(stats["sd/is_clip_frac"], 4),
    }
    if cuda:
        out["pct_of_798_tflops"] = round(100 * flops / sec / H100_MEASURED_BF16_PEAK, 1)
    if args.peak_tflops:
        out["pct_of_peak"] = round(100 * flops / sec / (args.peak_tflops * 1e12), 1)
    if args.profile:
        best = profiles[times.index(sec)]
        out["phase_s"] = {k: round(v, 4) for k, v in best.items() if k != "start"}
    print(
        f"SD update, {args.shape} ({out['finetune']}, {precision}, checkpointing {ckpt}) on "
        f"{out['device']} [{out['device_name']}], batch {batch_size}: prompt {p} + response {r}, demo {d}"
    )
    rows = [
        ["s / update (wall, min over steps)", out["s_per_update"]],
        ["CPU s / update (process time, all threads)", out["cpu_s_per_update"]],
        ["response tokens / s", out["resp_tok_per_s"]],
        ["model TFLOP/s", out["model_tflops"]],
        [f"peak MiB ({out['peak_kind']})", out["peak_mib"]],
        ["loss / grad norm", f"{out['loss']} / {out['grad_norm']}"],
    ]
    if cuda:
        rows.append(["% of 798 TFLOP/s (H100 measured bf16)", out["pct_of_798_tflops"]])
        ref = REFERENCE["lora" if args.lora else "full"]
        rows.append(
            [
                "reference (H100, 1.7B, 512+3584, 2k demo)",
                f"batch {ref[0]}: {ref[1]:.0f} resp tok/s" + (f", {ref[2]} s/update" if ref[2] else ""),
            ]
        )
    if args.profile:
        rows.append(["phases (s, synchronised)", out["phase_s"]])
    for k, v in rows:
        print(f"  {k:45s} {v}")
    if args.json:
        print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
