"""Shared test setup: offline Hugging Face, the paper's data from ../shared/data, small torch threads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if SHARED_DATA.is_dir():
    os.environ.setdefault("SD_BENCH_DATA_DIR", str(SHARED_DATA))


@pytest.fixture(scope="session")
def offline_env() -> dict:
    """The environment of a test's subprocess: offline, one torch thread, no PYTHONPATH (so the subprocess
    imports the installed sd-bench, as a user's shell would)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1"
    )
    return env
