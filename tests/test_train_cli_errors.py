"""Bad inputs to `sd-bench train`, through the real CLI entry (issue 8): each gets exit 2 and ONE line on
stderr naming the offending field, file (and line) or folder, with no traceback, before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from sd_bench.cli import main

# (id, extra argv, the text the one error line must hold)
VALUES = [
    ("lr_inf", ["optim.lr=.inf"], "`optim.lr` = inf must be a finite number"),
    ("lr_nan", ["optim.lr=.nan"], "`optim.lr` = nan must be a finite number"),
    ("lr_zero", ["optim.lr=0"], "`optim.lr` = 0.0 must be > 0"),
    ("betas_out_of_range", ["optim.betas=[2,3]"], "`optim.betas` = [2.0, 3.0] must be two numbers in [0, 1)"),
    ("betas_one", ["optim.betas=[0.9]"], "`optim.betas` = [0.9] must be two numbers"),
    ("weight_decay", ["optim.weight_decay=-1"], "`optim.weight_decay` = -1.0 must be >= 0"),
    ("warmup", ["optim.warmup_steps=-2"], "`optim.warmup_steps` = -2 must be >= 0"),
    ("grad_clip", ["optim.grad_clip=.inf"], "`optim.grad_clip` = inf must be a finite number"),
    ("temperature_neg", ["rollout.temperature=-1"], "`rollout.temperature` = -1.0 must be > 0"),
    ("temperature_zero", ["rollout.temperature=0"], "`rollout.temperature` = 0.0 must be > 0"),
    ("top_p_big", ["rollout.top_p=5"], "`rollout.top_p` = 5.0 must be in (0, 1]"),
    ("top_p_zero", ["rollout.top_p=0"], "`rollout.top_p` = 0.0 must be in (0, 1]"),
    ("top_k_zero", ["rollout.top_k=0"], "`rollout.top_k` = 0 must be >= 1 or null (off)"),
    ("top_k_minus_one", ["rollout.top_k=-1"], "`rollout.top_k` = -1 must be >= 1 or null (off)"),
    ("max_problems_zero", ["data.max_problems=0"], "`data.max_problems` = 0 must be >= 1 or null (all)"),
    ("max_problems_neg", ["data.max_problems=-3"], "`data.max_problems` = -3 must be >= 1 or null"),
    ("max_prompt_tokens", ["data.max_prompt_tokens=0"], "`data.max_prompt_tokens` = 0 must be >= 1"),
    ("keep_zero", ["run.keep_checkpoints=0"], "`run.keep_checkpoints` = 0 must be >= 1 or null (keep all)"),
    ("keep_neg", ["run.keep_checkpoints=-1"], "`run.keep_checkpoints` = -1 must be >= 1 or null"),
    ("micro_batch", ["optim.micro_batch_size=0"], "`optim.micro_batch_size` = 0 must be >= 1"),
    ("mini_batch_divides", ["optim.mini_batch_size=3"], "`optim.mini_batch_size` = 3 must divide"),
    ("n_zero", ["rollout.n=0"], "`rollout.n` = 0 must be >= 1"),
    ("ema_rate", ["teacher.ema_rate=1.5"], "`teacher.ema_rate` = 1.5 must be in [0, 1]"),
    ("success_threshold", ["teacher.success_threshold=.nan"], "`teacher.success_threshold` = nan must be"),
    ("alpha", ["loss.alpha=-0.5"], "`loss.alpha` = -0.5 must be in [0, 1]"),
    ("loss_top_k", ["loss.top_k=0"], "`loss.top_k` = 0 must be >= 1 or null (full vocabulary)"),
    ("clip_low", ["loss.clip_low=1.5"], "`loss.clip_low` = 1.5 must be in [0, 1)"),
    ("max_steps", ["run.max_steps=0"], "`run.max_steps` = 0 must be >= 1"),
    ("seed", ["run.seed=-1"], "`run.seed` = -1 must be >= 0"),
    ("master_narrower", ["model.master_dtype=bfloat16"], "`model.master_dtype` = 'bfloat16' is narrower"),
    ("aggregation", ["loss.aggregation=sum"], "`loss.aggregation` = 'sum'; expected one of"),
    ("rollout_is", ["loss.rollout_is=sequence"], "`loss.rollout_is` = 'sequence'; expected one of"),
    ("is_threshold", ["loss.rollout_is_threshold=0"], "`loss.rollout_is_threshold` = 0.0 must be > 0"),
    ("clip_ratio_c", ["loss.clip_ratio_c=1"], "`loss.clip_ratio_c` = 1.0 must be > 1 or null (off)"),
    ("string_for_int", ["run.max_steps=many"], "field `run.max_steps`: expected int, got 'many'"),
    ("unknown_key", ["optim.learning_rate=1"], "unknown key `optim.learning_rate`; did you mean"),
    (
        "yaml_in_override",
        ["optim.betas=[0.9,"],
        "command line `optim.betas=[0.9,`: the value is not valid YAML",
    ),
    ("yaml_flow_in_override", ["model.path={a"], "command line `model.path={a`: the value is not valid YAML"),
    ("empty_key", ["=3"], "empty key"),
    ("section_not_mapping", ["optim=3"], "`optim` must be a mapping"),
    ("model_path_missing", ["model.path=/nonexistent"], "`model.path` = '/nonexistent': no such folder"),
    ("model_path_not_repo_id", ["model.path=a/b/c"], "`model.path` = 'a/b/c': no such folder"),
    ("data_unknown_set", ["data.name=dapo_mathh"], "data.name='dapo_mathh': not a known set"),
]


def _fails(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert "error" in lines[0] and needle in lines[0], lines[0]
    assert "Repo id must be in the form" not in err
    return lines[0]


@pytest.mark.parametrize("extra,needle", [v[1:] for v in VALUES], ids=[v[0] for v in VALUES])
def test_bad_value_is_one_line(tmp_path, capsys, extra, needle):
    _fails(["train", "sdpo", "--scale", "smoke", "--output", str(tmp_path / "run"), *extra], needle, capsys)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


RECIPE = b"algorithm: sdpo\n"
# (id, file name, file bytes, the text the error must hold; {f} = the file's path)
RECIPES = [
    ("empty", "r.yaml", b"", "{f}: the recipe is empty"),
    ("comment_only", "r.yaml", b"# nothing\n", "{f}: the recipe is empty"),
    ("list", "r.yaml", b"- algorithm: sdpo\n", "{f}: the recipe's top level must be a mapping"),
    ("scalar", "r.yaml", b"sdpo\n", "{f}: the recipe's top level must be a mapping"),
    (
        "not_utf8",
        "r.yaml",
        b"algorithm: sdpo\nmodel: {path: \xff\xfe}\n",
        "{f}:2: not UTF-8 text (byte 0xff)",
    ),
    ("bad_yaml", "r.yaml", b"algorithm: sdpo\noptim: {lr: [1\n", "{f}: not valid YAML"),
    ("bad_type", "r.yaml", b"algorithm: sdpo\noptim: {lr: fast}\n", "{f}: field `optim.lr`: expected"),
]


@pytest.mark.parametrize("name,data,needle", [r[1:] for r in RECIPES], ids=[r[0] for r in RECIPES])
def test_bad_recipe_file_is_one_line(tmp_path, capsys, name, data, needle):
    f = _write(tmp_path / name, data)
    _fails(
        ["train", str(f), "--scale", "smoke", "--output", str(tmp_path / "run")], needle.format(f=f), capsys
    )


def _jsonl(*rows) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


GOOD_PROBLEM = {"question": "What is 1 + 1?", "answer": "2"}
GOOD_TRACE = {"question": "What is 1 + 1?", "response": "\\boxed{2}"}
# (id, recipe, file bytes, the text the error must hold; {f} = the file's path)
DATA = [
    (
        "null_answer",
        "sdpo",
        _jsonl(GOOD_PROBLEM, {"question": "q", "answer": None}),
        "{f}:2: field `answer` is null",
    ),
    ("null_question", "sdpo", _jsonl({"question": None, "answer": "1"}), "{f}:1: field `question` is null"),
    ("no_answer", "sdpo", _jsonl(GOOD_PROBLEM, {"question": "q"}), "{f}:2: needs `answer`"),
    ("list_answer", "sdpo", _jsonl({"question": "q", "answer": [1]}), "{f}:1: field `answer` must be text"),
    # the bad line is the 4th line of the file: a blank line and a U+2028 inside a string do not shift it
    (
        "malformed_line",
        "sdpo",
        _jsonl(GOOD_PROBLEM, {"question": "a\u2028b", "answer": "1"})
        + b"\n"
        + b'{"question": "x", "answer"\n',
        "{f}:4: not valid JSON",
    ),
    ("not_object", "sdpo", _jsonl(GOOD_PROBLEM, [1, 2]), "{f}:2: expected a JSON object, got list"),
    (
        "not_utf8",
        "sdpo",
        _jsonl(GOOD_PROBLEM) + b'{"question": "\xe9", "answer": "1"}\n',
        "{f}:2: not UTF-8 text",
    ),
    ("empty", "sdpo", b"\n\n", "{f}: no problems (the file is empty)"),
    (
        "sft_null_response",
        "sft",
        _jsonl(GOOD_TRACE, {"question": "q", "response": None}),
        "{f}:2: field `response` is null",
    ),
    ("sft_no_prompt", "sft", _jsonl({"response": "r"}), "{f}:1: needs `question` or `prompt`"),
    ("sft_malformed", "sft", _jsonl(GOOD_TRACE) + b"{oops\n", "{f}:2: not valid JSON"),
]


@pytest.mark.parametrize("recipe,data,needle", [d[1:] for d in DATA], ids=[d[0] for d in DATA])
def test_bad_data_file_is_one_line(tmp_path, capsys, recipe, data, needle):
    f = _write(tmp_path / "data.jsonl", data)
    argv = ["train", recipe, "--scale", "smoke", "--output", str(tmp_path / "run"), f"data.name={f}"]
    _fails(argv, needle.format(f=f), capsys)


def test_missing_traces_file(tmp_path, capsys):
    f = tmp_path / "traces.jsonl"
    argv = ["train", "sft", "--scale", "smoke", "--output", str(tmp_path / "run"), f"data.name={f}"]
    _fails(argv, f"data.name='{f}': no such file", capsys)


def test_model_path_without_scale_on_cpu_refuses(tmp_path, capsys):
    """Without --scale a CPU machine gets the smoke preset: a real model would train on 8 toy sums."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("the default scale is paper with a GPU")
    line = _fails(
        ["train", "sdpo", "--output", str(tmp_path / "run"), "model.path=org/model"], "--scale", capsys
    )
    assert "model.path=org/model without --scale" in line and "contains_answer" in line


