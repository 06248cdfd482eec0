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
        # the paper's precision: float32 masters + AdamW state in the checkpoint, bfloat16 compute
        ("grpo", ["model.dtype=bfloat16"]),
    ],
)
def test_resume_equals_uninterrupted(tmp_path, recipe, overrides):
    torch.set_num_threads(1)
    if recipe == "grpo":
        overrides = ["rollout.prompts_per_step=4", "optim.mini_batch_size=2", "optim.lr=1e-3", *overrides]
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


# ----------------------------------------------------------------- checkpoint safety (issue 8 items 1, 2, 5)


class _Payload:
    """A pickle that runs a shell command when unpickled (what a hostile `trainer_state.pt` would hold)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_pickle_is_refused_not_run(tmp_path, capsys):
    from sd_bench.train.checkpoint import CheckpointError, load_state_file

    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    (run / "checkpoint-99").mkdir(parents=True)
    torch.save(_Payload(marker), run / "checkpoint-99" / "trainer_state.pt")
    torch.save(_Payload(marker), run / "checkpoint-99" / "rng-rank0.pt")
    for name in ("trainer_state.pt", "rng-rank0.pt"):
        with pytest.raises(CheckpointError, match=f"checkpoint-99/{name}: refused to load"):
            load_state_file(run / "checkpoint-99" / name)
    torch.set_num_threads(1)
    code = main(["train", "sdpo", "--scale", "smoke", "--output", str(run), "--resume", "--max-steps", "100"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and not marker.exists()  # refused, and the payload never ran
    assert "checkpoint-99/trainer_state.pt: refused to load" in err[-1] and "Traceback" not in "\n".join(err)
    assert "system" in err[-1]  # the global it names (posix.system), listed without running it
    # the reference: the same file with weights_only=False does run the payload (what the old loader did)
    torch.load(run / "checkpoint-99" / "trainer_state.pt", weights_only=False)
    assert marker.exists()


def test_rng_files_of_the_earlier_format_still_resume(tmp_path):
    """Before the pickle-free format, rng-rank*.pt held numpy's state tuple (an ndarray): numpy's array
    constructors are allow-listed, so those files load under weights_only=True and restore the same state."""
    import random

    import numpy as np

    from sd_bench.train.checkpoint import load_state_file, rng_state, set_rng_state

    np.random.seed(3)
    legacy = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save(legacy, tmp_path / "rng-rank0.pt")
    expected = np.random.rand(4)
    np.random.seed(99)
    set_rng_state(load_state_file(tmp_path / "rng-rank0.pt"))
    assert np.array_equal(np.random.rand(4), expected)
    torch.save(rng_state(), tmp_path / "new.pt")  # the current format round-trips too
    expected = (np.random.rand(4), random.random(), torch.rand(2))
    set_rng_state(load_state_file(tmp_path / "new.pt"))
    got = (np.random.rand(4), random.random(), torch.rand(2))
    assert np.array_equal(got[0], expected[0]) and got[1] == expected[1] and torch.equal(got[2], expected[2])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sd_bench.tiny_model import build_tiny_qwen3

    path = build_tiny_qwen3(tmp_path_factory.mktemp("tiny") / "m", seed=0)
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def _save(run: Path, step: int, tiny, keep=None) -> Path:
    from sd_bench.train.checkpoint import save_checkpoint

    model, tokenizer = tiny
    return save_checkpoint(run, step, model=model, tokenizer=tokenizer, trainer_state={"x": 1}, keep=keep)


def test_keep_checkpoints(tmp_path, tiny):
    from sd_bench.train.checkpoint import CheckpointError, list_checkpoints

    for step in (1, 2, 3):
        _save(tmp_path, step, tiny, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-3"]
    _save(tmp_path / "stale", 50, tiny)  # an older run's higher-numbered checkpoint in the same folder
    assert _save(tmp_path / "stale", 1, tiny, keep=1).is_dir()  # the one just written survives
    for bad in (0, -1):  # refused before anything is written or deleted
        with pytest.raises(CheckpointError, match=f"run.keep_checkpoints={bad}: use null"):
            _save(tmp_path, 4, tiny, keep=bad)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-3"]
    _save(tmp_path, 4, tiny)  # None keeps all
    assert len(list_checkpoints(tmp_path)) == 3


def test_disk_full_leaves_no_half_checkpoint(tmp_path, tiny, monkeypatch):
    import errno

    from sd_bench.train import checkpoint

    _save(tmp_path, 1, tiny)
    real_save = torch.save

    def full_disk(obj, path, *args, **kwargs):  # fault injection: the disk fills at the trainer state
        if Path(path).name == "trainer_state.pt":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(checkpoint.CheckpointError) as err:
        _save(tmp_path, 2, tiny)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{tmp_path}: no space left on device")
    assert "checkpoint-2" in message and "MiB free" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]  # no .tmp, no checkpoint-2
