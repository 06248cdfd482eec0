"""`sd-bench check`: unchanged and reseeded reruns pass, planted drops fail, rules, github format, bad files."""

from __future__ import annotations

import copy
import json
import random
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from sd_bench import check, tables
from sd_bench.cli import main

REPO = Path(__file__).resolve().parents[1]
N, K = 256, 4


def _simulate(seed: int, p_i: list[float], shift: float = 0.0) -> float:
    """avg@K over the problems: K Bernoulli samples per problem (probabilities p_i + shift)."""
    rng = random.Random(seed)
    hits = sum(rng.random() < min(max(p + shift, 0.0), 1.0) for p in p_i for _ in range(K))
    return hits / (len(p_i) * K)


def _table(seed: int, drop: float = 0.0, length_scale: float = 1.0) -> dict:
    rng = random.Random(1234)  # fixed problem difficulties; the seed only changes the samples
    p_id = [rng.random() * 0.7 for _ in range(N)]
    p_ood = [rng.random() * 0.5 for _ in range(N)]
    results = []
    for cond, shift in (("t2_base", 0.0), ("t2_sft_unguided", -0.02), ("t2_sft_guided", -0.15)):
        extra = drop if cond == "t2_sft_unguided" else 0.0
        for task, p_i, tok, waits in (("sd_toy_id", p_id, 22.0, 0.6), ("sd_toy_ood", p_ood, 30.0, 0.8)):
            acc = _simulate(seed * 1000 + zlib.crc32((cond + task).encode()) % 997, p_i, shift - extra)
            wait = waits * (0.1 if cond == "t2_sft_guided" else 1.0)
            results.append(
                tables.make_result(
                    cond,
                    task,
                    {"acc": acc, "response_tokens": tok * length_scale, "wait_count": wait},
                    n_problems=N,
                    k=K,
                )
            )
    return tables.build_table(2, results, scale="smoke")


def _write(tmp_path: Path, name: str, data: dict) -> str:
    return str(tables.write_json_atomic(tmp_path / name, data))


