"""sd_bench.train.launch: the launch a training stage will use (processes, engine, rollouts, memory per GPU),
checked against the byte counts written out from the definitions in the module docstring."""

from __future__ import annotations

import pytest

from sd_bench.train.config import load_config
from sd_bench.train.launch import count_parameters, describe, processes_from_launcher

P = 7_615_616_512  # DeepSeek-R1-Distill-Qwen-7B (Qwen2.5-7B layout)
GIB = 2**30


@pytest.mark.parametrize(
    "launcher, processes",
    [
        (None, 1),
        ("", 1),
        ("torchrun --nproc-per-node 4 -m sd_bench.cli train", 4),
        ("torchrun --nproc_per_node=2 --nnodes 2 --rdzv-backend c10d -m sd_bench.cli train", 4),
        ("torchrun --nnodes 1:2 --nproc-per-node 8 -m sd_bench.cli train", 16),
        ("accelerate launch --config_file docs/accelerate_fsdp.yaml --num_processes 4 -m sd_bench.cli", 4),
        ("sd-bench train", 1),
    ],
)
def test_processes_from_launcher(launcher, processes):
    assert processes_from_launcher(launcher) == processes


def test_full_fine_tuning_under_fsdp_paper_scale():
    cfg = load_config("sdpo", scale="paper", overrides=["rollout.backend=vllm", "rollout.vllm_sleep=true"])
    launch = describe(cfg, 4, parameters=P)
    assert (launch.processes, launch.strategy, launch.rollout_backend) == (4, "fsdp", "vllm")
    # float32 master + grad + AdamW m, v, and the frozen teacher copy, sharded over 4; + the bf16 gather
    reference = (4 * P + 4 * P + 2 * 4 * P + 4 * P) / 4 + 2 * P
    assert launch.train_state_gib_per_gpu == pytest.approx(reference / GIB)
    assert launch.vllm_fraction_per_gpu == 0.5 and "asleep during updates" in launch.rollout_engines
    line = launch.line()
    assert (
        line.startswith("4 processes, strategy fsdp, rollouts vllm") and "GiB/GPU" in line and "50%" in line
    )


def test_lora_ddp_and_one_process():
    cfg = load_config("grpo", scale="paper", overrides=["model.finetune=lora"])
    launch = describe(cfg, 2, parameters=P)
    assert launch.strategy == "ddp" and launch.vllm_fraction_per_gpu == 0.0
    assert launch.train_state_gib_per_gpu == pytest.approx(2 * P / GIB)  # the bf16 base, replicated
    one = describe(load_config("grpo", scale="paper"), 1, parameters=P)  # no teacher copy for GRPO
    assert one.strategy == "none" and one.train_state_gib_per_gpu == pytest.approx(4 * 4 * P / GIB)


def test_count_parameters_from_the_config_alone(tmp_path):
    from transformers import AutoModelForCausalLM

    from sd_bench.tiny_model import build_tiny_qwen3

    path = build_tiny_qwen3(tmp_path / "tiny", seed=0)
    loaded = AutoModelForCausalLM.from_pretrained(path)  # the reference: the real model's parameters
    assert count_parameters(str(path)) == sum(p.numel() for p in loaded.parameters())


def test_unknown_parameter_count():
    cfg = load_config("sdpo", scale="smoke")
    assert count_parameters("tiny") is None and count_parameters("/nonexistent/model") is None
    launch = describe(cfg, 1)
    assert launch.train_state_gib_per_gpu is None and "memory unknown" in launch.line()


def test_dry_run_shows_each_training_stage_launch():
    """issue 10: `reproduce --scale paper --dry-run` names the launch of every train stage: processes (from
    the launcher), strategy, rollouts and the training state per GPU."""
    from sd_bench.reproduce import plan as P

    launcher = "train.launcher=torchrun --nproc-per-node 4 -m sd_bench.cli train"
    plan = P.build_plan(P.PlanRequest("table3", "paper", [launcher]))
    trains = [s for s in plan.stages if s.kind == "train"]
    assert trains and all(s.launch and s.launch.startswith("4 processes, strategy fsdp") for s in trains)
    assert all("GiB/GPU training state" in s.launch for s in trains)
    assert all(f"launch: {s.launch}" in P.render_plan(plan) for s in trains)
    one = P.build_plan(P.PlanRequest("table2", "paper", []))
    sft = [s for s in one.stages if s.kind == "train"]
    assert sft and all(s.launch.startswith("1 process, strategy none, rollouts -") for s in sft)
