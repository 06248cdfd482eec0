"""`sd-bench reproduce`: one pipeline at every scale (issue 13), priced from what runs, resumed by fingerprint."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sd_bench.cli import main
from sd_bench.reproduce import execute as E
from sd_bench.reproduce import plan as P
from sd_bench.reproduce import scale as S
from sd_bench.reproduce import stages
from sd_bench.reproduce.progress import Progress, format_seconds
from sd_bench.train.config import load_config

REPO = Path(__file__).resolve().parents[1]


def _plan(target, scale="paper", *sets, **kw):
    return P.build_plan(P.PlanRequest(target, scale, list(sets), **kw))


def test_light_imports():
    code = (
        "import sys, sd_bench.reproduce.plan, sd_bench.reproduce.cli, sd_bench.reproduce.progress, "
        "sd_bench.reproduce.protocol, sd_bench.reproduce.stages, sd_bench.plots; "
        "bad = [m for m in ('torch', 'vllm', 'sd_bench.toy.experiment') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_every_stage_kind_is_one_function_at_every_scale():
    """Issue 13's proof: the plan of every target at smoke and paper scale; each stage kind resolves to the
    same function object (stages.FUNCTIONS) at both, so no stage body is scale-specific."""
    seen: dict[str, set[int]] = {}
    for scale in ("smoke", "paper"):
        for target in P.TARGETS:
            if scale == "smoke" and target in ("figure5", "figure6"):  # they compare base models
                with pytest.raises(P.PlanError, match="single base model.*--scale small"):
                    _plan(target, scale)
                continue
            if scale == "paper" and target == "ablations":  # the miniature world's own target
                with pytest.raises(P.PlanError, match="no entries in group 'ablations'"):
                    _plan(target, scale)
                continue
            plan = _plan(target, scale)
            assert plan.stages[-1].kind == "render" and len({s.name for s in plan.stages}) == len(plan.stages)
            for st in plan.stages:
                assert st.run is stages.FUNCTIONS[st.kind], st.name
                seen.setdefault(st.kind, set()).add(id(st.run))
    assert set(seen) == set(P.KINDS) and all(len(ids) == 1 for ids in seen.values())


def test_table2_has_the_same_stage_graph_at_every_scale():
    graphs = {
        s: [
            (st.kind, st.name, st.inputs[:1] if st.kind != "render" else ())
            for st in _plan("table2", s).stages
        ]
        for s in S.SCALES
    }

    def shape(g):
        return [(k, n) for k, n, _ in g]

    assert (
        shape(graphs["smoke"])
        == shape(graphs["small"])
        == shape(graphs["paper"])
        == [
            ("select", "select/t2_traces_unguided"),
            ("generate", "generate/t2_traces_guided"),
            ("evaluate", "evaluate/t2_base"),
            ("train", "train/t2_sft_unguided"),
            ("evaluate", "evaluate/t2_sft_unguided"),
            ("train", "train/t2_sft_guided"),
            ("evaluate", "evaluate/t2_sft_guided"),
            ("render", "render/table2"),
        ]
    )
    t1 = {s: [st.kind for st in _plan("table1", s).stages] for s in ("smoke", "paper")}
    assert set(t1["smoke"]) == set(t1["paper"]) == {"select", "generate", "evaluate", "render"}


def test_paper_protocols_of_tables_1_and_2():
    """issue 12 rules 9-10 (eval_dapo_dataset.py, eval_with_hint.py, make_sft_dataset.py at 5c51051)."""
    t1 = {s.name: s for s in _plan("table1").stages}
    sel = t1["select/t1"].params
    assert (sel["k"], sel["temperature"], sel["top_p"], sel["top_k"], sel["max_new_tokens"]) == (
        8,
        0.6,
        0.95,
        20,
        32768,
    )
    assert (sel["min_correct"], sel["max_correct"], sel["keep"], sel["data"]) == (1, 4, 100, "dapo_math_17k")
    assert (
        t1["generate/t1_y_r"].inputs == ("probe/t1_s.jsonl",) and t1["generate/t1_s"].params["keep"] == "all"
    )
    assert t1["evaluate/t1_s"].outputs == ("eval/t1_s/dapo_probe.json", "eval/t1_s/samples_dapo_probe.jsonl")
    t2 = {s.name: s for s in _plan("table2").stages}
    assert t2["select/t2_traces_unguided"].params["keep"] == 800
    g = t2["generate/t2_traces_guided"]
    assert (g.params["context"], g.params["k"], g.params["keep"]) == ("s", 8, "first_correct")
    ev = t2["evaluate/t2_sft_guided"].params
    assert (ev["k"], ev["temperature"], ev["top_p"], ev["max_new_tokens"], ev["group"]) == (
        16,
        0.6,
        0.95,
        38912,
        "sd_ood_math",
    )
    assert t2["evaluate/t2_sft_guided"].model == "runs/t2_sft_guided/final"
    assert t2["train/t2_sft_guided"].params["overrides"]["data.name"] == "traces/solution_guided.jsonl"
    assert 5 < _plan("table2").gpu_hours < 100


def test_set_edits_the_scale_with_the_trainers_parser():
    """`--set` is sd_bench.train.config's key=value machinery: YAML values, types, closest-key errors."""
    plan = _plan("table1", "small", "k=4", "probe.problems=20")  # issue 8: `--set k=` reaches Table 1
    sel = next(s for s in plan.stages if s.kind == "select")
    assert sel.params["k"] == 4 and sel.params["keep"] == 20
    assert all(s.params["k"] == 4 for s in plan.stages if s.kind == "generate")
    t2 = _plan("table2", "smoke", "eval.limit=8", "train.optim.lr=5e-4")
    assert all(s.params["limit"] == 8 for s in t2.stages if s.kind == "evaluate")
    assert all(s.params["overrides"]["optim.lr"] == "5e-4" for s in t2.stages if s.kind == "train")
    for sets, message in (
        (["eval.kk=3"], "unknown key `eval.kk`; did you mean `eval.k`"),
        (["eval.k=many"], "field `eval.k`: expected"),
        (["sampler=tgi"], "expected one of auto, hf, vllm"),
        (["train.optim.lrr=1"], "did you mean `optim.lr`"),
        (["probe.max_correct=9"], "max_correct <= probe.k"),
        (["oops"], "expected KEY=VALUE"),
    ):
        with pytest.raises(P.PlanError, match=message):
            _plan("table2", "small", *sets)
    with pytest.raises(P.PlanError, match="did you mean 'cov_d8_grpo'"):
        _plan("table3", "small", "conditions=[cov_d9_grpo]")
    only = _plan("table3", "small", "conditions=[cov_d8_sdpo]")
    assert [s.name for s in only.stages] == [
        "evaluate/base_qwen3_8b_nothink@0",
        "train/cov_d8_sdpo",
        "evaluate/cov_d8_sdpo@10",
        "evaluate/cov_d8_sdpo@20",
        "evaluate/cov_d8_sdpo@30",
        "render/table3",
    ]


