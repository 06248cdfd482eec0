"""Tables from result files: schema, lm-eval conversion, paper references, Markdown/LaTeX/JSON output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sd_bench import provenance, tables

REPO = Path(__file__).resolve().parents[1]


MV_OFFSET = 0.02  # math-verify's acc in these results: the paper rule's acc_paper + 0.02


def _write_results(root: Path, values: dict[str, dict[str, float]], n=30, k=16) -> list[Path]:
    """Result files with acc_paper = the value given and acc (math-verify) = value + MV_OFFSET (toy tasks:
    + 0, as their one grader serves both rules)."""
    paths = []
    for cond, per_task in values.items():
        for task, acc in per_task.items():
            r = tables.make_result(
                cond,
                task,
                {
                    "acc_paper": acc,
                    "acc": acc + (0 if "toy" in task else MV_OFFSET),
                    "response_tokens": 1000.0,
                },
                n_problems=n,
                k=k,
                provenance={"run": {"seed": 0}},
            )
            paths.append(tables.write_json_atomic(root / "eval" / cond / f"{task}.json", r))
    return paths


def test_light_imports():
    code = (
        "import sys, sd_bench.tables, sd_bench.check, sd_bench.provenance, sd_bench.manifest; "
        "sd_bench.provenance.collect(); "
        "bad = [m for m in ('torch', 'vllm', 'transformers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_table2_paper_scale_ours_paper_diff(tmp_path):
    _write_results(
        tmp_path,
        {
            "t2_base": {"sd_aime24": 0.55, "sd_aime25": 0.40, "sd_amc23": 0.90, "sd_math500": 0.92},
            "t2_sft_guided": {"sd_aime24": 0.20},
        },
    )
    results = tables.find_results(tmp_path)
    assert len(results) == 5
    t = tables.build_table(2, results, scale="paper", results_root=tmp_path)
    # per set: the paper rule's acc_paper (compared with the paper), then math-verify's acc beside it
    assert [c["key"] for c in t["columns"]] == [
        f"{s}{x}" for s in ("aime24", "aime25", "amc23", "math500") for x in ("", "_mv")
    ]
    assert [c["metric"] for c in t["columns"]][:2] == ["acc_paper", "acc"]
    base = t["conditions"]["t2_base"]
    assert base["metrics"]["aime24"] == pytest.approx(0.55)
    assert base["metrics"]["aime24_mv"] == pytest.approx(0.55 + MV_OFFSET)
    assert base["paper"]["aime24"] == pytest.approx(0.5479)
    assert base["paper"]["aime24_mv"] is None and base["diff"]["aime24_mv"] is None  # never compared
    assert base["diff"]["aime24"] == pytest.approx(0.55 - 0.5479)
    assert base["stats"]["aime24"] == {
        "task": "sd_aime24",
        "metric": "acc_paper",
        "n_problems": 30,
        "k": 16,
        "step": None,
        "source": "eval/t2_base/sd_aime24.json",
    }
    assert t["sources"]["eval/t2_base/sd_aime24.json"] == {"run": {"seed": 0}}
    # a paper row we did not measure keeps the paper numbers, ours = None
    assert t["conditions"]["t2_sft_unguided"]["metrics"]["aime24"] is None
    assert t["conditions"]["t2_sft_unguided"]["paper"]["amc23"] == pytest.approx(0.8766)
    paths = tables.write_table(t, tmp_path / "out", provenance=provenance.collect())
    md = paths["md"].read_text()
    header = md.splitlines()[2]
    assert "AIME24 ours" in header and "AIME24 math-verify" in header
    assert "AIME24 math-verify ours" not in header  # the math-verify column has no paper / diff columns
    assert "| SFT on solution-guided traces" in md and "20.00" in md and "20.21" in md and "-0.21" in md
    tex = paths["tex"].read_text()
    assert "\\toprule" in tex and "\\caption{SFT on correct traces" in tex and "\\%" in tex
    data = json.loads(paths["json"].read_text())
    assert data["provenance"]["git"].keys() == {"commit", "dirty"}
    assert "packages" in data["provenance"] and "hardware" in data["provenance"]
    assert not list((tmp_path / "out").glob(".*tmp*"))  # atomic writes leave no temporaries


def test_smoke_columns_are_data_driven(tmp_path):
    _write_results(
        tmp_path,
        {
            "t2_base": {"sd_toy_id": 0.33, "sd_toy_ood": 0.25},
            "t2_sft_guided": {"sd_toy_id": 0.10, "sd_toy_ood": 0.05},
        },
        n=256,
        k=4,
    )
    t = tables.build_table("2", tables.find_results(tmp_path), scale="smoke")
    assert [(c["key"], c["task"]) for c in t["columns"]] == [
        ("toy_id", "sd_toy_id"),
        ("toy_ood", "sd_toy_ood"),
    ]
    assert t["conditions"]["t2_sft_guided"]["metrics"] == {"toy_id": 0.10, "toy_ood": 0.05}
    assert t["conditions"]["t2_sft_guided"]["paper"] == {"toy_id": None, "toy_ood": None}
    md = tables.to_markdown(t)
    assert "toy_ood" in md and "33.0" in md  # acc shown in percent
    assert "math-verify" not in md  # toy tables: unchanged, one acc column per task


def test_latest_step_wins_and_extra_conditions_kept(tmp_path):
    for step, acc in ((10, 0.1), (20, 0.3)):
        r = tables.make_result("cov_d8_sdpo", "sd_ood_math", {"acc": acc}, n_problems=171, k=16, step=step)
        tables.write_json_atomic(tmp_path / f"s{step}.json", r)
    r = tables.make_result("my_extra", "sd_ood_math", {"acc": 0.5}, n_problems=171, k=16)
    tables.write_json_atomic(tmp_path / "extra.json", r)
    t = tables.build_table(3, tables.find_results(tmp_path), scale="smoke")
    # results with math-verify's acc only (no acc_paper): the math-verify column alone
    assert next(c["key"] for c in t["columns"] if c["task"] == "sd_ood_math") == "ood_acc_mv"
    assert t["conditions"]["cov_d8_sdpo"]["metrics"]["ood_acc_mv"] == 0.3
    assert "my_extra" in t["conditions"]
    assert t["descriptive"]["rows"][2]["dataset"] == "DAPO-Math-17k"
    assert "SciKnowEval" in tables.to_markdown(t)


def test_from_lm_eval_results_json(tmp_path):
    lm = {
        "results": {
            "sd_ood_math": {"alias": "sd_ood_math", "acc,none": 0.5, "acc_stderr,none": "N/A"},
            "sd_aime24": {
                "alias": "sd_aime24",
                "acc,none": 0.4,
                "acc_stderr,none": 0.05,
                "pass_at_k,none": 0.6,
                "epistemic_count,none": 12.5,
            },
            "sd_math500": {"acc,none": 0.9, "acc,strict": 0.8},
        },
        "group_subtasks": {"sd_ood_math": ["sd_aime24", "sd_math500"]},
        "n-samples": {
            "sd_aime24": {"original": 30, "effective": 30},
            "sd_math500": {"original": 500, "effective": 500},
        },
        "configs": {"sd_aime24": {"repeats": 16}, "sd_math500": {"repeats": 16}},
        "config": {"model_args": "pretrained=x"},
        "git_hash": "abc",
        "date": 1.0,
    }
    p = tmp_path / "results_2026.json"
    p.write_text(json.dumps(lm))
    res = {r["task"]: r for r in tables.from_lm_eval(p, "t2_base")}
    assert res["sd_aime24"]["metrics"] == {"acc": 0.4, "pass_at_k": 0.6, "epistemic_count": 12.5}
    assert (res["sd_aime24"]["n_problems"], res["sd_aime24"]["k"]) == (30, 16)
    assert res["sd_math500"]["metrics"] == {"acc": 0.9, "acc[strict]": 0.8}
    # group: effective n = M^2 / sum(1/n_j) = 4 / (1/30 + 1/500)
    assert res["sd_ood_math"]["n_problems"] == round(4 / (1 / 30 + 1 / 500)) and res["sd_ood_math"]["k"] == 16
    assert res["sd_aime24"]["provenance"]["lm_eval"]["model_args"] == "pretrained=x"
    for r in res.values():
        tables.validate_result(r)


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"schema": "x"}, "schema"),
        (
            {"schema": tables.RESULT_SCHEMA, "condition": "c", "task": "t", "metrics": {"acc": "high"}},
            "metrics.acc",
        ),
        (
            {
                "schema": tables.RESULT_SCHEMA,
                "condition": "c",
                "task": "t",
                "metrics": {"acc": 0.1},
                "n_problems": 0,
            },
            "n_problems",
        ),
    ],
)
def test_bad_result_files_name_the_field(tmp_path, bad, field):
    p = tmp_path / "r.json"
    p.write_text(json.dumps(bad))
    with pytest.raises(tables.ResultFileError, match=field) as exc:
        tables.read_result(p)
    assert str(p) in str(exc.value)


def test_paper_reference_files_agree_with_markdown_and_manifest():
    assert (REPO / "results/paper/paper.md").read_text() == tables.render_paper_md()
    from sd_bench import manifest

    m = manifest.load()
    for n in ("1", "2"):
        paper = tables.load_paper(n)
        cols = {c["key"]: c for c in paper["columns"]}
        checked = 0
        for cid, cond in paper["conditions"].items():
            exp = {(e.task, e.metric): e.value for e in m.entry(cid).expected}
            for key, value in cond["metrics"].items():
                assert exp[(cols[key]["task"], cols[key]["metric"])] == pytest.approx(value), (cid, key)
                checked += 1
        assert checked == {"1": 12, "2": 12}[n]


def test_provenance_collect_and_stamp():
    import socket

    prov = provenance.collect()
    assert prov["packages"]["lm-eval"] and prov["packages"]["math-verify"]
    assert prov["packages"]["sd-bench"].startswith("0.1.0")
    assert set(prov["git"]) == {"commit", "dirty"}
    if (REPO / ".git").exists():
        assert len(prov["git"]["commit"]) == 40 and isinstance(prov["git"]["dirty"], bool)
    assert prov["hardware"]["cpu_count"] >= 1 and isinstance(prov["hardware"]["gpus"], list)
    assert socket.gethostname() not in json.dumps(prov)
    r = tables.make_result("c", "sd_toy_id", {"acc": 0.5}, n_problems=10, k=4)
    s = provenance.stamp(
        r,
        model="m",
        model_revision="abc",
        data="toy",
        seed=3,
        k=4,
        sampling={"temperature": 0.6, "top_p": 0.95},
        wall_time_s=1.23456,
    )
    assert s["provenance"]["run"] == {
        "model": "m",
        "model_revision": "abc",
        "data": "toy",
        "seed": 3,
        "k": 4,
        "sampling": {"temperature": 0.6, "top_p": 0.95},
        "wall_time_s": 1.235,
    }
    assert "provenance" in r and r["provenance"] == {}  # the input is not modified
    tables.validate_result(s)


def test_condition_kind_comes_from_its_results():
    results = [
        tables.make_result("t2_base", "sd_toy_id", {"acc": 0.4}, n_problems=8, k=2) | {"kind": "eval"},
        tables.make_result("t2_sft_guided", "sd_toy_id", {"acc": 0.3}, n_problems=8, k=2),
    ]
    t = tables.build_table(2, results, scale="smoke")
    assert t["conditions"]["t2_base"]["kind"] == "eval"
    assert "kind" not in t["conditions"]["t2_sft_guided"]  # not stated: check falls back to the manifest


def test_table3_ood_column_is_the_paper_rule_when_measured(tmp_path):
    r = tables.make_result(
        "cov_d8_sdpo", "sd_ood_math", {"acc_paper": 0.31, "acc": 0.33}, n_problems=171, k=16
    )
    t = tables.build_table(3, [r], scale="paper")
    row = t["conditions"]["cov_d8_sdpo"]
    assert row["metrics"]["ood_acc"] == 0.31 and row["metrics"]["ood_acc_mv"] == 0.33
    assert row["stats"]["ood_acc"]["metric"] == "acc_paper"
