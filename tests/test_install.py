"""Install and discovery: the wheel puts the task YAMLs where lm-eval 0.4.13 scans, and the installed `lm_eval`
CLI runs an sd-bench task from outside the repository with no --include_path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1"
    )
    return env


def test_wheel_contains_tasks_and_entry_point(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "sd_bench", "tasks"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif (REPO / name).exists():
            shutil.copy(REPO / name, src / name)
    if not (src / "README.md").exists():  # README is written separately; the wheel only needs one to exist
        (src / "README.md").write_text("sd-bench\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(src)],
        check=True,
        capture_output=True,
        text=True,
        env=_clean_env(),
    )
    (wheel,) = (tmp_path / "dist").glob("sd_bench-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    yamls = {n for n in names if n.startswith("lm_eval/tasks/sd_bench/") and n.endswith(".yaml")}
    expected = {f"lm_eval/tasks/sd_bench/{p.name}" for p in (REPO / "tasks").glob("*.yaml")}
    assert len(expected) >= 15 and expected <= yamls
    assert {"lm_eval/tasks/sd_bench/_sd_math_template", "lm_eval/tasks/sd_bench/utils.py"} <= names
    assert "sd_bench/lm_eval_tasks.py" in names
    assert "[lm_eval.tasks]\nsd_bench = sd_bench.lm_eval_tasks:tasks_path" in entry_points
    assert "sd-bench = sd_bench.cli:main" in entry_points


def _installed_tasks() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).resolve().parent / "tasks" / "sd_bench"


def test_lm_eval_cli_without_include_path(tmp_path):
    installed = _installed_tasks()
    if not (installed / "_sd_math_template").is_file():
        pytest.fail(
            f"sd-bench is not installed into lm-eval ({installed} missing): run `pip install -e .` first"
        )
    stale = [
        p.name
        for p in (REPO / "tasks").glob("*.yaml")
        if not (installed / p.name).is_file() or (installed / p.name).read_text() != p.read_text()
    ]
    assert not stale, f"installed task copies are stale ({stale}): reinstall with `pip install -e .`"
    pytest.importorskip("torch")
    from sd_bench.tiny_model import build_tiny_qwen3

    model = build_tiny_qwen3(tmp_path / "tiny")
    work = tmp_path / "elsewhere"
    work.mkdir()
    cmd = [
        str(BIN / "lm_eval"),
        "run",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={model},dtype=float32",
        "--tasks",
        "sd_ood_math",
        "--limit",
        "1",
        "--gen_kwargs",
        "max_gen_toks=4",
        "--device",
        "cpu",
        "--batch_size",
        "16",
        "--log_samples",
        "--output_path",
        "out",
    ]
    proc = subprocess.run(
        cmd, cwd=work, capture_output=True, text=True, env=_clean_env(), timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (results_file,) = (work / "out").rglob("results_*.json")
    results = json.loads(results_file.read_text())
    assert results["configs"]["sd_aime24"]["repeats"] == 16  # the paper's default k
    assert results["configs"]["sd_aime24"]["metadata"]["config_source"].startswith(str(installed))
    group = results["results"]["sd_ood_math"]
    assert {
        "acc,none",
        "pass_at_k,none",
        "epistemic_count,none",
        "response_tokens,none",
        "answer_rate,none",
    } <= set(group)

    # the per-word report reads that run's sample logs
    report = subprocess.run(
        [str(BIN / "sd-bench"), "markers", "out", "--json"],
        cwd=work,
        capture_output=True,
        text=True,
        env=_clean_env(),
        check=True,
    )
    data = json.loads(report.stdout)
    assert set(data) == {"sd_aime24", "sd_aime25", "sd_amc23", "sd_math500"}
    assert all(entry["run"]["responses"] == 16 for entry in data.values())
