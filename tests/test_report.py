"""`sd-bench report`: the page and figures from the committed smoke results and from a real lm-eval run.

The real run: a tiny random Qwen3 (sd_bench/tiny_model.py) through `lm_eval --model hf --log_samples` on
MATH500 (limit 2, k = 4, 8 new tokens), with the tasks from `sd-bench tasks-path --k 4`. Its statistics are
recomputed from the per-sample log and compared with computations written from the definitions here.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sd_bench import report, runs
from sd_bench.cli import main
from sd_bench.schemas import validate_result

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
K = 4


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, offline_env):
    """An lm-eval --output_path from a real run (about 25 s on one core)."""
    pytest.importorskip("torch")
    if not os.environ.get("SD_BENCH_DATA_DIR"):
        pytest.skip("needs the paper's data (SD_BENCH_DATA_DIR)")
    from sd_bench.lm_eval_tasks import write_tasks
    from sd_bench.tiny_model import build_tiny_qwen3

    root = tmp_path_factory.mktemp("tiny_run")
    model = build_tiny_qwen3(root / "tiny")
    tasks = write_tasks(root / "tasks", k=K)
    cmd = [
        str(BIN / "lm_eval"), "run", "--model", "hf", "--model_args", f"pretrained={model},dtype=float32",
        "--tasks", "sd_math500", "--limit", "2", "--gen_kwargs", "max_gen_toks=8", "--device", "cpu",
        "--batch_size", "8", "--log_samples", "--output_path", str(root / "base"), "--include_path", str(tasks),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=offline_env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root / "base"


def test_report_pass_at_k_equals_the_closed_form():
    """The report's pass@k curves use sd_bench.sampling_metrics.pass_at_k: 1 - C(n-c, k) / C(n, k)."""
    for n in (1, 4, 16):
        for c in range(n + 1):
            for k in range(1, n + 1):
                closed = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert report.pass_at_k(n, c, k) == pytest.approx(closed, abs=1e-12)
    assert report.pass_at_k(16, 1, 1) == pytest.approx(1 / 16) and report.pass_at_k(16, 0, 16) == 0.0
    with pytest.raises(ValueError):
        report.pass_at_k(4, 1, 8)


def test_mean_se_is_the_standard_error_of_the_mean():
    mean, se = report.mean_se([0.0, 0.5, 1.0, 1.0])
    ref_var = sum((x - 0.625) ** 2 for x in [0.0, 0.5, 1.0, 1.0]) / 3
    assert mean == 0.625 and se == pytest.approx(math.sqrt(ref_var / 4))
    assert report.mean_se([1.0]) == (1.0, None)


def test_report_on_the_committed_smoke_results(tmp_path):
    out = tmp_path / "report"
    assert (
        main(["report", str(REPO / "results" / "smoke"), "--baseline", "t2_base", "--output", str(out)]) == 0
    )
    md = (out / "report.md").read_text()
    for task in ("sd_toy_id", "sd_toy_ood", "toy_probe"):
        assert f"## {task}" in md
        for ext in ("png", "svg"):
            assert (out / f"{task}_accuracy.{ext}").stat().st_size > 10_000
    assert (out / "sd_toy_ood_markers.png").is_file() and not (out / "toy_probe_markers.png").exists()
    summary = json.loads((out / "report.json").read_text())
    points = {p["model"]: p for p in summary["tasks"]["sd_toy_id"]["points"]}
    base = json.loads((REPO / "results/smoke/eval/t2_base/sd_toy_id.json").read_text())
    guided = json.loads((REPO / "results/smoke/eval/t2_sft_guided/sd_toy_id.json").read_text())
    p = base["metrics"]["acc"]
    assert points["t2_base"]["acc"]["acc"]["mean"] == p
    assert points["t2_base"]["acc"]["acc"]["se"] == pytest.approx(math.sqrt(p * (1 - p) / base["n_problems"]))
    assert points["t2_base"]["se_is_bound"] and "≤" in md
    delta = summary["tasks"]["sd_toy_id"]["marker_deltas"]["t2_sft_guided"]["wait"]
    assert delta == pytest.approx(guided["metrics"]["marker_wait"] - base["metrics"]["marker_wait"])
    assert delta < -0.4  # the paper's direction: SFT on solution-guided traces removes the waits


def test_report_and_export_on_a_real_lm_eval_run(tiny_run, tmp_path):
    datasets = pytest.importorskip("datasets")
    (model,) = runs.read_run(tiny_run)
    docs = model.tasks["sd_math500"].docs()
    assert len(docs) == 2 and all(len(d.responses) == K for d in docs)

    out = tmp_path / "report"
    assert main(["report", str(tiny_run), "--output", str(out)]) == 0
    summary = json.loads((out / "report.json").read_text())
    (point,) = summary["tasks"]["sd_math500"]["points"]
    assert point["from_samples"] and not point["se_is_bound"] and point["k"] == K
    assert set(point["pass_at_k"]) == {"1", "2", "4"}
    for ext in ("png", "svg"):
        assert (out / f"sd_math500_accuracy.{ext}").is_file() and (
            out / f"sd_math500_pass_at_k.{ext}"
        ).is_file()

    exported = tmp_path / "export"
    assert main(["export", str(tiny_run), "--output", str(exported)]) == 0
    index = json.loads((exported / "export.json").read_text())
    item = index["models"]["base"]["tasks"]["sd_math500"]
    rows = datasets.load_dataset("parquet", data_files=str(exported / item["details"]))["train"]
    assert rows.num_rows == 2 * K and all(isinstance(t, int) and t > 0 for t in rows["response_tokens"])
    # reference from the definitions: per-problem rate c/n, its mean and standard error; pass@k closed form
    by_doc: dict[str, list[bool]] = {}
    for r in rows:
        by_doc.setdefault(r["problem_id"], []).append(r["correct"])
    rates = [sum(v) / len(v) for v in by_doc.values()]
    assert point["acc"]["acc"]["mean"] == pytest.approx(sum(rates) / len(rates))
    for k in (1, 2, 4):
        ref = sum(1 - math.comb(K - sum(v), k) / math.comb(K, k) for v in by_doc.values()) / len(by_doc)
        assert point["pass_at_k"][str(k)] == pytest.approx(ref)
    tokens = [sum(rows["response_tokens"][i * K : (i + 1) * K]) / K for i in range(2)]
    assert point["response_tokens"]["mean"] == pytest.approx(sum(tokens) / 2)
    # recomputed from the responses = what the task's own metric hooks reported to lm-eval
    logged = model.tasks["sd_math500"].result["metrics"]
    for ours, theirs in (("epistemic_count", "epistemic_count"), ("response_tokens", "response_tokens")):
        assert point[ours]["mean"] == pytest.approx(logged[theirs])
    assert point["acc"]["acc"]["mean"] == pytest.approx(logged["acc"])
    assert point["pass_at_k"]["2"] == pytest.approx(logged.get("pass_at_2", point["pass_at_k"]["2"]))
    result = json.loads((exported / item["result"]).read_text())
    validate_result(result)
    assert result["generation"]["k"] == K and result["generation"]["max_tokens"] == 8
    assert result["generation"]["temperature"] == 0.6 and result["engine"]["name"] == "transformers"