def _fake_checkpoint(run: Path, step: int) -> None:
    """A complete-looking checkpoint folder (the trainer's layout); no model is ever loaded from it here."""
    folder = run / f"checkpoint-{step}"
    (folder / "model").mkdir(parents=True)
    (folder / "trainer_state.pt").write_bytes(b"")


def test_used_run_folder_needs_resume_or_overwrite(tmp_path, capsys):
    run = tmp_path / "run"
    _fake_checkpoint(run, 3)
    line = _fails(["train", "sdpo", "--scale", "smoke", "--output", str(run)], "holds another run", capsys)
    assert "checkpoint-3" in line and "--resume" in line and "--overwrite" in line
    # --max-steps below the checkpoint's step is an error, not a silent `final/` of step-3 weights
    _fails(
        ["train", "sdpo", "--scale", "smoke", "--output", str(run), "--resume", "--max-steps", "2"],
        "run.max_steps = 2 is below the step of",
        capsys,
    )
    _fails(
        ["train", "sdpo", "--scale", "smoke", "--output", str(run), "--resume", "--overwrite"],
        "--resume and --overwrite exclude each other",
        capsys,
    )


def test_resume_with_nothing_to_resume(tmp_path, capsys):
    run = tmp_path / "run"
    _fails(["train", "sdpo", "--scale", "smoke", "--output", str(run), "--resume"], "does not exist", capsys)
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    _fails(
        ["train", "sdpo", "--scale", "smoke", "--output", str(run), "--resume"],
        "holds no complete checkpoint-<step>/ to resume from",
        capsys,
    )
    assert (run / "metrics.jsonl").read_text() == '{"step": 1, "loss": 0.5}\n'  # never truncated


