"""Data parallel with torch's engines: 2 CPU processes (gloo) end with the same weights as 1 process on the
same global batch. LoRA under DDP (`accelerate launch`); full fine-tuning under FSDP2 (torchrun; a sharded
EMA teacher, uneven micro-batch counts per rank, a resume in the middle by 2 processes, and a resume of that
checkpoint by 1 process); and full fine-tuning in mixed precision (float32 masters, bfloat16 compute: FSDP2's
MixedPrecisionPolicy on 2 processes, sd_bench.train.lm's cast hooks on 1)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from sd_bench.cli import main

REPO = Path(__file__).resolve().parents[1]
# 4 prompts per step in 2 mini-batches: each rank holds 1 prompt (4 rollouts) of each mini-batch
BATCH = ["--scale", "smoke", "rollout.prompts_per_step=4", "optim.mini_batch_size=2", "optim.lr=1e-3"]
# LoRA teachers: frozen = the same model under peft's disable_adapter (on the unwrapped module, outside DDP);
# EMA = adapter weights swapped in place for the teacher pass
LORA = ["train", "sdpo", *BATCH, "model.finetune=lora"]
# ... and the token-mean aggregation option (the others run the paper's seq_mean_token_mean default)
LORA_EMA = ["train", "sdpo_ema", *BATCH, "model.finetune=lora", "loss.aggregation=token_mean"]
# EMA teacher (a sharded copy under FSDP) and 1 sequence per micro-batch: the ranks keep different numbers of
# samples (no successful sibling -> no loss), so they run different numbers of real micro-batches
FULL = ["train", "sdpo_ema", *BATCH, "optim.micro_batch_size=1"]
# the paper's precision: float32 masters, bfloat16 compute. 2 processes: FSDP2's MixedPrecisionPolicy
# (param bf16, reduce fp32); 1 process: the cast hooks of sd_bench.train.lm. Measured: identical weights.
FULL_MIXED = [*FULL, "model.dtype=bfloat16"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# One launch runs several trainings in a row (each `sd-bench train` call builds its model, engine and optimizer
# afresh; the process group is reused): a launch costs ~30 s of imports on a loaded 2-core machine.
DRIVER = """
import json, sys
from sd_bench.cli import main
for args in json.loads(sys.argv[1]):
    assert main(args) == 0, args