def _cli(*args, capsys) -> tuple[int, str, str]:
    rc = main(["check", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_unchanged_rerun_passes(tmp_path, capsys):
    base = _write(tmp_path, "base.json", _table(seed=0))
    rerun = _write(tmp_path, "rerun.json", _table(seed=0))
    rc, out, _ = _cli(rerun, "--against", base, capsys=capsys)
    assert rc == 0, out
    assert "all within tolerance" in out and "conditions.t2_base.metrics.toy_id" in out


def test_reseeded_reruns_pass_and_planted_drop_fails(tmp_path, capsys):
    baseline = _table(seed=0)
    rows = [r for s in range(1, 41) for r in check.compare(_table(seed=s), baseline)]
    acc_rows = [r for r in rows if ".toy_" in r.path]
    assert len(acc_rows) == 40 * 6
    assert all(r.ok for r in rows), [r for r in rows if not r.ok][:3]
    # the bound is not vacuous: a 0.25 drop of avg@k on n=256 problems exceeds it
    drop = _table(seed=7, drop=0.25)
    base = _write(tmp_path, "base.json", baseline)
    res = _write(tmp_path, "drop.json", drop)
    rc, out, _ = _cli(res, "--against", base, capsys=capsys)
    assert rc == 1
    failed = [line for line in out.splitlines() if line.rstrip().endswith("FAIL")]
    assert {line.split()[0] for line in failed} == {
        "conditions.t2_sft_unguided.metrics.toy_id",
        "conditions.t2_sft_unguided.metrics.toy_ood",
    }
    assert "3se n=256" in out and "FAILED" in out


def test_allowed_difference_formula():
    b = check.Measurement("x", 0.9219, "acc", 500, 16)
    o = check.Measurement("x", 0.6552, "acc", 500, 16)
    allowed, how = check.allowed_difference(o, b, check.Tolerance("se", 3.0))
    x = 0.9219 * 500 + 0.6552 * 500
    p = (x + 2) / 1004
    assert allowed == pytest.approx(3 * (p * (1 - p) * (2 / 500)) ** 0.5)
    assert allowed < 0.9219 - 0.6552 and how == "3se n=500"
    tight, how = check.allowed_difference(o, b, check.Tolerance("se", 3.0), bound="samples")
    ps = (x * 16 + 2) / (2 * 8000 + 4)
    assert tight == pytest.approx(3 * (ps * (1 - ps) * (2 / 8000)) ** 0.5) and "k=16" in how
    # p = 0 on both sides still gives a positive tolerance (Agresti-Coull)
    zero = check.Measurement("x", 0.0, "acc", 100, 4)
    assert check.allowed_difference(zero, zero, check.Tolerance("se", 3.0))[0] > 0


def test_relative_tolerances_for_length_and_markers(tmp_path, capsys):
    # result files: every metric of the baseline is compared
    r_base = tables.make_result(
        "c", "sd_toy_id", {"acc": 0.3, "response_tokens": 20.0, "wait_count": 0.5}, n_problems=N, k=K
    )
    r_new = copy.deepcopy(r_base)
    r_new["metrics"].update(response_tokens=26.0, wait_count=0.58)
    rc, out, _ = _cli(
        _write(tmp_path, "rn.json", r_new), "--against", _write(tmp_path, "rb.json", r_base), capsys=capsys
    )
    assert rc == 1
    status = {line.split()[0]: line.split()[-1] for line in out.splitlines() if line.startswith("metrics.")}
    assert status == {"metrics.acc": "ok", "metrics.response_tokens": "FAIL", "metrics.wait_count": "ok"}


def test_overrides_cli_and_baseline_block(tmp_path, capsys):
    baseline = _table(seed=0)
    drop = _write(tmp_path, "drop.json", _table(seed=0, drop=0.25))
    base = _write(tmp_path, "base.json", baseline)
    assert _cli(drop, "--against", base, "--tolerance", "acc=0.5", capsys=capsys)[0] == 0
    path = "conditions.t2_sft_unguided.metrics.toy_id"
    rc, out, _ = _cli(drop, "--against", base, "--tolerance", f"{path}=0.5", capsys=capsys)
    assert rc == 1 and "toy_ood" in next(line for line in out.splitlines() if "FAIL" in line)
    base2 = _write(tmp_path, "base2.json", {**baseline, "tolerances": {"acc": 0.3}})
    assert _cli(drop, "--against", base2, capsys=capsys)[0] == 0
    rc, _, err = _cli(drop, "--against", base, "--tolerance", "acc=lots", capsys=capsys)
    assert rc == 2 and "'lots' is not a tolerance" in err


def test_missing_metric_fails(tmp_path, capsys):
    baseline = _table(seed=0)
    partial = copy.deepcopy(baseline)
    del partial["conditions"]["t2_base"]
    rc, out, _ = _cli(
        _write(tmp_path, "p.json", partial), "--against", _write(tmp_path, "b.json", baseline), capsys=capsys
    )
    assert rc == 1 and "MISSING" in out


def test_github_format(tmp_path, capsys):
    base = _write(tmp_path, "base.json", _table(seed=0))
    res = _write(tmp_path, "drop.json", _table(seed=0, drop=0.25))
    rc, out, _ = _cli(res, "--against", base, "--format", "github", capsys=capsys)
    assert rc == 1
    errors = [line for line in out.splitlines() if line.startswith("::error ")]
    assert len(errors) == 2
    assert errors[0].startswith(
        f"::error file={res},title=sd-bench check%3A conditions.t2_sft_unguided.metrics.toy_"
    )
    assert "::conditions.t2_sft_unguided.metrics.toy_" in errors[0] and "allowed ±" in errors[0]


def test_rules_pass_and_fail(tmp_path, capsys):
    table = _table(seed=0)
    # wait_count is not a Table 2 column: rules address any number in the result file by path
    table["conditions"]["t2_base"]["metrics"]["wait"] = 0.60
    table["conditions"]["t2_sft_guided"]["metrics"]["wait"] = 0.06
    res = _write(tmp_path, "res.json", table)
    rules = [
        {
            "name": "SD waits collapse",
            "lhs": "conditions.t2_sft_guided.metrics.wait",
            "op": "<",
            "rhs": "conditions.t2_base.metrics.wait",
            "factor": 0.2,
        },
        {
            "name": "SD OOD below base - 0.1",
            "lhs": "conditions.t2_sft_guided.metrics.toy_ood",
            "op": "<",
            "rhs": "conditions.t2_base.metrics.toy_ood",
            "offset": -0.1,
        },
        {
            "name": "base waits vs baseline",
            "lhs": "conditions.t2_base.metrics.wait",
            "op": ">=",
            "rhs": "conditions.t2_base.metrics.wait",
            "rhs_file": "baseline",
            "factor": 0.5,
        },
    ]
    base = _write(tmp_path, "base.json", {**table, "rules": rules})
    rc, out, _ = _cli(res, "--against", base, capsys=capsys)
    assert rc == 0, out
    assert "SD waits collapse" in out and "0.06 < 0.2 * 0.6 +0 = 0.12" in out
    # the guard fails when SD keeps its waits
    table["conditions"]["t2_sft_guided"]["metrics"]["wait"] = 0.30
    res2 = _write(tmp_path, "res2.json", table)
    rc, out, _ = _cli(res2, "--against", base, "--format", "github", capsys=capsys)
    assert rc == 1 and "::error" in out and "sd-bench rule%3A SD waits collapse" in out
    # rules from a separate file; a path that is not there fails with a clear message
    rules_file = tmp_path / "rules.json"
    rules_file.write_text(
        json.dumps(
            {"rules": [{"name": "typo", "lhs": "conditions.t2_base.metrics.wiat", "op": "<", "rhs": 1}]}
        )
    )
    rc, out, _ = _cli(
        res,
        "--against",
        _write(tmp_path, "plain.json", _table(seed=0)),
        "--rules",
        str(rules_file),
        capsys=capsys,
    )
    assert rc == 1 and "path not found" in out and "no 'wiat'" in out


@pytest.mark.parametrize(
    "rule, msg",
    [
        ({"lhs": "a", "op": "=<", "rhs": 1}, "field 'op'"),
        ({"lhs": "a", "op": "<", "rhs": True}, "field 'rhs'"),
        ({"lhs": "a", "op": "<", "rhs": 1, "expr": "__import__('os')"}, "unknown field"),
    ],
)
def test_bad_rules_are_errors(tmp_path, capsys, rule, msg):
    table = _table(seed=0)
    base = _write(tmp_path, "base.json", {**table, "rules": [rule]})
    rc, _, err = _cli(_write(tmp_path, "r.json", table), "--against", base, capsys=capsys)
    assert rc == 2 and msg in err and "base.json" in err


def test_bad_files_give_clear_errors(tmp_path, capsys):
    good = _write(tmp_path, "good.json", _table(seed=0))
    (tmp_path / "broken.json").write_text("{not json")
    rc, _, err = _cli(str(tmp_path / "broken.json"), "--against", good, capsys=capsys)
    assert rc == 2 and "broken.json: not valid JSON" in err
    rc, _, err = _cli(str(tmp_path / "absent.json"), "--against", good, capsys=capsys)
    assert rc == 2 and "absent.json: file not found" in err
    other = _write(tmp_path, "other.json", {"results": {}})
    rc, _, err = _cli(other, "--against", good, capsys=capsys)
    assert rc == 2 and "other.json: field 'schema'" in err
    bad = _table(seed=0)
    bad["conditions"]["t2_base"]["metrics"]["toy_id"] = "0.3"
    rc, _, err = _cli(_write(tmp_path, "bad.json", bad), "--against", good, capsys=capsys)
    assert rc == 2 and "conditions.t2_base.metrics.toy_id" in err


def test_check_command_does_not_import_torch(tmp_path):
    base = _write(tmp_path, "base.json", _table(seed=0))
    code = (
        "import sys; from sd_bench.cli import main; rc = main(['check', sys.argv[1], '--against', sys.argv[1]]); "
        "assert rc == 0; assert 'torch' not in sys.modules and 'vllm' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code, base], cwd=REPO, check=True, capture_output=True)
