"""Trainer logging to trackio (local-first, offline): `run.log_trackio` beside log_wandb / log_tensorboard.

Runs in a subprocess because trackio reads its storage folder (TRACKIO_DIR) once, at import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = """
import json, sys
from pathlib import Path
from sd_bench.train.runtime import MetricsLog
run = Path(sys.argv[1])
run.mkdir(parents=True)
log = MetricsLog(run, enabled=True, trackio=True, config={"optim.lr": 1e-5})
for step in (1, 2, 3):
    log.write({"step": step, "loss": 1.0 / step, "score": 0.25 * step, "condition": "sdpo", "kl": float("nan")})
log.close()
from trackio.sqlite_storage import SQLiteStorage
print("LOGS " + json.dumps(SQLiteStorage.get_logs("sd-bench", run.name)))
"""


def test_metrics_go_to_trackio_offline_in_the_run_folder(tmp_path):
    pytest.importorskip("trackio")
    from sd_bench.train.config import RunConfig

    assert RunConfig().log_trackio is False  # off unless asked for, like wandb / tensorboard
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRACKIO_DIR": ""}
    env.pop("TRACKIO_DIR")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "run1")],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("LOGS ")]
    logs = json.loads(line.removeprefix("LOGS "))
    assert not [r for r in logs if "__step" in r]  # no reserved-key clash with trackio's own step
    assert [(r["step"], r["loss"], r["score"]) for r in logs] == [
        (1, 1.0, 0.25),
        (2, 0.5, 0.5),
        (3, 1 / 3, 0.75),
    ]
    assert all(
        "condition" not in r and "kl" not in r for r in logs
    )  # numbers only, NaN dropped (as for wandb)
    assert (tmp_path / "run1" / "trackio" / "sd-bench.db").is_file()  # inside the run folder, not ~/.cache
    assert len((tmp_path / "run1" / "metrics.jsonl").read_text().splitlines()) == 3