def test_dry_run_prices_train_stages_from_their_trainer_config():
    """The plan and the run cannot disagree: a train stage's basis IS the TrainConfig the trainer loads."""
    from sd_bench.reproduce.io import trainer_args

    for st in (s for s in _plan("table3", "small").stages if s.kind == "train"):
        cfg = load_config(
            st.recipe, scale=st.params["preset"], overrides=trainer_args(st.params["overrides"])
        )
        assert st.basis == {
            "prompts_per_step": cfg.rollout.prompts_per_step,
            "n": cfg.rollout.n,
            "max_new_tokens": cfg.rollout.max_new_tokens,
            "steps": cfg.run.max_steps,
            "save_every": cfg.run.save_every,
        }
        assert (cfg.rollout.prompts_per_step, cfg.rollout.max_new_tokens, cfg.run.max_steps) == (64, 4096, 30)
    # a --set on the trainer moves the estimate with it
    a = next(s for s in _plan("table3", "small").stages if s.kind == "train")
    b = next(
        s for s in _plan("table3", "small", "train.rollout.max_new_tokens=1024").stages if s.kind == "train"
    )
    assert b.basis["max_new_tokens"] == 1024 and b.gpu_hours < a.gpu_hours


def test_dry_run_cli_prints_plan_departures_and_runs_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["reproduce", "--table", "2", "--scale", "paper", "--dry-run", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "plan: table2, scale paper: 8 stages" in text and "GPU-hours (H100)" in text and not out.exists()
    assert main(["reproduce", "--table", "2", "--scale", "smoke", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "note: departure: train.lr: SDPO 3e-4" in text and "CPU seconds" in text
    assert main(["reproduce", "--figure", "4", "--scale", "paper", "--dry-run", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["target"] == "figure4" and data["stages"][-1]["outputs"] == ["figure4.png", "figure4.svg"]
    assert main(["reproduce", "--ablations", "--scale", "smoke", "--dry-run"]) == 0  # the toy ablations
    text = capsys.readouterr().out
    assert "train/fig_sdpo" in text and "render/ablations" in text and "train/fig_sd_none" in text
    assert main(["reproduce", "--table", "2", "--dry-run", "--set", "eval.kk=1"]) == 2
    assert "did you mean `eval.k`" in capsys.readouterr().err


# --- the executor: fingerprints, reuse, one writer --------------------------------------------------


def _stand_in_plan(calls: list[str], fail_at: str | None = None, value: str = "a") -> P.Plan:
    def writer(name, rel):
        def run(ctx):
            calls.append(name)
            ctx.report(1, 2, "half")
            if name == fail_at:
                raise RuntimeError("simulated crash")
            ctx.write_json(rel, {"stage": name, "value": ctx.stage.params["value"], "seed": ctx.seed})

        return run

    stages_ = [
        P.Stage("select/a", "select", "s", outputs=("probe/a.json",), params={"value": value}),
        P.Stage(
            "generate/b",
            "generate",
            "g",
            inputs=("probe/a.json",),
            outputs=("probe/b.json",),
            params={"value": "b"},
        ),
        P.Stage(
            "render/c",
            "render",
            "r",
            inputs=("probe/b.json",),
            outputs=("table9.json",),
            params={"value": "c"},
        ),
    ]
    for st in stages_:
        st.run = writer(st.name, st.outputs[0])
    return P.Plan("table1", S.resolve("small"), stages_)


def _run(plan, out, **kw):
    return E.execute(
        plan, out, progress=Progress([1, 1, 1], stream=io.StringIO(), tty=False), log=lambda m: None, **kw
    )


def test_executor_reuses_only_unchanged_stages(tmp_path):
    calls: list[str] = []
    with pytest.raises(P.PlanError, match="stage 'render/c' failed: RuntimeError: simulated crash"):
        _run(_stand_in_plan(calls, fail_at="render/c"), tmp_path)
    assert calls == ["select/a", "generate/b", "render/c"]
    calls.clear()  # resume: only the stage in flight reruns
    assert _run(_stand_in_plan(calls), tmp_path)["skipped"] == ["select/a", "generate/b"] and calls == [
        "render/c"
    ]
    calls.clear()  # another seed: every stage is stale
    report = _run(_stand_in_plan(calls), tmp_path, seed=7)
    assert calls == ["select/a", "generate/b", "render/c"] and "seed: 0 -> 7" in report["reran"]["select/a"]
    assert json.loads((tmp_path / "table9.json").read_text())["seed"] == 7
    calls.clear()  # a changed setting reruns its stage and every stage downstream of it (input fingerprints)
    report = _run(_stand_in_plan(calls, value="z"), tmp_path, seed=7)
    assert (
        calls == ["select/a", "generate/b", "render/c"]
        and "params.value: 'a' -> 'z'" in report["reran"]["select/a"]
    )
    assert "inputs.probe/a.json" in report["reran"]["generate/b"]
    calls.clear()
    with pytest.raises(P.PlanError, match=r"--no-rerun: 3 finished stage\(s\) are stale.*seed: 7 -> 1"):
        _run(_stand_in_plan(calls, value="z"), tmp_path, seed=1, no_rerun=True)
    assert calls == []
    (tmp_path / "probe/b.json").unlink()  # a deleted output reruns its stage (and what reads it)
    _run(_stand_in_plan(calls, value="z"), tmp_path, seed=7)
    assert calls == ["generate/b"]


def test_an_uncommitted_code_edit_reruns_stages_and_a_docs_edit_does_not(tmp_path, monkeypatch):
    import sd_bench.provenance as prov

    src = tmp_path / "checkout"
    for part in ("sd_bench", "recipes", "tasks"):
        shutil.copytree(REPO / part, src / part, ignore=shutil.ignore_patterns("__pycache__", "base"))
    (src / "README.md").write_text("docs")
    monkeypatch.setattr(prov, "REPO_ROOT", src)
    calls: list[str] = []
    _run(_stand_in_plan(calls), tmp_path / "out")
    (src / "README.md").write_text("docs, edited")  # not code: every stage is reused
    calls.clear()
    assert _run(_stand_in_plan(calls), tmp_path / "out")["skipped"] == ["select/a", "generate/b", "render/c"]
    losses = src / "sd_bench" / "train" / "losses.py"
    losses.write_text(losses.read_text() + "\n# an uncommitted edit\n")
    calls.clear()
    report = _run(_stand_in_plan(calls), tmp_path / "out")
    assert calls == ["select/a", "generate/b", "render/c"]
    assert report["reran"]["select/a"].startswith("code: ")


def test_one_writer_per_output_folder(tmp_path, capsys):
    (tmp_path / ".sd-bench").mkdir()
    (tmp_path / ".sd-bench/lock").write_text(str(os.getppid()))  # a live process holds it
    with pytest.raises(
        P.PlanError, match=rf"another sd-bench reproduce \(pid {os.getppid()}\) is writing it"
    ):
        _run(_stand_in_plan([]), tmp_path)
    (tmp_path / ".sd-bench/lock").write_text("999999999")  # its writer is gone: taken over
    _run(_stand_in_plan([]), tmp_path)
    assert not (tmp_path / ".sd-bench/lock").exists()
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(P.PlanError, match="holds no .sd-bench/"):
        _run(_stand_in_plan([]), user)
    assert (user / "notes.txt").read_text() == "mine"


def test_stage_that_does_not_write_its_outputs_fails(tmp_path):
    st = P.Stage("generate/x", "generate", "x", outputs=("x.json",), run=lambda ctx: None)
    with pytest.raises(P.PlanError, match="finished without writing x.json"):
        E.execute(
            P.Plan("table1", S.resolve("small"), [st]),
            tmp_path,
            progress=Progress([None], stream=io.StringIO(), tty=False),
        )
    assert not list((tmp_path / E.STATE_DIR).glob("*.json"))


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
