"""`sd-bench reproduce --table 2 --scale small`: the real-model code path, end to end, on a CPU.

The stage functions of every scale (sd_bench/reproduce/stages.py, the same objects the smoke run executes)
run here with the model swapped for the tiny random Qwen3 (sd_bench.tiny_model) through `--set`, the paper's
data from SD_BENCH_DATA_DIR, and tiny limits. Two departures, both `--set` values a user can see in the plan:
problems come from `dapo_seen_64` (DAPO-Math-17k itself needs the Hub), and `probe.require_correct=false`
keeps incorrect responses, because a random model solves nothing; the point is that every stage (sampling
with the trainer's rollouts, grading, SFT, lm-eval with the sd-bench tasks, per-sample logs, rendering) runs
for real. The numbers are zeros; the paper-scale numbers need a GPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sd_bench.cli import main
from sd_bench.reproduce import plan as P
from sd_bench.reproduce import sampling, stages

TASKS = ("sd_aime24", "sd_aime25", "sd_amc23", "sd_math500")
CONDITIONS = ("t2_base", "t2_sft_unguided", "t2_sft_guided")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _settings(tiny: Path, *extra: str) -> list[str]:
    sets = [
        f"model={tiny}",
        "data=dapo_seen_64",  # offline stand-in for dapo_math_17k
        "probe.candidates=3",
        "keep_correct=3",
        "probe.require_correct=false",  # the random model solves nothing
        "eval.k=2",
        "max_new_tokens=6",
        "limit=2",
        "sampler=hf",
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
        "select/t2_traces_unguided",
        "generate/t2_traces_guided",
        "evaluate/t2_base",
        "train/t2_sft_unguided",
        "evaluate/t2_sft_unguided",
        "train/t2_sft_guided",
        "evaluate/t2_sft_guided",
        "render/table2",
    ]
    assert len(list((out / ".sd-bench/stages").glob("*.json"))) == 8

    # select + generate: 3 DAPO problems x 8 samples, graded (all wrong), kept because require_correct=false
    ug, sg = _jsonl(out / "traces/unguided.jsonl"), _jsonl(out / "traces/solution_guided.jsonl")
    assert len(ug) == len(sg) == 3
    assert [t["id"] for t in sg] == [t["id"] for t in ug]  # D_sg regenerates D_ug's problems
    assert all(t["id"].startswith("dapo_seen_64/") and t["prompt"].endswith("\\boxed{}.") for t in ug + sg)
    assert all("Correct solution:" not in t["prompt"] for t in sg)  # stored with the PLAIN prompt
    assert {t["context"] for t in sg} == {"s"} and all(
        "epistemic_count" in t and "markers" in t for t in ug + sg
    )
    stats = json.loads((out / "traces/unguided.stats.json").read_text())
    assert stats["sampled"] == 3 * 8 and stats["kept_incorrect"] == 3 and stats["require_correct"] is False
    assert stats["sampling"]["top_k"] == 20  # the paper's probe decoding reaches the trainer's sampler

    # train: the trainer ran in-process on each traces file, 1 step, in a stable runs/<cond>
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
            assert r["kind"] == ("eval" if cond == "t2_base" else "sft")  # `sd-bench check` bounds by kind
            assert r["metrics"]["response_tokens"] > 0  # the tiny model's tokenizer counted the responses
            assert r["provenance"]["run"]["backend"] == "hf" and r["provenance"]["run"]["limit"] == 2
        for task in TASKS:
            rows = _jsonl(out / f"eval/{cond}/samples_{task}.jsonl")
            assert len(rows) == 2 and all(len(row["filtered_resps"]) == 2 for row in rows)
    sft = json.loads((out / "eval/t2_sft_guided/sd_aime24.json").read_text())
    assert sft["provenance"]["run"]["model_args"].startswith("pretrained=runs/t2_sft_guided/final")

    # render: ours beside the paper
    table = json.loads((out / "table2.json").read_text())
    assert set(CONDITIONS) <= set(table["conditions"])
    assert "54.79" in (out / "table2.md").read_text()
    assert (
        table["title"] == f"SFT on correct traces ({tiny}; avg@2)"
    )  # the run's model and k, not the paper's


def test_rerun_reuses_every_stage(run, capsys):
    out, argv = run
    before = (out / "table2.json").read_text()
    capsys.readouterr()
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "0 stage(s) run, 8 reused" in text
    assert "| model" in text and f"check: sd-bench check {out / 'table2.json'} --against" in text
    assert (out / "table2.json").read_text() == before


def test_markers_report_reads_the_sample_logs(run, capsys):
    out, _ = run
    assert main(["markers", str(out / "eval/t2_sft_guided"), str(out / "eval/t2_base")]) == 0
    text = capsys.readouterr().out
    assert "sd_math500" in text and "wait" in text


def test_lora_adapter_is_evaluated_with_its_base(tiny, tmp_path):
    """train.model.finetune=lora: final/ is a PEFT adapter; lm-eval gets pretrained=<base>,peft=<adapter>."""
    out = tmp_path / "out"
    sets = _settings(tiny, "train.model.finetune=lora", "train.model.lora_rank=4", "eval.k=1", "limit=1")
    assert main(["reproduce", "--table", "2", "--scale", "small", "--output", str(out), *sets]) == 0
    assert (out / "runs/t2_sft_guided/final/adapter_config.json").is_file()
    r = json.loads((out / "eval/t2_sft_guided/sd_math500.json").read_text())
    assert (
        r["provenance"]["run"]["model_args"]
        == f"pretrained={tiny},dtype=float32,peft=runs/t2_sft_guided/final"
    )


def test_stage_functions_are_the_smoke_runs():
    """This module's paper-path run and the checked smoke run execute the same stage function objects."""
    for target in ("table1", "table2", "table3"):
        small = P.build_plan(P.PlanRequest(target, "small"))
        smoke = P.build_plan(P.PlanRequest(target, "smoke"))
        assert {(s.kind, s.run) for s in small.stages} == {(s.kind, s.run) for s in smoke.stages}
        assert all(s.run is stages.FUNCTIONS[s.kind] for s in small.stages + smoke.stages)