def test_output_is_a_file(tmp_path, capsys):
    f = _write(tmp_path / "file", b"x")
    _fails(["train", "sdpo", "--scale", "smoke", "--output", str(f)], "exists and is not a folder", capsys)


# ---------------------------------------------------------------- what a run says, and the run folder


def test_paper_scale_without_a_gpu_is_warned(tmp_path):
    import torch

    from sd_bench.train.cli import start_lines
    from sd_bench.train.config import load_config

    if torch.cuda.is_available():
        pytest.skip("needs a machine without a GPU")
    cfg = load_config("sdpo", scale="paper")
    lines = start_lines(cfg, "sdpo", "paper", tmp_path, None, explicit_scale=True)
    warning = [line for line in lines if line.startswith("warning: --scale paper without a GPU")]
    assert len(warning) == 1 and "256 x 8 rollouts of up to 20480 tokens per step" in warning[0]
    data = next(line for line in lines if line.startswith("  data:"))
    assert "dapo_math_17k (every row, repeats included, prompts <= 2048 tokens; reward" in data
    smoke = start_lines(
        load_config("sdpo", scale="smoke"), "sdpo", "smoke", tmp_path, None, explicit_scale=True
    )
    assert not [line for line in smoke if line.startswith("warning")]


def test_sft_epoch_trains_each_trace_once(tmp_path, capsys):
    """3 traces, batches of 4, 2 epochs: 2 steps of the same 3 traces (not 4 draws cycling over 3)."""
    import torch

    torch.set_num_threads(1)
    traces = tmp_path / "traces.jsonl"
    traces.write_text(
        _jsonl(*[{"question": f"What is {a} + 1?", "response": "x" * (a + 1)} for a in range(3)]).decode()
    )
    run = tmp_path / "sft"
    argv = ["train", "sft", "--scale", "smoke", "--output", str(run), f"data.name={traces}", "run.epochs=2"]
    assert main(argv) == 0
    assert "(3 traces, 1 steps per epoch of at most 4, 2 steps)" in capsys.readouterr().err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and [r["epoch"] for r in records] == [1, 2]
    assert records[0]["response_tokens"] == records[1]["response_tokens"]  # the same 3 traces each epoch


