"""`sd-bench reproduce`: plans follow the paper's protocol; the executor resumes; progress shows time left."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sd_bench import manifest
from sd_bench.cli import main
from sd_bench.reproduce import plan as P
from sd_bench.reproduce.progress import Progress, format_seconds

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def man():
    return manifest.load()


def _plan(man, target, scale="paper", **kw):
    return P.protocol_plan(P.PlanRequest(target, scale, man, **kw))


def test_light_imports():
    code = (
        "import sys, sd_bench.reproduce.plan, sd_bench.reproduce.cli, sd_bench.reproduce.progress, "
        "sd_bench.plots; bad = [m for m in ('torch', 'vllm') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_table2_paper_plan_matches_protocol(man):
    plan = _plan(man, "table2")
    assert [(s.kind, s.name) for s in plan.stages] == [
        ("generate", "generate/t2_traces_unguided"),
        ("generate", "generate/t2_traces_guided"),
        ("evaluate", "evaluate/t2_base"),
        ("train", "train/t2_sft_unguided"),
        ("evaluate", "evaluate/t2_sft_unguided"),
        ("train", "train/t2_sft_guided"),
        ("evaluate", "evaluate/t2_sft_guided"),
        ("render", "render/table2"),
    ]
    st = {s.name: s for s in plan.stages}
    assert st["generate/t2_traces_unguided"].model == "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B@main"
    assert st["generate/t2_traces_unguided"].params["keep_correct"] == 800
    assert st["generate/t2_traces_guided"].inputs == ("traces/unguided.jsonl",)
    assert st["train/t2_sft_guided"].recipe == "sft"
    assert st["train/t2_sft_guided"].inputs[-1] == "traces/solution_guided.jsonl"
    for cond in ("t2_base", "t2_sft_unguided", "t2_sft_guided"):
        ev = st[f"evaluate/{cond}"]
        assert ev.params["tasks"] == ["sd_aime24", "sd_aime25", "sd_amc23", "sd_math500"]
        assert (
            ev.params["k"],
            ev.params["temperature"],
            ev.params["top_p"],
            ev.params["max_new_tokens"],
        ) == (16, 0.6, 0.95, 38912)
        assert f"eval/{cond}/sd_ood_math.json" in ev.outputs
    assert st["evaluate/t2_sft_guided"].model == "runs/t2_sft_guided/final"
    assert st["render/table2"].outputs == ("table2.json", "table2.md", "table2.tex")
    assert 5 < plan.gpu_hours < 50 and plan.disk_gb > 20


def test_other_paper_plans(man):
    t1 = _plan(man, "table1")
    assert [s.name for s in t1.stages][:6] == [
        "generate/t1_select",
        "generate/t1_none",
        "generate/t1_s",
        "generate/t1_s_nothink",
        "generate/t1_y_r",
        "evaluate/t1",
    ]
    assert {s.name: s.inputs for s in t1.stages}["generate/t1_y_r"] == ("probe/t1_s.jsonl",)
    t3 = _plan(man, "table3")
    trains = [s for s in t3.stages if s.kind == "train"]
    assert len(trains) == 10
    assert {s.params["overrides"]["data.name"] for s in trains} == {
        "dapo_seen_1x64",
        "dapo_seen_8x8",
        "dapo_seen_64",
        "dapo_seen_128",
        "dapo_seen_512",
    }
    assert all("64 prompts x 8 rollouts" in s.description for s in trains)
    assert {s.params["overrides"]["model.path"] for s in trains} == {"Qwen/Qwen3-8B"}
    assert all(s.params["overrides"]["model.template_kwargs.enable_thinking"] is False for s in trains)
    # figure 3 from released checkpoints: nothing trained, the step-100 models evaluated
    f3 = _plan(man, "figure3", from_checkpoints=True)
    assert not [s for s in f3.stages if s.kind == "train"]
    assert {s.model for s in f3.stages if s.kind == "evaluate" and s.params["step"] == 100} == {
        f"beanie00/math-{a}-DeepSeek-Distill-7B-step-100@main"
        for a in ("GRPO", "SDPO", "SDPO-no-think-contents")
    }
    f6 = _plan(man, "figure6", from_checkpoints=True)  # no released Olmo / Qwen3-1.7B models: trained
    assert len([s for s in f6.stages if s.kind == "train"]) == 6
    assert any("no released checkpoint" in n for n in f6.notes)


@pytest.mark.parametrize("scale", P.SCALES)
def test_every_target_plans_at_every_scale(man, scale):
    for target in P.TARGETS:
        if scale == "smoke" and target in ("figure5", "figure6"):  # they compare base models; the toy has one
            with pytest.raises(P.PlanError, match="single base model"):
                P.build_plan(P.PlanRequest(target, scale, man))
            continue
        plan = P.build_plan(P.PlanRequest(target, scale, man))
        assert plan.stages and plan.stages[-1].kind == "render"
        assert len({s.name for s in plan.stages}) == len(plan.stages)
        if scale == "smoke" and (target, scale) not in P.BUILDERS:
            assert plan.gpu_hours == 0 and all(
                s.model in (None, "sd_bench/toy/base") or s.model.startswith("runs/") for s in plan.stages
            )


def test_dry_run_cli_prints_plan_and_runs_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["reproduce", "--table", "2", "--scale", "paper", "--dry-run", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "plan: table2, scale paper: 8 stages" in text and "GPU-hours (H100)" in text
    assert "train/t2_sft_guided" in text and "keep the first 800 correct" in text
    assert not out.exists()
    assert main(["reproduce", "--figure", "4", "--scale", "paper", "--dry-run", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["target"] == "figure4" and data["stages"][-1]["outputs"] == ["figure4.png", "figure4.svg"]


def test_run_without_implementation_fails_clearly(tmp_path, capsys, monkeypatch):
    monkeypatch.delitem(P.BUILDERS, ("table2", "paper"), raising=False)
    rc = main(["reproduce", "--table", "2", "--scale", "paper", "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and "no implementation for 7 stage(s) of table2 at scale paper" in err
    assert "generate/t2_traces_unguided" in err and "--dry-run" in err


def _toy_stages(calls: list[str], fail_at: str | None = None):
    def writer(name, rel):
        def run(ctx):
            calls.append(name)
            ctx.report(1, 2, "half")
            if name == fail_at:
                raise RuntimeError("simulated crash")
            ctx.write_json(rel, {"stage": name})

        return run

    def train(ctx):
        calls.append("train")
        with ctx.atomic_dir("runs/a/final") as d:
            (d / "weights.bin").write_bytes(b"x")
        ctx.write_text("runs/a/metrics.jsonl", '{"step": 1}\n')

    return [
        P.Stage(
            "generate/a",
            "generate",
            "g",
            outputs=("traces/a.json",),
            run=writer("generate/a", "traces/a.json"),
        ),
        P.Stage("train/a", "train", "t", outputs=("runs/a/final", "runs/a/metrics.jsonl"), run=train),
        P.Stage("render/a", "render", "r", outputs=("table9.json",), run=writer("render/a", "table9.json")),
    ]


def test_executor_skips_finished_stages_and_resumes_after_a_crash(tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setitem(P.BUILDERS, ("table1", "small"), lambda req: _toy_stages(calls, fail_at="render/a"))
    plan = P.build_plan(P.PlanRequest("table1", "small", manifest.load()))
    stream = io.StringIO()
    with pytest.raises(P.PlanError, match="stage 'render/a' failed: RuntimeError: simulated crash"):
        P.execute(plan, tmp_path, progress=Progress([1, 1, 1], stream=stream, tty=False))
    assert calls == ["generate/a", "train", "render/a"]
    assert (tmp_path / "runs/a/final/weights.bin").read_bytes() == b"x"
    assert not list((tmp_path / "runs/a").glob(".final.tmp-*"))
    # resume: only the stage in flight reruns
    calls.clear()
    monkeypatch.setitem(P.BUILDERS, ("table1", "small"), lambda req: _toy_stages(calls))
    plan = P.build_plan(P.PlanRequest("table1", "small", manifest.load()))
    report = P.execute(plan, tmp_path, progress=Progress([1, 1, 1], stream=stream, tty=False))
    assert calls == ["render/a"] and report == {"ran": ["render/a"], "skipped": ["generate/a", "train/a"]}
    # a deleted output makes its stage run again
    (tmp_path / "traces/a.json").unlink()
    calls.clear()
    P.execute(plan, tmp_path, progress=Progress([1, 1, 1], stream=stream, tty=False))
    assert calls == ["generate/a"]
    log = stream.getvalue()
    assert (
        "[1/3] generate/a | elapsed 0s" in log
        and "| start" in log
        and "skipped (outputs exist)" in log
        and "FAILED after" in log
    )


def test_stage_that_does_not_write_its_outputs_fails(tmp_path):
    plan = P.Plan(
        "table1", "small", [P.Stage("generate/x", "generate", "x", outputs=("x.json",), run=lambda ctx: None)]
    )
    with pytest.raises(P.PlanError, match="finished without writing x.json"):
        P.execute(plan, tmp_path, progress=Progress([None], stream=io.StringIO(), tty=False))
    assert not (tmp_path / P.STATE_DIR).exists() or not list((tmp_path / P.STATE_DIR).iterdir())


def test_progress_time_left_and_lines():
    now = [0.0]
    stream = io.StringIO()
    p = Progress([10.0, 20.0, 30.0], stream=stream, tty=False, min_interval_s=0, clock=lambda: now[0])
    assert p.time_left() == 60.0
    p.start_stage(0, "generate/a")
    now[0] = 4.0
    p.update(2, 5, "problem 2/5")  # 40% after 4 s: 6 s left here, 50 s after
    assert p.time_left() == pytest.approx(6.0 + 50.0)
    now[0] = 20.0
    p.end_stage()  # took 20 s for an estimate of 10: the rest is scaled by 2
    p.start_stage(1, "train/a")
    assert p.time_left() == pytest.approx(40.0 + 60.0)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[1/3] generate/a | elapsed 0s | left ~1m00s | start")
    assert lines[1] == "[1/3] generate/a  40.0% problem 2/5 | elapsed 4s | left ~56s"
    assert format_seconds(3725) == "1h02m05s" and format_seconds(None) == "?"
    tty = io.StringIO()
    q = Progress([None], stream=tty, tty=True, clock=lambda: 0.0)
    q.start_stage(0, "x")
    assert tty.getvalue().startswith("\r\033[K[1/1] x") and "left ~?" in tty.getvalue()


def _fake_runs(acc: dict[str, float]):
    """Stand-ins for the trainer / lm-eval stages (the real ones are wired by sd_bench.reproduce.smoke):
    they write what the real stages write, so the render stages and `sd-bench check` run for real."""
    from sd_bench import tables
    from sd_bench.markers import MARKERS

    def generate(ctx):
        for o in ctx.stage.outputs:
            ctx.write_text(o, '{"prompt": "1+1", "response": "2"}\n')

    def train(ctx):
        cond = ctx.stage.params["condition"]
        with ctx.atomic_dir(f"runs/{cond}/final") as d:
            (d / "config.json").write_text("{}")
        rows = [
            {"step": s, "score": 0.3 + 0.01 * s, "response_tokens": 20 - 0.5 * s, "epistemic_count": 1.0}
            for s in range(ctx.stage.params["steps"] + 1)
        ]
        ctx.write_text(f"runs/{cond}/metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))

    def evaluate(ctx):
        p = ctx.stage.params
        cond, step = p["condition"], p["step"]
        for o in ctx.stage.outputs:
            task = Path(o).stem
            if task == "samples":
                ctx.write_text(o, "")
                continue
            a = acc.get(cond, 0.3) - 0.001 * (step or 0)
            metrics = {
                "acc": a,
                "response_tokens": 20.0,
                "epistemic_count": 1.0,
                **{f"marker_{m}": (0.2 if cond.startswith("base") else 0.1) for m in MARKERS},
            }
            ctx.write_json(o, tables.make_result(cond, task, metrics, n_problems=256, k=p["k"], step=step))

    return {"generate": generate, "train": train, "evaluate": evaluate}


def test_smoke_table2_end_to_end_with_stand_in_stages(tmp_path, monkeypatch, capsys):
    runs = _fake_runs({"t2_base": 0.33, "t2_sft_unguided": 0.31, "t2_sft_guided": 0.12})
    monkeypatch.setitem(P.BUILDERS, ("table2", "smoke"), lambda req: P.implement(P.protocol_plan(req), runs))
    out = tmp_path / "smoke"
    assert main(["reproduce", "--table", "2", "--scale", "smoke", "--output", str(out)]) == 0
    assert "8 stage(s) run, 0 reused" in capsys.readouterr().out
    table = json.loads((out / "table2.json").read_text())
    assert [c["key"] for c in table["columns"]] == ["toy_id", "toy_ood"]
    assert list(table["conditions"]) == ["t2_base", "t2_sft_unguided", "t2_sft_guided"]
    assert table["conditions"]["t2_sft_guided"]["metrics"]["toy_ood"] == pytest.approx(0.12)
    assert table["provenance"]["run"] == {"seed": 0, "scale": "smoke"}
    assert "SFT on solution-guided traces" in (out / "table2.md").read_text()
    assert (out / "table2.tex").read_text().startswith("\\begin{table}")
    # an unchanged rerun reuses everything; the regression check passes against itself
    assert main(["reproduce", "--table", "2", "--scale", "smoke", "--output", str(out)]) == 0
    assert "0 stage(s) run, 8 reused" in capsys.readouterr().out
    assert main(["check", str(out / "table2.json"), "--against", str(out / "table2.json")]) == 0


@pytest.mark.parametrize("figure", [3, 4])
def test_smoke_figures_with_stand_in_stages(tmp_path, monkeypatch, figure):
    runs = _fake_runs({"r1_7b_grpo": 0.4, "r1_7b_sdpo_s": 0.1, "r1_7b_sdpo_s_nothink": 0.3})
    key = (f"figure{figure}", "smoke")
    monkeypatch.setitem(P.BUILDERS, key, lambda req: P.implement(P.protocol_plan(req), runs))
    plan = P.build_plan(P.PlanRequest(f"figure{figure}", "smoke", manifest.load()))
    P.execute(plan, tmp_path, progress=Progress([s.est_seconds for s in plan.stages], stream=io.StringIO()))
    png, svg = tmp_path / f"figure{figure}.png", tmp_path / f"figure{figure}.svg"
    assert png.stat().st_size > 10_000 and "r1_7b_sdpo_s" in svg.read_text()
