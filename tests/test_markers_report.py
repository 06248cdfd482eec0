"""`sd-bench markers`: per-marker means per response from lm-eval sample logs, and deltas to a baseline."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sd_bench.markers_report import format_table, report


def _write(folder, task, stamp, responses_per_doc):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"samples_{task}_{stamp}.jsonl"
    with open(path, "w") as f:
        f.writelines(
            json.dumps({"doc_id": i, "filtered_resps": [resps], "resps": [[resps]], "acc": 0.0}) + "\n"
            for i, resps in enumerate(responses_per_doc)
        )
    return path


@pytest.fixture
def runs(tmp_path):
    run = tmp_path / "run" / "model"
    base = tmp_path / "base" / "model"
    # run: 3 responses; wait = 2 + 0 + 1 = 3 -> 1.0; check: "checking" + "Check" = 2 -> 2/3
    _write(
        run,
        "sd_aime24",
        "2026-01-01T00-00-00.000001",
        [["Wait, wait. Checking.", "no markers"], ["Hmm, wait: check."]],
    )
    # an older file for the same task is ignored (newest wins)
    _write(run, "sd_aime24", "2025-01-01T00-00-00.000001", [["wait " * 100]])
    # baseline: 2 responses; wait = 4 -> 2.0; check 0; hmm 1 -> 0.5
    _write(base, "sd_aime24", "2026-01-01T00-00-00.000001", [["wait wait wait hmm", "WAIT"]])
    return tmp_path / "run", tmp_path / "base"


def test_report_means_and_delta(runs):
    run, base = runs
    result = report([str(run)], [str(base)])
    entry = result["sd_aime24"]
    assert entry["run"]["responses"] == 3 and entry["baseline"]["responses"] == 2
    assert entry["run"]["markers"]["wait"] == pytest.approx(1.0)
    assert entry["run"]["markers"]["check"] == pytest.approx(2 / 3)
    assert entry["run"]["markers"]["hmm"] == pytest.approx(1 / 3)
    assert entry["baseline"]["markers"]["wait"] == pytest.approx(2.0)
    assert entry["delta"]["wait"] == pytest.approx(-1.0)
    assert entry["delta"]["E(y)"] == pytest.approx((3 + 2 + 1) / 3 - 5 / 2)
    table = format_table(result)
    assert "sd_aime24" in table and "wait" in table and "-1.00" in table


def test_cli_table_and_json(runs):
    run, base = runs
    cmd = [sys.executable, "-m", "sd_bench.cli", "markers", str(run)]
    table = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert "baseline" not in table and "alternatively" in table
    out = subprocess.run(cmd + [str(base), "--json"], capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["sd_aime24"]["delta"]["wait"] == pytest.approx(-1.0)


def test_missing_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        report([str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="--log_samples"):
        report([str(tmp_path / "empty")])


def test_reads_the_sample_logs_sd_bench_reproduce_writes(tmp_path):
    """Every scale's eval folder holds samples_<task>.jsonl in lm-eval's --log_samples shape (lm-eval tasks
    and Table 1's probes alike), so `sd-bench markers eval/<cond> eval/<base>` works at every scale."""
    from sd_bench.reproduce.io import jsonl_text

    for cond, texts in (("t1_s", ["A:5"]), ("t1_none", ["wait A:5", "wait wait A:4"])):
        rows = [
            {"task": "toy_probe", "doc_id": 0, "doc": {"id": "p0", "answer": "5"}, "filtered_resps": texts}
        ]
        (tmp_path / cond).mkdir()
        (tmp_path / cond / "samples_toy_probe.jsonl").write_text(jsonl_text(rows))
    result = report([str(tmp_path / "t1_s")], [str(tmp_path / "t1_none")])
    assert result["toy_probe"]["delta"]["wait"] == pytest.approx(0.0 - 1.5)
    assert result["toy_probe"]["run"]["responses"] == 1
