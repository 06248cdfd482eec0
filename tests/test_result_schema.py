"""The published result schema (sd_bench/schemas/result-v1.json) and the writers that must satisfy it.

Writers checked here: provenance.stamp as reproduce's evaluate stages call it (full.py: sampling with
max_new_tokens and thinking, backend), sd_bench.runs on an lm-eval results file (export / report), legacy
results completed from what they recorded (the committed smoke results). Export's own files are checked in
tests/test_export.py, a real lm-eval run's in tests/test_report.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sd_bench import provenance, runs, tables
from sd_bench.schemas import RESULT_SCHEMA_FILE, SchemaError, result_errors, result_schema, validate_result

REPO = Path(__file__).resolve().parents[1]


def _result(**kw):
    return tables.make_result(
        "t2_base", "sd_aime24", {"acc": 0.5, "pass_at_k": 0.9}, n_problems=30, k=16, **kw
    )


def test_schema_file_is_a_valid_draft_2020_12_schema_named_like_the_results():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(RESULT_SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["schema"]["const"] == tables.RESULT_SCHEMA == "sd-bench/result/v1"
    assert set(schema["properties"]["generation"]["required"]) == {
        "k",
        "temperature",
        "top_p",
        "max_tokens",
        "thinking",
    }
    assert set(schema["else"]["required"]) == {"generation", "engine"}
    assert result_schema() == schema


def test_stamp_as_reproduce_calls_it_writes_a_valid_result():
    stamped = provenance.stamp(
        _result(),
        model="deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
        data="sd_aime24",
        seed=0,
        k=16,
        sampling={"temperature": 0.6, "top_p": 0.95, "max_new_tokens": 38912, "thinking": True},
        wall_time_s=1.0,
        backend="vllm",
    )
    validate_result(stamped)
    assert stamped["generation"] == {
        "k": 16,
        "temperature": 0.6,
        "top_p": 0.95,
        "max_tokens": 38912,
        "thinking": True,
        "seed": 0,
    }
    assert stamped["engine"]["name"] == "vllm"
    assert stamped["provenance"]["run"]["backend"] == "vllm"  # still recorded where it was before
    assert {"packages", "git", "python", "hardware", "created_utc"} <= set(stamped["provenance"])


@pytest.mark.parametrize(
    "change, field",
    [
        ({"backend": None}, "engine"),
        ({"sampling": {"temperature": 0.6, "top_p": 0.95}}, "generation.max_tokens"),
        ({"sampling": {"temperature": 0.6, "top_p": 1.5, "max_gen_toks": 8}}, "generation.top_p"),
        ({"k": None, "sampling": None}, "generation"),
    ],
)
def test_a_result_missing_a_required_setting_is_refused_naming_the_field(change, field):
    args = {"k": 4, "sampling": {"temperature": 0.6, "top_p": 0.95, "max_gen_toks": 8}, "backend": "hf"}
    stamped = provenance.stamp(_result(), model="m", **{**args, **change})
    with pytest.raises(SchemaError) as err:
        validate_result(stamped, "eval/t2_base/sd_aime24.json")
    message = str(err.value)
    assert message.startswith("eval/t2_base/sd_aime24.json: ") and "\n" not in message
    assert field in message


def test_training_scores_need_no_generation_settings():
    r = tables.make_result("cov_d1_sdpo", "train", {"score": 0.5}, n_problems=None, k=None, step=20)
    assert result_errors(r) == []
    assert result_errors({**r, "task": "sd_toy_id"})  # an evaluation without them is refused


def test_lm_eval_generation_reads_the_settings_lm_eval_ran_with():
    res = {
        "configs": {
            "sd_aime24": {
                "repeats": 4,
                "generation_kwargs": {"temperature": 0.7, "top_p": 0.8, "max_gen_toks": 99},
                "metadata": {"thinking": False},
            },
        },
        "group_subtasks": {"sd_ood_math": ["sd_aime24"]},
        "config": {"model": "vllm"},
    }
    for task in ("sd_aime24", "sd_ood_math"):  # a group: its subtasks' common settings
        gen = provenance.lm_eval_generation(res, task)
        assert gen == {
            "k": 4,
            "sampling": {"temperature": 0.7, "top_p": 0.8, "max_gen_toks": 99, "thinking": False},
            "backend": "vllm",
        }
        stamped = provenance.stamp(_result(), **gen)
        assert stamped["generation"]["max_tokens"] == 99 and stamped["generation"]["thinking"] is False
        validate_result(stamped)


def test_committed_smoke_results_validate_once_completed():
    """Files written before generation/engine were required are completed from what they recorded
    (runs.complete_legacy); files written since must validate as they are."""
    files = sorted((REPO / "results" / "smoke" / "eval").rglob("*.json"))
    results = [json.loads(p.read_text()) for p in files]
    results = [(p, r) for p, r in zip(files, results) if r.get("schema") == tables.RESULT_SCHEMA]
    assert len(results) >= 40
    for path, r in results:
        completed = runs.complete_legacy(r)
        validate_result(completed, str(path))
        reconstructed = completed.get("generation", {}).get("reconstructed")
        if reconstructed and r["task"] in ("sd_toy_id", "sd_toy_ood"):  # the cap of tasks/toy/<task>.yaml
            cap = yaml.safe_load((REPO / "tasks" / "toy" / f"{r['task']}.yaml").read_text().replace("!", "#"))
            assert completed["generation"]["max_tokens"] == cap["generation_kwargs"]["max_gen_toks"]
            assert completed["generation"]["k"] == 4 and completed["engine"]["name"] == "transformers"