"""


def _launch(launcher: str, runs: list[list[str]], tmp_path: Path) -> subprocess.Popen:
    """2 processes by `torchrun`, or by `accelerate launch --multi_gpu` (which, on a CPU-only machine too,
    hands over to torch.distributed.run; `--cpu --num_processes 2` would start ONE process)."""
    driver = tmp_path / f"driver-{launcher}.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    port = str(_free_port())
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", port]
    else:
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--main_process_port",
            port,
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
        ]
    return subprocess.Popen(
        [*cmd, str(driver), json.dumps(runs)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    return out + err


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    assert out, folder
    return out


def _metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_match(one: Path, two: Path, base: dict | None):
    w1, w2 = _weights(one / "final"), _weights(two / "final")
    assert w1.keys() == w2.keys()
    diff = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    moved = (
        max((w1[k] - base[k]).abs().max().item() for k in w1)
        if base
        else max(w1[k].abs().max().item() for k in w1 if "lora_B" in k)
    )  # LoRA B starts at 0
    assert moved > 1e-4 and diff < 1e-5, (moved, diff)
    m1, m2 = _metrics(one), _metrics(two)
    assert [r["step"] for r in m1] == [r["step"] for r in m2]
    assert [r["score"] for r in m1] == [r["score"] for r in m2]  # same rollouts
    assert [r["samples_with_loss"] for r in m1] == [r["samples_with_loss"] for r in m2]
    assert all(abs(a["loss"] - b["loss"]) < 1e-6 for a, b in zip(m1, m2))
    # Adam hardly sees a gradient's scale, so check it here: a mean instead of a sum would halve the norm
    assert [r["grad_norm"] for r in m1] == pytest.approx([r["grad_norm"] for r in m2], rel=1e-4)


def test_two_processes_match_one(tmp_path):
    """(a) LoRA under DDP (launched by `accelerate launch` when installed), frozen and EMA teacher; (b) full FT
    under FSDP (launched by torchrun), stopped after step 1 and resumed to step 2 by 2 processes: each equals
    an uninterrupted 1-process run. The 1-process runs go while the 2-process jobs run."""
    lora = [
        [*LORA, "--output", str(tmp_path / "lora2")],
        [*LORA_EMA, "--output", str(tmp_path / "lora_ema2")],
    ]
    full = [
        [*FULL, "--max-steps", "1", "--output", str(tmp_path / "full2")],
        [*FULL, "--max-steps", "2", "--resume", "--output", str(tmp_path / "full2")],
        [*FULL_MIXED, "--max-steps", "2", "--output", str(tmp_path / "mixed2")],
    ]
    if importlib.util.find_spec("accelerate") is not None:  # LoRA by `accelerate launch`, at the same time
        jobs = [_launch("accelerate", lora, tmp_path), _launch("torchrun", full, tmp_path)]
    else:
        jobs = [_launch("torchrun", lora + full, tmp_path)]
    try:
        torch.set_num_threads(1)
        assert main([*LORA, "--output", str(tmp_path / "lora1")]) == 0
        assert main([*LORA_EMA, "--output", str(tmp_path / "lora_ema1")]) == 0
        assert main([*FULL, "--max-steps", "2", "--output", str(tmp_path / "full1")]) == 0
        assert main([*FULL_MIXED, "--max-steps", "2", "--output", str(tmp_path / "mixed1")]) == 0
        log = "".join(_finish(job) for job in jobs)
    finally:
        for job in jobs:
            if job.poll() is None:  # the launcher stops its workers on SIGTERM
                job.terminate()
                job.wait(timeout=60)
    assert "data parallel: ddp over 2 processes (gloo)" in log
    assert "data parallel: fsdp over 2 processes (gloo)" in log
    assert f"resuming from {tmp_path / 'full2' / 'checkpoint-1'}" in log

    _assert_match(tmp_path / "lora1", tmp_path / "lora2", None)
    _assert_match(tmp_path / "lora_ema1", tmp_path / "lora_ema2", None)
    base = _weights(tmp_path / "full1" / "tiny-model")
    _assert_match(tmp_path / "full1", tmp_path / "full2", base)
    # the EMA teacher (sharded under FSDP, gathered into the checkpoint) moved and matches the 1-process one
    t1, t2 = (
        torch.load(run / "checkpoint-2" / "trainer_state.pt", weights_only=True)["teacher"]
        for run in (tmp_path / "full1", tmp_path / "full2")
    )
    assert t1.keys() == t2.keys() and "lm_head.weight" in t1
    assert max((t1[k] - base[k]).abs().max().item() for k in t1) > 1e-5
    assert max((t1[k] - t2[k]).abs().max().item() for k in t1) < 1e-6
    # the FSDP checkpoint (full weights, optimizer state by name) also resumes in ONE process
    cross = tmp_path / "cross"
    cross.mkdir()
    for name in ("config.yaml", "metrics.jsonl", "tiny-model", "checkpoint-1"):
        copy = shutil.copytree if (tmp_path / "full2" / name).is_dir() else shutil.copy
        copy(tmp_path / "full2" / name, cross / name)
    assert main([*FULL, "--max-steps", "2", "--resume", "--output", str(cross)]) == 0
    _assert_match(tmp_path / "full1", cross, base)
    # mixed precision: FSDP2 + MixedPrecisionPolicy on 2 processes == the cast hooks on 1; checkpoints hold
    # the float32 masters, final/ is bfloat16
    _assert_match(tmp_path / "mixed1", tmp_path / "mixed2", base)
    for run in (tmp_path / "mixed1", tmp_path / "mixed2"):
        assert {t.dtype for t in _weights(run / "checkpoint-2" / "model").values()} == {torch.float32}
        assert {t.dtype for t in _weights(run / "final").values()} == {torch.bfloat16}
    # final/ of the FSDP run is a plain HF folder (gathered on rank 0), with the real architecture name
    config = json.loads((tmp_path / "full2" / "final" / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"]


def test_strategy_config():
    from sd_bench.train.config import ConfigError, load_config
    from sd_bench.train.distributed import resolve_strategy

    cfg = load_config("sdpo", scale="smoke")
    assert cfg.distributed.strategy == "auto" and resolve_strategy("auto", "full") == "fsdp"
    assert resolve_strategy("auto", "lora") == "ddp" and resolve_strategy("ddp", "full") == "ddp"
    with pytest.raises(ConfigError, match="distributed.strategy"):
        load_config("sdpo", scale="smoke", overrides=["distributed.strategy=zero3"])
    with pytest.raises(ConfigError, match="with model.finetune=lora use distributed.strategy=ddp"):
        load_config("sdpo", scale="smoke", overrides=["model.finetune=lora", "distributed.strategy=fsdp"])