def test_torn_metrics_line_is_dropped_on_resume(tmp_path, capsys):
    from sd_bench.train.runtime import MetricsLog

    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1, "loss": 1}\n{"step": 2, "loss": 2}\n{"step": 3, "loss": 3}\n{"step": 4, "lo')
    MetricsLog(tmp_path, enabled=True, resume_step=2)
    assert log.read_text() == '{"step": 1, "loss": 1}\n{"step": 2, "loss": 2}\n'
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "dropped 1 unreadable line(s) (line 4" in err


def test_overwrite_removes_only_the_runs_files(tmp_path):
    from sd_bench.train.cli import remove_run

    run = tmp_path / "run"
    _fake_checkpoint(run, 2)
    for name in ("metrics.jsonl", "config.yaml", "notes.txt"):
        (run / name).write_text("x")
    (run / "final").mkdir()
    (run / "tiny-model").mkdir()
    remove_run(run)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt", "tiny-model"]


def test_unavailable_training_set_fails_before_the_model_loads(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SD_BENCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    argv = ["train", "sdpo", "--scale", "smoke", "--output", str(tmp_path / "run"), "data.name=dapo_math_17k"]
    line = _fails(argv, "set 'dapo_math_17k'", capsys)
    assert "$SD_BENCH_DATA_DIR/math/dapo_math_17k/" in line
    assert not (tmp_path / "run").exists()  # no tiny model was built: nothing loaded
