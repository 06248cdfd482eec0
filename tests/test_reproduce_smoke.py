"""`sd-bench reproduce --table 2 --scale smoke`: the real trainer, lm-eval tasks and tables on the toy world.

The end-to-end run (one per module, ~90 s on an idle CPU core) goes through the real CLI; the tests then check
its files, that the data is non-degenerate and shows the paper's direction, that a rerun reuses every stage and
that redoing stages with the same seed gives the same numbers, and that `sd-bench check` passes the fresh
output and fails a planted drop.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sd_bench import manifest
from sd_bench.cli import main
from sd_bench.reproduce import plan as P

REPO = Path(__file__).resolve().parents[1]
TABLE2_STAGES = 8


def _metrics(table: dict) -> dict[str, dict[str, float]]:
    return {c: cond["metrics"] for c, cond in table["conditions"].items()}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("target", ["table1", "table2"])
def test_smoke_plans_are_fully_implemented(target):
    plan = P.build_plan(P.PlanRequest(target, "smoke", manifest.load()))
    assert P.missing_implementations(plan) == []
    assert plan.stages[-1].name == f"render/{target}"
    assert all(s.model in (None, "sd_bench/toy/base") or s.model.startswith("runs/") for s in plan.stages)


def test_smoke_figures_reuse_table3_and_figure3_stages():
    """Figures 4, 7, 8 add at most one training run (7's EMA teacher) to what Table 3 / Figure 3 already ran;
    figures 5 and 6 (several base models) have no toy version and say where they do exist."""

    def plan(target):
        return P.build_plan(P.PlanRequest(target, "smoke", manifest.load()))

    done = {s.name for t in ("table3", "figure3") for s in plan(t).stages}
    for target, new in (
        ("figure4", {"render/figure4"}),
        ("figure7", {"train/fig_sd_ema", "evaluate/fig_sd_ema", "render/figure7"}),
        ("figure8", {"render/figure8"}),
    ):
        p = plan(target)
        assert P.missing_implementations(p) == []
        assert {s.name for s in p.stages} - done == new, target
    ema = next(s for s in plan("figure7").stages if s.name == "train/fig_sd_ema")
    assert ema.recipe == "sdpo_reference" and "teacher.ema_rate=0.05" in ema.params["extra"]
    assert sum(s.kind == "train" for s in plan("figure8").stages) == 8
    for n in (5, 6):
        with pytest.raises(P.PlanError, match=r"single base model.*--scale small"):
            plan(f"figure{n}")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "out"
    assert main(["reproduce", "--table", "2", "--scale", "smoke", "--output", str(out)]) == 0
    return out


@pytest.mark.slow
def test_table2_smoke_files_and_non_degenerate(smoke):
    for name in (
        "table2.json",
        "table2.md",
        "table2.tex",
        "traces/unguided.jsonl",
        "traces/solution_guided.jsonl",
        "runs/t2_sft_unguided/final/config.json",
        "runs/t2_sft_guided/metrics.jsonl",
        "eval/t2_base/samples.jsonl",
    ):
        assert (smoke / name).is_file(), name
    assert len(list((smoke / "eval").glob("*/sd_toy_*.json"))) == 6
    # filtering and SFT really ran: correct traces, the guided ones without a wait
    ug, sg = _jsonl(smoke / "traces/unguided.jsonl"), _jsonl(smoke / "traces/solution_guided.jsonl")
    assert len(ug) >= 32 and len(sg) >= 32
    assert sum(t["waits"] for t in ug) / len(ug) > 0.5 and all(t["waits"] == 0 for t in sg)
    assert len(_jsonl(smoke / "runs/t2_sft_guided/metrics.jsonl")) >= 3
    table = json.loads((smoke / "table2.json").read_text())
    m = _metrics(table)
    assert list(m) == ["t2_base", "t2_sft_unguided", "t2_sft_guided"]
    # evaluations are not all zeros, and the base solves a real fraction in and out of domain
    assert 0.1 < m["t2_base"]["id_acc"] < 0.9 and 0.05 < m["t2_base"]["ood_acc"] < 0.9
    assert m["t2_base"]["id_waits"] > 0.2
    stats = table["conditions"]["t2_base"]["stats"]["id_acc"]
    assert stats["n_problems"] == 128 and stats["k"] == 4
    # the paper's direction: guided SFT kills waits and accuracy (OOD especially); unguided keeps waits
    assert m["t2_sft_guided"]["id_waits"] < 0.2 * m["t2_base"]["id_waits"]
    assert m["t2_sft_guided"]["ood_acc"] < m["t2_base"]["ood_acc"] - 0.1
    assert m["t2_sft_unguided"]["id_waits"] > 0.5 * m["t2_base"]["id_waits"]
    assert m["t2_sft_unguided"]["ood_acc"] > m["t2_sft_guided"]["ood_acc"] + 0.1
    assert table["provenance"]["run"]["seed"] == 0 and table["rules"]


@pytest.mark.slow
def test_table2_smoke_rerun_reuses_and_is_deterministic(smoke, tmp_path, capsys):
    before = json.loads((smoke / "table2.json").read_text())
    capsys.readouterr()
    assert main(["reproduce", "--table", "2", "--scale", "smoke", "--output", str(smoke)]) == 0
    assert f"0 stage(s) run, {TABLE2_STAGES} reused" in capsys.readouterr().out
    # redo the guided condition from its traces (SFT + lm-eval) in a copy: same seed, same numbers
    copy = tmp_path / "copy"
    shutil.copytree(smoke, copy)
    shutil.rmtree(copy / "runs/t2_sft_guided")
    shutil.rmtree(copy / "eval/t2_sft_guided")
    (copy / "table2.json").unlink()
    assert main(["reproduce", "--table", "2", "--scale", "smoke", "--output", str(copy)]) == 0
    assert "3 stage(s) run, 5 reused" in capsys.readouterr().out
    after = json.loads((copy / "table2.json").read_text())
    assert _metrics(after) == _metrics(before)


@pytest.mark.slow
def test_check_passes_fresh_output_and_fails_a_planted_drop(smoke, tmp_path):
    fresh = smoke / "table2.json"
    assert main(["check", str(fresh), "--against", str(fresh)]) == 0
    committed = REPO / "results" / "smoke" / "table2.json"
    if committed.is_file():  # what CI runs: the fresh reproduction against the committed baseline
        assert main(["check", str(fresh), "--against", str(committed)]) == 0
    planted = json.loads(fresh.read_text())
    planted.pop("rules")
    planted["conditions"]["t2_sft_unguided"]["metrics"]["ood_acc"] -= 0.25
    bad = tmp_path / "planted.json"
    bad.write_text(json.dumps(planted))
    assert main(["check", str(bad), "--against", str(fresh)]) == 1
    # guided SFT that kept its waits: out of tolerance, and the baseline's guard rule fails too
    planted = json.loads(fresh.read_text())
    planted["conditions"]["t2_sft_guided"]["metrics"]["id_waits"] = planted["conditions"]["t2_base"][
        "metrics"
    ]["id_waits"]
    bad.write_text(json.dumps(planted))
    assert main(["check", str(bad), "--against", str(fresh)]) == 1
