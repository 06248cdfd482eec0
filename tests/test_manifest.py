"""checkpoints_manifest.yaml: the shipped file is complete and valid; every problem gets one clear error."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sd_bench import manifest
from sd_bench.cli import main

REPO = Path(__file__).resolve().parents[1]
RELEASED = {
    f"beanie00/math-{a}-{m}-step-100"
    for a in ("GRPO", "SDPO", "SDPO-no-think-contents")
    for m in ("Qwen3-8B-think", "DeepSeek-Distill-7B")
} | {f"beanie00/math-{a}-Qwen3-8B-think-off-step-100" for a in ("GRPO", "SDPO")}


@pytest.fixture(scope="module")
def shipped():
    return manifest.load()


def test_shipped_manifest_covers_every_condition(shipped):
    ids = [e.id for e in shipped.entries]
    assert len(ids) == len(set(ids)) == 33
    assert [e.context for e in shipped.in_group("table1")] == ["none", "s", "s_nothink", "y_r"]
    assert [e.id for e in shipped.in_group("table2")] == ["t2_base", "t2_sft_unguided", "t2_sft_guided"]
    onpolicy = {
        (e.base_model.key, e.thinking, e.recipe)
        for e in shipped.entries
        if e.kind == "onpolicy" and "coverage_sweep" not in e.groups and "ablation_ema" not in e.groups
    }
    models = {
        ("r1-distill-qwen-7b", True),
        ("qwen3-8b", True),
        ("qwen3-8b", False),
        ("olmo-3-7b-instruct", False),
        ("qwen3-1.7b", True),
    }
    assert onpolicy == {(m, t, r) for m, t in models for r in ("grpo", "sdpo", "sdpo_nothink")}
    ema = shipped.in_group("ablation_ema")
    assert len(ema) == 1 and ema[0].recipe == "sdpo_ema" and ema[0].overrides["teacher.ema_rate"] == 0.05
    cov = shipped.in_group("coverage_sweep")
    assert sorted((e.train_data, e.recipe) for e in cov) == sorted(
        (s, a)
        for s in ("dapo_seen_1x64", "dapo_seen_8x8", "dapo_seen_64", "dapo_seen_128", "dapo_seen_512")
        for a in ("grpo", "sdpo")
    )
    assert all(
        e.base_model.id == "Qwen/Qwen3-8B" and not e.thinking and e.decoding.temperature == 0.7 for e in cov
    )
    assert {e.released_checkpoint.id for e in shipped.entries if e.released_checkpoint} == RELEASED


def test_shipped_manifest_numbers_and_decoding(shipped):
    base = shipped.entry("t2_base")
    assert {(x.task, x.value) for x in base.expected} == {
        ("sd_aime24", 0.5479),
        ("sd_aime25", 0.3792),
        ("sd_amc23", 0.8906),
        ("sd_math500", 0.9219),
    }
    assert all("PAPER.md secondary reading" in x.source for e in shipped.entries for x in e.expected)
    d = base.decoding
    assert (d.temperature, d.top_p, d.max_new_tokens, d.k) == (0.6, 0.95, 38912, 16)
    assert all(
        m.revision == "main" and m.revision_note for m in shipped.models.values()
    )  # no invented hashes
    sdpo = shipped.entry("r1_7b_sdpo_s")
    assert {(x.metric, x.value) for x in sdpo.expected if x.task == "sd_aime24"} == {
        ("acc_rel_change", -0.40),
        ("wait_count_change", -60.8),
    }


def _raw():
    return yaml.safe_load((REPO / "checkpoints_manifest.yaml").read_text())


def test_every_problem_reported_once_with_entry_and_field():
    raw = _raw()
    e = {x["id"]: x for x in raw["entries"]}
    e["t2_sft_guided"]["recipe"] = "sftt"
    del e["t2_base"]["base_model"]
    e["r1_7b_grpo"]["expected"][0]["task"] = "aime24"
    e["cov_d64_sdpo"]["kind"] = "rl"
    raw["entries"].append(copy.deepcopy(e["t1_s"]))
    e["t1_none"]["released_checkpoint"] = {"id": "nope"}
    e["t1_s_nothink"]["decodng"] = "thinking"
    with pytest.raises(manifest.ManifestError) as exc:
        manifest.parse(raw, "m.yaml")
    problems = exc.value.problems
    expected = [
        "entry 't2_sft_guided': field 'recipe': unknown recipe 'sftt' (did you mean 'sft'?)",
        "entry 't2_base': field 'base_model': missing base model",
        "entry 'r1_7b_grpo': field 'expected[0]': expected metric for unknown task 'aime24' (did you mean 'sd_aime24'?)",
        "entry 'cov_d64_sdpo': field 'kind': 'rl' is not one of",
        "entry 't1_s': field 'id': duplicate id (also entry #1)",
        "entry 't1_none': field 'released_checkpoint'",
        "entry 't1_s_nothink': unknown field 'decodng' (did you mean 'decoding'?)",
    ]
    for want in expected:
        assert sum(p.startswith(want) for p in problems) == 1, (want, problems)
    assert len(problems) == len(expected), problems
    assert str(exc.value).startswith("m.yaml: 7 problem(s):")


def test_model_and_decoding_problems():
    raw = _raw()
    raw["models"]["qwen3-8b"]["revision_note"] = ""
    raw["decoding"]["thinking"]["top_p"] = 1.5
    raw["entries"][0]["base_model"] = "qwen3-8"
    with pytest.raises(manifest.ManifestError) as exc:
        manifest.parse(raw, "m.yaml")
    text = "\n".join(exc.value.problems)
    assert "model 'qwen3-8b': field 'revision_note': required when revision is 'main'" in text
    assert "decoding 'thinking': field 'top_p': 1.5 is not a number in (0, 1]" in text
    assert "entry 't1_none': field 'base_model': unknown model 'qwen3-8' (did you mean 'qwen3-8b'?)" in text


def test_validate_command(tmp_path, capsys):
    assert main(["manifest", "validate"]) == 0
    assert "OK: 33 entries" in capsys.readouterr().out
    raw = _raw()
    raw["entries"][3]["recipe"] = "grpo"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    assert main(["manifest", "validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert (
        "bad.yaml: 1 problem(s)" in err
        and "entry 't1_y_r': field 'recipe': a probe entry trains nothing" in err
    )
    (tmp_path / "broken.yaml").write_text("entries: [")
    assert main(["manifest", "validate", str(tmp_path / "broken.yaml")]) == 1
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["manifest", "validate", str(tmp_path / "absent.yaml")]) == 1
    assert "file not found" in capsys.readouterr().err


def test_manifest_does_not_import_torch():
    code = (
        "import sys; from sd_bench.cli import main; assert main(['manifest', 'validate']) == 0; "
        "assert 'torch' not in sys.modules and 'vllm' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True)


def test_override_keys_are_checked_with_the_trainer_config():
    raw = _raw()
    e = {x["id"]: x for x in raw["entries"]}
    e["cov_d8_grpo"]["overrides"]["optim.mini_batch"] = 32
    with pytest.raises(manifest.ManifestError) as exc:
        manifest.parse(raw, "m.yaml")
    (problem,) = exc.value.problems
    assert problem.startswith("entry 'cov_d8_grpo': field 'overrides':") and "mini_batch" in problem
    assert manifest.override_args({"a.b": False, "c": 64}) == ["a.b=false", "c=64"]
