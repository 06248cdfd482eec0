"""benchmarks/gpu_check.py --cpu: the GPU check's code at tiny shapes, in a fresh process as on the device,
with a wheel to unpack; every check reports its figures as JSON lines (stdout and OUT/figures.jsonl)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]


def _wheel(folder: Path) -> Path:
    """A pure-Python wheel (a zip: the package and its dist-info), as the GPU machine gets them."""
    whl = folder / "sd_probe_pkg-0.1-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("sd_probe_pkg/__init__.py", "VALUE = 42\n")
        z.writestr(
            "sd_probe_pkg-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: sd-probe-pkg\nVersion: 0.1\n"
        )
        z.writestr("sd_probe_pkg-0.1.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\n")
    return whl


def test_gpu_check_cpu_mode(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels)
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--cpu", "--out", str(out)]
    proc = subprocess.run(
        [*cmd, "--wheels", str(wheels), "--work", str(work)],
        cwd=tmp_path,  # sd-bench comes from the source tree, not the working directory
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert lines == [json.loads(x) for x in (out / "figures.jsonl").read_text().splitlines()]
    fig = {(x["check"], x["figure"]): x for x in lines}
    assert not [x for x in lines if x["figure"] == "error"], lines
    assert fig["environment", "modules"]["wheels"] == ["sd_probe_pkg-0.1-py3-none-any.whl"]
    assert (work / "site" / "sd_probe_pkg" / "__init__.py").is_file()  # unpacked onto the path
    assert fig["matmul_peak", "bf16_peak"]["value"] > 0 and "baseline_fp32" in fig["matmul_peak", "bf16_peak"]
    # the update: the target configuration against its pure-bf16 baseline, and LoRA
    full = fig["update", "full.s_per_update"]
    assert full["precision"] == "mixed" and full["baseline_full_bf16"] > 0 and full["value"] > 0
    assert fig["update", "full_bf16.s_per_update"]["precision"] == "bf16"
    assert fig["update", "lora.resp_tok_per_s"]["value"] > 0
    phases = fig["update", "full.phase_s"]["value"]
    assert set(phases) == {"teacher_forward", "student_forward", "loss", "backward", "optimizer"}
    assert "skipped" in fig["update", "full_liger.skipped"]["figure"]  # no CUDA: the liger runs say so
    # mixed precision stays close to fp32 on the same inputs; pure bf16 is reported beside it
    for loss in ("nll", "jsd"):
        assert fig["precision", f"mixed.{loss}_rel_diff"]["value"] < 2e-2
        assert f"bf16.{loss}_rel_diff" in {f for _, f in fig}
    # one AdamW step at lr 1e-6: float32 masters move every weight with a gradient, pure bf16 few
    assert fig["precision", "mixed.changed_at_lr_1e-6"]["value"] > 0.99
    assert fig["precision", "bf16.changed_at_lr_1e-6"]["value"] < 0.1
    # one real `sd-bench train sdpo` step, timed by phase
    for phase in ("rollout_s", "teacher_s", "student_s", "optimizer_s", "checkpoint_s", "peak_mib"):
        assert fig["train_step", phase]["value"] is not None, phase
    assert fig["train_step", "metrics"]["value"]["samples_with_loss"] > 0  # the teacher had work to do
    summary = fig["gpu_check", "wall_s"]
    assert summary["failures"] == 0 and summary["value"] < 120  # ~40 s on a loaded 2-core machine


def test_update_benchmark_in_a_fresh_process():
    """On the GPU each update benchmark runs in its own process: the same bench_step call, its last JSON line."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_check

    name, args = next(r for r in gpu_check.update_runs(cpu=True) if r[0] == "full")
    rec = gpu_check.run_update(name, args, peak=1.0, cpu=False, timeout=240)
    assert rec["precision"] == "mixed" and rec["s_per_update"] > 0 and "pct_of_peak" in rec
    assert set(rec["phase_s"]) == {"teacher_forward", "student_forward", "loss", "backward", "optimizer"}


def test_liger_option_fails_clearly_without_liger():
    import importlib.util

    if importlib.util.find_spec("liger_kernel") is not None:
        pytest.skip("liger-kernel is installed here")
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from sd_bench.train.model import apply_liger

    model = Qwen3ForCausalLM(
        Qwen3Config(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            vocab_size=64,
        )
    )
    with pytest.raises(RuntimeError, match=r"model.liger=true needs liger-kernel \(pip install liger-kernel"):
        apply_liger(model)