def test_table1_small_probe_runs_every_context(tiny, tmp_path, capsys):
    """Table 1: select problems (8 samples each), sample under none / s / s\\think / y_r, grade, render."""
    out = tmp_path / "out"
    sets = [
        f"model={tiny}",
        "data=dapo_seen_64",
        "probe.candidates=3",
        "keep_correct=2",
        "probe.require_correct=false",
        "max_new_tokens=6",
        "sampler=hf",
    ]
    argv = ["reproduce", "--table", "1", "--scale", "small", "--output", str(out)]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    assert len(_jsonl(out / "probe/selection.jsonl")) == 2
    for cond in ("t1_none", "t1_s", "t1_s_nothink", "t1_y_r"):
        rows = _jsonl(out / f"probe/{cond}.jsonl")
        assert len(rows) == 2 * 8 and {r["condition"] for r in rows} == {cond}
        r = json.loads((out / f"eval/{cond}/dapo_probe.json").read_text())
        assert r["k"] == 8 and r["n_problems"] == 2 and r["metrics"]["response_tokens"] > 0
        assert r["kind"] == "probe" and {"acc", "acc_paper"} <= set(r["metrics"])
    assert "13,054" in (out / "table1.md").read_text()  # the paper's column beside ours
    capsys.readouterr()
    assert (
        main(["markers", str(out / "eval/t1_s"), str(out / "eval/t1_none")]) == 0
    )  # probes have samples too
    assert "dapo_probe" in capsys.readouterr().out
    # `--set k=` reaches Table 1 (issue 8): 2 samples per problem per context, selection re-run
    assert main(argv + [a for s in (*sets, "k=2", "probe.max_correct=2") for a in ("--set", s)]) == 0
    assert len(_jsonl(out / "probe/t1_s.jsonl")) == 2 * 2


# --- on-policy: Table 3 and the figures ---------------------------------------------------------------

ONPOLICY_SETS = (
    "steps=2",
    "eval_every=1",
    "eval.k=1",
    "limit=1",
    "max_new_tokens=6",
    "sampler=hf",
    "train.rollout.prompts_per_step=2",
    "train.rollout.n=2",
    "train.rollout.max_new_tokens=6",
    "train.optim.mini_batch_size=2",
    "train.model.dtype=float32",
    "train.teacher.max_prompt_tokens=256",
    "train.run.max_seq_len=128",
)


