"""`sd-bench reproduce --table 2 --scale small`: the real-model code path, end to end, on a CPU.

The GPU stages (sd_bench/reproduce/full.py) run here unchanged with the model swapped for the tiny random
Qwen3 (sd_bench.tiny_model) through `--set`, the paper's data from SD_BENCH_DATA_DIR, and tiny limits. Two
departures, both `--set` values a user can see in the plan: the traces come from `dapo_seen_64`
(DAPO-Math-17k itself needs the Hub), and `require_correct=false` keeps incorrect traces, because a random
model solves nothing; the point is that every stage (sampling, grading, SFT, lm-eval with the sd-bench
tasks, per-sample logs, rendering) runs for real. The numbers are zeros; the paper-scale numbers need a GPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sd_bench import manifest
from sd_bench.cli import main
from sd_bench.reproduce import full
from sd_bench.reproduce import plan as P

TASKS = ("sd_aime24", "sd_aime25", "sd_amc23", "sd_math500")
CONDITIONS = ("t2_base", "t2_sft_unguided", "t2_sft_guided")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _settings(tiny: Path, *extra: str) -> list[str]:
    sets = [
        f"model={tiny}",
        "data=dapo_seen_64",  # offline stand-in for dapo_math_17k
        "candidates=3",
        "keep_correct=3",
        "require_correct=false",  # the random model solves nothing
        "k=2",
        "max_new_tokens=6",
        "limit=2",
        "backend=hf",
        "train.run.max_steps=1",
        "train.run.batch_size=2",
        "train.model.dtype=float32",
        "train.run.max_seq_len=128",
        *extra,
    ]
    return [a for s in sets for a in ("--set", s)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import torch

    from sd_bench.tiny_model import build_tiny_qwen3

    torch.set_num_threads(1)
    return build_tiny_qwen3(tmp_path_factory.mktemp("tiny") / "tiny-qwen3")


@pytest.fixture(scope="module")
def run(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("t2small") / "out"
    argv = ["reproduce", "--table", "2", "--scale", "small", "--output", str(out), *_settings(tiny)]
    assert main(argv) == 0
    return out, argv


def test_table2_small_runs_every_stage_for_real(run, tiny):
    out, _ = run
    state = json.loads((out / ".sd-bench/plan-table2.json").read_text())
    assert [s["name"] for s in state["stages"]] == [
        "generate/t2_traces_unguided",
        "generate/t2_traces_guided",
        "evaluate/t2_base",
        "train/t2_sft_unguided",
        "evaluate/t2_sft_unguided",
        "train/t2_sft_guided",
        "evaluate/t2_sft_guided",
        "render/table2",
    ]
    assert len(list((out / ".sd-bench/stages").glob("*.json"))) == 8

    # generate: 3 DAPO problems sampled, graded (all wrong), kept only because require_correct=false
    ug, sg = _jsonl(out / "traces/unguided.jsonl"), _jsonl(out / "traces/solution_guided.jsonl")
    assert len(ug) == len(sg) == 3
    assert [t["id"] for t in sg] == [t["id"] for t in ug]  # D_sg regenerates D_ug's problems
    assert all(t["id"].startswith("dapo_seen_64/") and t["prompt"].endswith("\\boxed{}.") for t in ug + sg)
    assert all("Correct solution:" not in t["prompt"] for t in sg)  # stored with the PLAIN prompt
    stats = json.loads((out / "traces/unguided.stats.json").read_text())
    assert stats["sampled"] == 3 and stats["kept_incorrect"] == 3 and stats["require_correct"] is False
    assert stats["provenance"]["data"]["set"] == "dapo_seen_64"

    # train: the trainer ran in-process on each traces file, 1 step, into runs/<cond>/final
    for cond, traces in (("t2_sft_unguided", "unguided"), ("t2_sft_guided", "solution_guided")):
        metrics = _jsonl(out / f"runs/{cond}/metrics.jsonl")
        assert [m["step"] for m in metrics] == [1]
        assert (out / f"runs/{cond}/final/config.json").is_file()
        cmd = (out / f"runs/{cond}/command.txt").read_text()
        assert f"data.name=traces/{traces}.jsonl" in cmd and f"model.path={tiny}" in cmd

    # evaluate: lm-eval on the sd_ood_math group, k=2 on 2 problems per task; samples for `sd-bench markers`
    for cond in CONDITIONS:
        for task in (*TASKS, "sd_ood_math"):
            r = json.loads((out / f"eval/{cond}/{task}.json").read_text())
            assert r["condition"] == cond and r["k"] == 2 and 0.0 <= r["metrics"]["acc"] <= 1.0
            assert r["metrics"]["response_tokens"] > 0  # the tiny model's tokenizer counted the responses
            assert r["provenance"]["run"]["backend"] == "hf" and r["provenance"]["run"]["limit"] == 2
        for task in TASKS:
            rows = _jsonl(out / f"eval/{cond}/samples_{task}.jsonl")
            assert len(rows) == 2 and all(len(row["filtered_resps"]) == 2 for row in rows)
        assert len(_jsonl(out / f"eval/{cond}/samples.jsonl")) == 8
    sft = json.loads((out / "eval/t2_sft_guided/sd_aime24.json").read_text())
    assert sft["provenance"]["run"]["model_args"].startswith("pretrained=runs/t2_sft_guided/final")

    # render: ours beside the paper
    table = json.loads((out / "table2.json").read_text())
    assert set(CONDITIONS) <= set(table["conditions"])
    assert "54.79" in (out / "table2.md").read_text()


def test_rerun_reuses_every_stage(run, capsys):
    out, argv = run
    before = (out / "table2.json").read_text()
    assert main(argv) == 0
    assert "0 stage(s) run, 8 reused" in capsys.readouterr().out
    assert (out / "table2.json").read_text() == before


def test_markers_report_reads_the_sample_logs(run, capsys):
    out, _ = run
    assert main(["markers", str(out / "eval/t2_sft_guided"), str(out / "eval/t2_base")]) == 0
    text = capsys.readouterr().out
    assert "sd_math500" in text and "wait" in text


def test_lora_adapter_is_evaluated_with_its_base(tiny, tmp_path):
    """train.model.finetune=lora: final/ is a PEFT adapter; lm-eval gets pretrained=<base>,peft=<adapter>."""
    out = tmp_path / "out"
    argv = [
        "reproduce",
        "--table",
        "2",
        "--scale",
        "small",
        "--output",
        str(out),
        *_settings(tiny, "train.model.finetune=lora", "train.model.lora_rank=4", "k=1", "limit=1"),
    ]
    assert main(argv) == 0
    assert (out / "runs/t2_sft_guided/final/adapter_config.json").is_file()
    r = json.loads((out / "eval/t2_sft_guided/sd_math500.json").read_text())
    assert r["provenance"]["run"]["model_args"] == (
        f"pretrained={tiny},dtype=float32,peft=runs/t2_sft_guided/final"
    )


def test_settings_appear_in_the_dry_run_plan(tiny):
    req = P.PlanRequest(
        "table2", "small", manifest.load(), settings={"model": str(tiny), "k": "3", "limit": "5"}
    )
    plan = P.build_plan(req)
    assert P.missing_implementations(plan) == []
    ev = [s for s in plan.stages if s.kind == "evaluate"]
    assert all(s.params["k"] == 3 and s.params["limit"] == 5 for s in ev)
    assert ev[0].model == str(tiny)
    gen = [s for s in plan.stages if s.kind == "generate"]
    assert all(s.params["k"] == 1 and s.params["data"] == "dapo_math_17k" for s in gen)  # traces: 1 sample
    assert [s.params["keep_correct"] for s in gen] == [200, 200]  # small scale
    paper = P.build_plan(P.PlanRequest("table2", "paper", manifest.load()))
    assert [s.params["keep_correct"] for s in paper.stages if s.kind == "generate"] == [800, 800]
    assert all(s.params["k"] == 16 for s in paper.stages if s.kind == "evaluate")


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"limt": "3"}, "did you mean 'limit'"),
        ({"k": "many"}, "expected a int"),
        ({"backend": "tgi"}, "expected one of auto, vllm, hf"),
        ({"require_correct": "maybe"}, "expected a bool"),
    ],
)
def test_bad_settings_are_one_clear_error(settings, message):
    with pytest.raises(P.PlanError, match=message):
        full.parse_settings(settings)


def test_set_is_refused_at_smoke_scale(capsys):
    assert main(["reproduce", "--table", "2", "--scale", "smoke", "--dry-run", "--set", "k=2"]) == 2
    assert "--set applies to --scale small|paper" in capsys.readouterr().err


def test_table1_small_probe_runs_every_context(tiny, tmp_path):
    """Table 1: select problems (8 samples each), sample under none / s / s\\think / y_r, grade, render."""
    out = tmp_path / "out"
    sets = [
        f"model={tiny}",
        "data=dapo_seen_64",
        "candidates=3",
        "keep_correct=2",
        "require_correct=false",
        "max_new_tokens=6",
        "backend=hf",
    ]
    argv = ["reproduce", "--table", "1", "--scale", "small", "--output", str(out)]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    assert len(_jsonl(out / "probe/selection.jsonl")) == 2
    for cond in ("t1_none", "t1_s", "t1_s_nothink", "t1_y_r"):
        rows = _jsonl(out / f"probe/{cond}.jsonl")
        assert len(rows) == 2 * 8 and {r["condition"] for r in rows} == {cond}
        r = json.loads((out / f"eval/{cond}/dapo_probe.json").read_text())
        assert r["k"] == 8 and r["n_problems"] == 2 and r["metrics"]["response_tokens"] > 0
    assert "13,054" in (out / "table1.md").read_text()  # the paper's column beside ours
