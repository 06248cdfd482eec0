"""The remedy (`loss.exclude_markers`), one fast real ablation run, and the committed guards on
results/smoke/ablations.json as `sd-bench check` rules (the full ablation is not rerun here: ~15 min)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sd_bench.train.losses import marker_token_mask, sd_loss_from_hidden

ROOT = Path(__file__).resolve().parents[1]
ABLATIONS = ROOT / "results" / "smoke" / "ablations.json"
RULES = ROOT / "results" / "smoke" / "guards.rules.json"


def test_marker_token_mask_masks_exactly_the_marker_tokens():
    assert marker_token_mask(["A", ":", "1", "wait", "1", "+"]) == [1, 1, 1, 0, 1, 1]
    # a marker split over tokens masks every token it touches; case-insensitive; substrings count (E(y))
    assert marker_token_mask(["I", " wa", "it", " ok", "Checking"]) == [1, 0, 0, 1, 0]
    assert marker_token_mask(["no", " hedge"]) == [1, 1]


def test_exclude_markers_changes_only_the_marker_tokens_contributions():
    torch.manual_seed(0)
    n, h, v = 6, 8, 23
    hs, ht = torch.randn(n, h), torch.randn(n, h)
    w = torch.randn(v, h, requires_grad=True)
    ids = torch.randint(0, v, (n,))
    old = torch.randn(n) * 0.1 - 2.0
    mask = torch.tensor(marker_token_mask(["A", ":", "wait", "1", "Wait", ";"]))

    def loss(m):
        out, _ = sd_loss_from_hidden(hs, w, ht, w.detach(), ids, m, old, alpha=0.5, top_k=8, num_tokens=n)
        return out

    full, remedied = loss(torch.ones(n)), loss(mask)
    marker_part = sum(loss(torch.nn.functional.one_hot(torch.tensor(t), n).float()) for t in (2, 4))
    assert float(full - remedied) == pytest.approx(float(marker_part), rel=1e-5, abs=1e-7)
    for t in (0, 1, 3, 5):  # every other token contributes exactly as before (same token-mean denominator)
        one = torch.nn.functional.one_hot(torch.tensor(t), n).float()
        assert float(loss(one * mask)) == pytest.approx(float(loss(one)), rel=1e-6)


def test_one_real_ablation_run(tmp_path):
    """sd_solution + remedy through `sd-bench train` for 2 steps, then the standalone evaluation."""
    from sd_bench.toy import ablations

    torch.set_num_threads(1)
    final = ablations.train(
        "sd_solution_remedy", 0, 2, Path(ablations.__file__).parent / "base", tmp_path / "r"
    )
    assert (final / "config.json").is_file()
    config = (tmp_path / "r" / "config.yaml").read_text()
    assert "exclude_markers: true" in config and "top_k: 8" in config
    metrics = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and metrics[0]["samples_with_loss"] == 32


def _check(result: Path, rules: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "sd_bench.cli",
            "check",
            str(result),
            "--against",
            str(ABLATIONS),
            "--rules",
            str(rules),
        ],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


def test_committed_guards_hold_and_a_planted_violation_fails(tmp_path):
    rules = json.loads(RULES.read_text())["rules"]
    assert len(rules) >= 8
    ok = _check(ABLATIONS, RULES)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    planted = json.loads(ABLATIONS.read_text())
    # SD(solution) keeps the base's hedge on one seed: the collapse guard must fire
    planted["conditions"]["sd_solution"]["per_seed"]["id_waits"][1] = 0.5
    bad = tmp_path / "ablations.json"
    bad.write_text(json.dumps(planted))
    fail = _check(bad, RULES)
    assert fail.returncode == 1, fail.stdout + fail.stderr
    assert "FAIL" in fail.stdout


def test_rules_file_is_valid_for_check():
    data = json.loads(RULES.read_text())
    for r in data["rules"]:
        assert {"name", "lhs", "op", "rhs"} <= r.keys()


def test_marker_mass_finds_the_toy_wait_token():
    from transformers import AutoTokenizer

    from sd_bench.toy import BASE_DIR
    from sd_bench.train.losses import marker_mass_from_hidden, marker_token_ids

    tok = AutoTokenizer.from_pretrained(BASE_DIR)
    ids = marker_token_ids(tok.batch_decode([[i] for i in range(len(tok))], skip_special_tokens=True))
    assert ids == tok.convert_tokens_to_ids(["W"]) or [tok.decode([i]) for i in ids] == ["wait"]
    w = torch.zeros(len(tok), 2)
    w[ids[0], 0] = 10.0  # position 0 prefers the marker, position 1 is uniform
    mass = marker_mass_from_hidden(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), w, torch.tensor(ids), chunk_size=1)
    assert mass[0] > 0.99 and mass[1] == pytest.approx(1 / len(tok), rel=1e-5)