def _onpolicy_argv(target: list[str], out: Path, tiny: Path, *sets: str) -> list[str]:
    argv = ["reproduce", *target, "--scale", "small", "--output", str(out)]
    return argv + [a for s in (f"model={tiny}", *ONPOLICY_SETS, *sets) for a in ("--set", s)]


def test_checkpoint_folders_resolve_to_their_model_subfolder(tmp_path):
    """The trainer saves checkpoint-<N>/model/ (sd_bench/train/checkpoint.py); final/ is the model itself."""
    for rel in ("runs/c/checkpoint-3/model", "runs/c/final"):
        (tmp_path / rel).mkdir(parents=True)
        (tmp_path / rel / "config.json").write_text("{}")
    (tmp_path / "runs/c/checkpoint-3/trainer_state.pt").write_text("")
    assert sampling.resolve_model(tmp_path, "runs/c/checkpoint-3") == (
        str(tmp_path / "runs/c/checkpoint-3/model"),
        None,
        None,
    )
    assert sampling.resolve_model(tmp_path, "runs/c/final") == (str(tmp_path / "runs/c/final"), None, None)
    assert sampling.resolve_model(tmp_path, "Qwen/Qwen3-1.7B@abc") == ("Qwen/Qwen3-1.7B", "abc", None)


def test_table3_small_trains_and_evaluates_checkpoints(tiny, tmp_path):
    """|D| = 8, GRPO and SDPO: 2 steps each through the trainer, lm-eval at step 0 (base), 1 and 2."""
    out = tmp_path / "out"
    argv = _onpolicy_argv(["--table", "3"], out, tiny, "conditions=cov_d8_grpo,cov_d8_sdpo")
    assert main(argv) == 0
    names = [s["name"] for s in json.loads((out / ".sd-bench/plan-table3.json").read_text())["stages"]]
    assert names == [
        "evaluate/base_qwen3_8b_nothink@0",
        "train/cov_d8_grpo",
        "evaluate/cov_d8_grpo@1",
        "evaluate/cov_d8_grpo@2",
        "train/cov_d8_sdpo",
        "evaluate/cov_d8_sdpo@1",
        "evaluate/cov_d8_sdpo@2",
        "render/table3",
    ]
    for cond in ("cov_d8_grpo", "cov_d8_sdpo"):
        assert [m["step"] for m in _jsonl(out / f"runs/{cond}/metrics.jsonl")] == [1, 2]
        cmd = (out / f"runs/{cond}/command.txt").read_text()
        assert "data.name=dapo_seen_8x8" in cmd and "model.template_kwargs.enable_thinking=false" in cmd
        at1 = json.loads((out / f"eval/{cond}/step-1/sd_ood_math.json").read_text())
        assert at1["step"] == 1 and at1["k"] == 1
        assert at1["provenance"]["run"]["model_args"].startswith(
            f"pretrained=runs/{cond}/checkpoint-1/model,"
        )
        at2 = json.loads((out / f"eval/{cond}/step-2/sd_ood_math.json").read_text())
        assert at2["provenance"]["run"]["model_args"].startswith(f"pretrained=runs/{cond}/final,")
    table = json.loads((out / "table3.json").read_text())
    assert {"cov_d8_grpo", "cov_d8_sdpo"} <= set(table["conditions"])
    row = table["conditions"]["cov_d8_sdpo"]
    assert row["stats"]["train_score"]["step"] == 2 and row["stats"]["ood_acc"]["step"] == 2
    assert "Qwen3-8B" not in table["title"] and table["title"].startswith("Task coverage")


def test_figure4_small_plots_marker_deltas(tiny, tmp_path):
    """Figure 4: per-marker deltas of the last evaluation vs the step-0 base, from the sample-level metrics."""
    out = tmp_path / "out"
    sets = ("conditions=r1_7b_sdpo_s", "train.data.name=dapo_seen_64", "steps=1")  # dapo_math_17k: the Hub
    assert main(_onpolicy_argv(["--figure", "4"], out, tiny, *sets)) == 0
    assert (out / "figure4.png").stat().st_size > 1000 and (out / "figure4.svg").is_file()
    r = json.loads((out / "eval/r1_7b_sdpo_s/step-1/sd_aime24.json").read_text())
    assert "marker_wait" in r["metrics"]
