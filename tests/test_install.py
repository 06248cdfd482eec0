"""Install and discovery: the wheel puts the task YAMLs where lm-eval 0.4.13 scans, and the installed `lm_eval`
CLI runs an sd-bench task from outside the repository with no --include_path; the documented route
(`--include_path "$(sd-bench tasks-path)"`) works with lm-eval installed in another site folder and never
registers a task twice; the shared task cache is written once under a lock."""

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


@pytest.fixture(scope="module")
def wheel(tmp_path_factory, offline_env) -> Path:
    """The sd-bench wheel built from this checkout."""
    tmp_path = tmp_path_factory.mktemp("wheel")
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
        env=offline_env,
    )
    (built,) = (tmp_path / "dist").glob("sd_bench-*.whl")
    return built


def test_wheel_contains_tasks_and_entry_point(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    yamls = {n for n in names if n.startswith("lm_eval/tasks/sd_bench/") and n.endswith(".yaml")}
    expected = {f"lm_eval/tasks/sd_bench/{p.name}" for p in (REPO / "tasks").glob("*.yaml")}
    assert len(expected) >= 15 and expected <= yamls
    assert {"lm_eval/tasks/sd_bench/_sd_math_template", "lm_eval/tasks/sd_bench/utils.py"} <= names
    assert "sd_bench/lm_eval_tasks.py" in names
    assert "sd_bench/schemas/result-v1.json" in names  # the published result schema ships with the package
    assert "[lm_eval.tasks]\nsd_bench = sd_bench.lm_eval_tasks:tasks_path" in entry_points
    assert "sd-bench = sd_bench.cli:main" in entry_points


def _installed_tasks() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).resolve().parent / "tasks" / "sd_bench"


def test_lm_eval_cli_without_include_path(tmp_path, offline_env):
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
        cmd, cwd=work, capture_output=True, text=True, env=offline_env, timeout=600, check=False
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
        env=offline_env,
        check=True,
    )
    data = json.loads(report.stdout)
    assert set(data) == {"sd_aime24", "sd_aime25", "sd_amc23", "sd_math500"}
    assert all(entry["run"]["responses"] == 16 for entry in data.values())


def _lm_eval_elsewhere(site: Path) -> Path:
    """A second site folder holding the installed lm-eval's code (its own built-in tasks left out: the test
    needs none), as `pip install --target` or a clone on PYTHONPATH would place it."""
    import lm_eval

    pkg = Path(lm_eval.__file__).resolve().parent
    shutil.copytree(
        pkg, site / "lm_eval", ignore=lambda d, names: [n for n in names if Path(d) == pkg / "tasks" and
                                                        (pkg / "tasks" / n).is_dir()] + ["__pycache__"]
    )  # fmt: skip
    return site / "lm_eval"


