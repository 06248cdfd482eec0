"""Data parallel: 2 CPU processes (torchrun, gloo) end with the same weights as 1 process, same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from sd_bench.cli import main

REPO = Path(__file__).resolve().parents[1]
ARGS = ["train", "sdpo", "--scale", "smoke", "rollout.prompts_per_step=4", "optim.mini_batch_size=2",
        "optim.lr=1e-3"]


def test_two_processes_match_one(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29541",
           "-m", "sd_bench.cli", *ARGS, "--output", str(tmp_path / "two")]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    torch.set_num_threads(1)
    assert main([*ARGS, "--output", str(tmp_path / "one")]) == 0

    from safetensors.torch import load_file

    one = load_file(str(tmp_path / "one" / "final" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    base = load_file(str(tmp_path / "one" / "tiny-model" / "model.safetensors"))
    moved = max((one[k] - base[k]).abs().max().item() for k in one)
    diff = max((one[k] - two[k]).abs().max().item() for k in one)
    assert moved > 1e-4 and diff < 1e-5, (moved, diff)
    m1 = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["score"] for r in m1] == [r["score"] for r in m2]
    assert [r["samples_with_loss"] for r in m1] == [r["samples_with_loss"] for r in m2]
    assert all(abs(a["loss"] - b["loss"]) < 1e-6 for a, b in zip(m1, m2))
