"""Resume is exact: 2 steps + `--resume` to 4 equals an uninterrupted 4-step run, bit for bit (CPU, smoke),
also after a SIGKILL; a half-written checkpoint is never picked up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from sd_bench.cli import main
from sd_bench.train.checkpoint import latest_checkpoint

REPO = Path(__file__).resolve().parents[1]


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    assert files, folder
    out = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def _assert_same(a: Path, b: Path):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def _metrics(run: Path) -> list[str]:
    return (run / "metrics.jsonl").read_text().splitlines()


@pytest.mark.parametrize(
    "recipe,overrides",
    [
        ("sdpo_ema", ["model.finetune=lora"]),  # adapter + EMA teacher state + optimizer
        ("grpo", []),  # full fine-tuning, two mini-batches per step
    ],
)
def test_resume_equals_uninterrupted(tmp_path, recipe, overrides):
    torch.set_num_threads(1)
    if recipe == "grpo":
        overrides = ["rollout.prompts_per_step=4", "optim.mini_batch_size=2", "optim.lr=1e-3"]
    common = ["train", recipe, "--scale", "smoke", *overrides]
    assert main([*common, "--output", str(tmp_path / "full"), "--max-steps", "4"]) == 0
    assert main([*common, "--output", str(tmp_path / "part"), "--max-steps", "2"]) == 0
    assert main([*common, "--output", str(tmp_path / "part"), "--max-steps", "4", "--resume"]) == 0
    _assert_same(tmp_path / "full" / "final", tmp_path / "part" / "final")
    full, part = _metrics(tmp_path / "full"), _metrics(tmp_path / "part")
    strip = lambda lines: [
        {
            k: v
            for k, v in __import__("json").loads(x).items()
            if k not in ("tokens_per_s", "step_seconds", "peak_mem_mib")
        }
        for x in lines
    ]
    assert strip(full) == strip(part)  # same losses, scores and metrics at every step


def test_half_written_checkpoint_is_ignored(tmp_path):
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.pt").write_bytes(b"")
    (tmp_path / ".checkpoint-7.tmp").mkdir()  # killed while writing
    (tmp_path / "checkpoint-9").mkdir()  # no trainer_state.pt: incomplete
    assert latest_checkpoint(tmp_path).name == "checkpoint-2"


def test_resume_after_sigkill(tmp_path):
    """A real process killed with SIGKILL after its 2nd checkpoint resumes to the same final weights."""
    cmd = [sys.executable, "-m", "sd_bench.cli", "train", "sdpo", "--scale", "smoke", "--max-steps", "6"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [*cmd, "--output", str(tmp_path / "killed")],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "killed" / "checkpoint-2").exists():
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert latest_checkpoint(tmp_path / "killed") is not None
    assert not (tmp_path / "killed" / "final").exists()
    torch.set_num_threads(1)
    assert (
        main(
            [
                "train",
                "sdpo",
                "--scale",
                "smoke",
                "--max-steps",
                "6",
                "--output",
                str(tmp_path / "killed"),
                "--resume",
            ]
        )
        == 0
    )
    assert (
        main(["train", "sdpo", "--scale", "smoke", "--max-steps", "6", "--output", str(tmp_path / "clean")])
        == 0
    )
    _assert_same(tmp_path / "clean" / "final", tmp_path / "killed" / "final")
    steps = [__import__("json").loads(x)["step"] for x in _metrics(tmp_path / "killed")]
    assert steps == [1, 2, 3, 4, 5, 6]  # resumed from a checkpoint, not restarted