def test_documented_route_with_lm_eval_in_another_site_folder(tmp_path, wheel, offline_env):
    """sd-bench from its wheel in one folder, lm-eval in another (first on PYTHONPATH): the folder the wheel
    wrote into `lm_eval/tasks/` is not the lm-eval that runs, so only `--include_path "$(sd-bench
    tasks-path)"` finds the tasks, and it does, with no override warning."""
    pytest.importorskip("torch")
    if not os.environ.get("SD_BENCH_DATA_DIR"):
        pytest.skip("needs the paper's data (SD_BENCH_DATA_DIR)")
    from sd_bench.tiny_model import build_tiny_qwen3

    lm_site, sd_site = tmp_path / "lm_site", tmp_path / "sd_site"
    lm_pkg = _lm_eval_elsewhere(lm_site)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(sd_site), str(wheel)],
        check=True, capture_output=True, text=True, env=offline_env,
    )  # fmt: skip
    env = {
        **offline_env,
        "PYTHONPATH": f"{lm_site}{os.pathsep}{sd_site}",
        "SD_BENCH_CACHE": str(tmp_path / "c"),
    }
    probe = "import lm_eval, sd_bench; print(lm_eval.__file__); print(sd_bench.__file__)"
    where = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                           check=True).stdout.split()  # fmt: skip
    assert where[0].startswith(str(lm_pkg)) and where[1].startswith(str(sd_site / "sd_bench"))
    assert not (lm_pkg / "tasks" / "sd_bench").exists()  # the wheel's copy is not where this lm-eval looks

    def sd_bench(*args):
        return subprocess.run([sys.executable, "-m", "sd_bench.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, check=True).stdout  # fmt: skip

    path = sd_bench("tasks-path").strip()
    assert path == str(
        (sd_site / "lm_eval" / "tasks" / "sd_bench").resolve()
    )  # found through the wheel's RECORD
    doctor = sd_bench("doctor")
    assert "missing" in doctor and "--include_path" in doctor and str(lm_pkg) in doctor

    model = build_tiny_qwen3(tmp_path / "tiny")
    cmd = [
        sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args", f"pretrained={model},dtype=float32",
        "--tasks", "sd_amc23", "--limit", "1", "--gen_kwargs", "max_gen_toks=4", "--device", "cpu",
        "--include_path", path, "--output_path", "out",
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600, check=False
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "overrides existing task" not in log
    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    results = json.loads(results_file.read_text())
    assert results["configs"]["sd_amc23"]["metadata"]["config_source"].startswith(path)
    assert "acc,none" in results["results"]["sd_amc23"]


def _override_warnings(paths: list[Path]) -> list[str]:
    """lm-eval's own index build (lm_eval/tasks/_index.py TaskIndex.build) over `paths`: its override warnings."""
    import logging

    from lm_eval.tasks._index import TaskIndex

    seen: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record):
            if "overrides existing task" in record.getMessage():
                seen.append(record.getMessage())

    handler = Catch()
    logger = logging.getLogger("lm_eval.tasks._index")
    logger.addHandler(handler)
    try:
        index = TaskIndex.build(paths)
    finally:
        logger.removeHandler(handler)
    assert "sd_aime24" in index and "sd_ood_math" in index
    return seen


def test_include_path_never_registers_a_task_twice(tmp_path, monkeypatch):
    """Against an lm-eval task folder holding a current, a stale or no copy of the tasks: the include path
    adds only what that copy lacks, so lm-eval warns exactly for the tasks that really change."""
    from sd_bench import lm_eval_tasks

    monkeypatch.setenv("SD_BENCH_CACHE", str(tmp_path / "cache"))
    lm_tasks = tmp_path / "lm_eval_tasks"
    copy = lm_tasks / "sd_bench"
    shutil.copytree(lm_eval_tasks.tasks_path(), copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(lm_eval_tasks, "installed_copy", lambda: copy)
    n_tasks = len(list(copy.rglob("*.yaml")))

    everything = [lm_tasks, Path(lm_eval_tasks.tasks_path())]
    assert len(_override_warnings(everything)) == n_tasks  # the issue: one warning per task and group

    current = lm_eval_tasks.include_path()
    assert lm_eval_tasks.copy_state(lm_eval_tasks.tasks_path(), copy) == ("current", [])
    assert not list(current.rglob("*.yaml")) and _override_warnings([lm_tasks, current]) == []

    (copy / "sd_aime24.yaml").write_text((copy / "sd_aime24.yaml").read_text() + "# edited\n")
    stale = lm_eval_tasks.include_path()
    assert sorted(p.name for p in stale.rglob("*.yaml")) == ["sd_aime24.yaml"]
    (warning,) = _override_warnings([lm_tasks, stale])
    assert "sd_aime24" in warning

    k4 = lm_eval_tasks.include_path(k=4)  # other settings: every task really overrides the copy
    assert len(_override_warnings([lm_tasks, k4])) == n_tasks
    assert "repeats: 4" in (k4 / "_sd_math_template").read_text()

    shutil.rmtree(copy)  # lm-eval without the copy: the shipped folder itself, nothing to override
    assert lm_eval_tasks.include_path() == Path(lm_eval_tasks.tasks_path())


def test_shared_task_cache_is_written_once_under_a_lock(tmp_path, monkeypatch):
    """Many writers at once (threads: each opens its own lock file description): one folder, complete, never
    replaced once written, no temporaries left; a user's own folder is never emptied."""
    from concurrent.futures import ThreadPoolExecutor

    from sd_bench import lm_eval_tasks

    monkeypatch.setenv("SD_BENCH_CACHE", str(tmp_path / "cache"))
    with ThreadPoolExecutor(6) as pool:
        folders = set(pool.map(lambda _: lm_eval_tasks.write_tasks(k=3), range(12)))
    (folder,) = folders
    assert folder.name.startswith("k3-thinking-on-maxdefault-")
    assert "repeats: 3" in (folder / "_sd_math_template").read_text()
    root = tmp_path / "cache" / "tasks"
    assert [p.name for p in root.iterdir() if not p.name.startswith(".")] == [folder.name]
    assert not [p for p in root.iterdir() if ".tmp-" in p.name]
    stamp = folder.stat().st_mtime_ns
    assert lm_eval_tasks.write_tasks(k=3) == folder and folder.stat().st_mtime_ns == stamp

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(ValueError):
        lm_eval_tasks.write_tasks(mine, k=4)
    assert (mine / "notes.txt").read_text() == "keep"


def test_doctor_says_which_route_and_why(tmp_path, monkeypatch):
    from sd_bench import doctor, lm_eval_tasks

    monkeypatch.setenv("SD_BENCH_CACHE", str(tmp_path / "cache"))
    copy = tmp_path / "lm_eval_tasks" / "sd_bench"
    monkeypatch.setattr(lm_eval_tasks, "installed_copy", lambda: copy)

    def findings() -> dict[str, str]:
        return dict(doctor.diagnose())

    missing = findings()
    assert "missing" in missing["lm-eval's own copy"] and "--include_path" in missing["bare route"]
    assert "nothing to override" in missing["documented route"]

    shutil.copytree(lm_eval_tasks.tasks_path(), copy, ignore=shutil.ignore_patterns("__pycache__"))
    current = findings()
    assert "current" in current["lm-eval's own copy"] and "no --include_path needed" in current["bare route"]
    assert "adds nothing" in current["documented route"]

    (copy / "sd_amc23.yaml").write_text("task: sd_amc23\n")
    stale = findings()
    assert "stale (1 file differs: sd_amc23.yaml)" in stale["lm-eval's own copy"]
    assert "stale copy" in stale["bare route"] and "adds 1 task/group file;" in stale["documented route"]
