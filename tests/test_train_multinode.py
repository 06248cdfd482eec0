"""Multi-node launch (issue 10): 2 "nodes" = two `torchrun --nnodes 2 --rdzv-backend c10d` invocations on
localhost (1 process each, gloo), the command a researcher runs once per node. Full fine-tuning under FSDP2
with HF rollouts: step 1, a checkpoint, then a resume to step 2 in the same launch; the result equals an
uninterrupted 1-process run (same weights, rollouts, losses, gradient norms), so a multi-node run resumes
exactly. The output folder is shared by both "nodes", as a multi-node run needs (a shared filesystem)."""

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
FULL = [
    "train",
    "sdpo",
    "--scale",
    "smoke",
    "rollout.prompts_per_step=4",
    "optim.mini_batch_size=2",
    "optim.lr=1e-3",
]


def _node(rank: int, port: int, driver: Path, runs: list[list[str]]) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "2",
        "--node-rank",
        str(rank),
        "--nproc-per-node",
        "1",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{port}",
        "--rdzv-id",
        "sd-bench-test",
        str(driver),
        json.dumps(runs),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_nodes_on_localhost_run_and_resume_exactly(tmp_path):
    from test_train_multiprocess import DRIVER, _assert_match, _finish, _free_port, _weights

    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out = tmp_path / "nodes2"
    runs = [
        [*FULL, "--max-steps", "1", "--output", str(out)],
        [*FULL, "--max-steps", "2", "--resume", "--output", str(out)],
    ]
    port = _free_port()
    nodes = [_node(rank, port, driver, runs) for rank in (0, 1)]
    try:
        torch.set_num_threads(1)
        assert main([*FULL, "--max-steps", "2", "--output", str(tmp_path / "one")]) == 0
        log = "".join(_finish(node) for node in nodes)
    finally:
        for node in nodes:
            if node.poll() is None:
                node.terminate()
                node.wait(timeout=60)
    assert "data parallel: fsdp over 2 processes (gloo)" in log
    assert f"resuming from {out / 'checkpoint-1'}" in log
    _assert_match(tmp_path / "one", out, _weights(tmp_path / "one" / "tiny-model"))
