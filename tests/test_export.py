"""`sd-bench export`: per-response parquet that `datasets` loads, and result JSON that validates.

A canned lm-eval output folder (the files `lm_eval --log_samples` writes, with hand-made responses) gives
exact expectations written from the definitions: correctness by the boxed answer, thinking = the text
before the last `</think>`, marker counts = case-insensitive substring counts. The committed smoke results
(no per-sample logs) export their result files only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sd_bench import export
from sd_bench.cli import main
from sd_bench.markers import MARKERS
from sd_bench.schemas import validate_result

REPO = Path(__file__).resolve().parents[1]
STAMP = "2026-12-01T09-16-41.213761"
RESPONSES = [
    ["<think>Wait, maybe 3? Check: yes</think>The answer is \\boxed{4}.", "So \\boxed{5}", "no answer"],
    ["Hmm. \\boxed{x^2}", "\\boxed{x^{2}}", "Perhaps it seems likely \\boxed{2x}"],
]
GOLD = ["4", "x^2"]


def canned_lm_eval_run(root: Path) -> Path:
    """An lm-eval --output_path with one model folder: results_<time>.json + samples_sd_math500_<time>.jsonl."""
    model_dir = root / "my-model"
    model_dir.mkdir(parents=True)
    results = {
        "results": {"sd_math500": {"alias": "sd_math500", "acc,none": 0.5, "acc_stderr,none": 0.1}},
        "configs": {
            "sd_math500": {
                "repeats": 3,
                "generation_kwargs": {
                    "until": [],
                    "do_sample": True,
                    "temperature": 0.6,
                    "top_p": 0.95,
                    "max_gen_toks": 64,
                },
                "metadata": {"version": 1.0, "thinking": True},
            }
        },
        "n-samples": {"sd_math500": {"original": 500, "effective": 2}},
        "config": {"model": "hf", "model_args": "pretrained=my-org/my-model", "random_seed": 0, "limit": 2},
        "transformers_version": "5.0.0",
        "lm_eval_version": "0.4.13",
        "git_hash": None,
        "date": 0.0,
    }
    (model_dir / f"results_{STAMP}.json").write_text(json.dumps(results))
    with open(model_dir / f"samples_sd_math500_{STAMP}.jsonl", "w") as f:
        for i, (resps, gold) in enumerate(zip(RESPONSES, GOLD)):
            doc = {"id": f"math500/{i}", "answer": gold, "kind": "math", "tokenizer": ""}
            f.write(json.dumps({"doc_id": i, "doc": doc, "filtered_resps": [resps], "acc": 0.0}) + "\n")
    return root


def _substring_count(text: str, word: str) -> int:
    text, n, start = text.lower(), 0, 0
    while (i := text.find(word, start)) >= 0:
        n, start = n + 1, i + 1
    return n


def test_export_details_load_with_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    run = canned_lm_eval_run(tmp_path / "run")
    out = tmp_path / "exported"
    assert main(["export", str(run), "--output", str(out)]) == 0

    index = json.loads((out / "export.json").read_text())
    assert list(index["models"]) == ["run"]  # the folder the user named, not lm-eval's model slug
    item = index["models"]["run"]["tasks"]["sd_math500"]
    assert item["responses"] == 6
    rows = datasets.load_dataset("parquet", data_files=str(out / item["details"]))["train"]
    assert rows.num_rows == 6
    assert {
        "problem_id",
        "sample_index",
        "response",
        "extracted_answer",
        "correct",
        "response_tokens",
        "thinking_tokens",
        "epistemic_count",
        *(f"marker_{m}" for m in MARKERS),
    } <= set(rows.column_names)
    flat = [(i, j, text) for i, resps in enumerate(RESPONSES) for j, text in enumerate(resps)]
    assert [r["problem_id"] for r in rows] == [f"math500/{i}" for i, _, _ in flat]
    assert [r["sample_index"] for r in rows] == [j for _, j, _ in flat]
    assert [r["response"] for r in rows] == [t for _, _, t in flat]
    # reference: the last \boxed{...} after the last </think>, equal to gold (x^{2} == x^2)
    assert [r["extracted_answer"] for r in rows] == ["4", "5", None, "x^2", "x^{2}", "2x"]
    assert [r["correct"] for r in rows] == [True, False, False, True, True, False]
    # the paper's rule (sd_bench.grading rule "paper") beside it: its clear cases
    paper = rows["correct_acc_paper"]
    assert paper[0] is True and paper[1] is False and paper[2] is False and paper[3] is True
    # thinking: the first <think>...</think> content, stripped (sd_bench.paper_answer.thinking_text)
    assert rows[0]["thinking_chars"] == len("Wait, maybe 3? Check: yes") and rows[1]["thinking_chars"] == 0
    for r, (_, _, text) in zip(rows, flat):
        counts = {m: _substring_count(text, m) for m in MARKERS}
        assert {m: r[f"marker_{m}"] for m in MARKERS} == counts
        assert r["epistemic_count"] == sum(counts.values())
        assert r["response_chars"] == len(text)
        assert r["response_tokens"] is None  # the canned docs name no tokenizer
    assert rows[2]["epistemic_count"] == 0 and rows[5]["marker_likely"] == 1 and rows[0]["marker_check"] == 1

    result = json.loads((out / item["result"]).read_text())
    validate_result(result, item["result"])
    assert result["generation"] == {
        "k": 3,
        "temperature": 0.6,
        "top_p": 0.95,
        "max_tokens": 64,
        "thinking": True,
        "seed": 0,
    }
    assert result["engine"]["name"] == "transformers" and result["engine"]["version"] == "5.0.0"
    assert result["provenance"]["run"]["model"] == "my-org/my-model"
    assert result["metrics"]["acc"] == 0.5 and result["n_problems"] == 2


def test_export_smoke_results_without_samples(tmp_path):
    out = tmp_path / "smoke"
    export.export(REPO / "results" / "smoke", out)
    index = json.loads((out / "export.json").read_text())
    assert "t2_base" in index["models"] and len(index["models"]) >= 10
    written = sorted(out.rglob("*.json"))
    assert len(written) == 1 + sum(len(m["tasks"]) for m in index["models"].values())
    for path in written:
        if path.name != "export.json":
            validate_result(json.loads(path.read_text()), str(path))
    assert not list(out.rglob("*.parquet"))
    assert index["models"]["t2_base"]["tasks"]["sd_toy_id"]["why_no_details"]


def test_export_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    run = canned_lm_eval_run(tmp_path / "run")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["export", str(run), "--output", str(mine)]) != 0
    assert (mine / "notes.txt").read_text() == "keep me"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty" in err[0]


def test_export_names_a_path_that_is_no_run(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--output", str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lm_eval --output_path" in err[0] and "Traceback" not in err[0]
