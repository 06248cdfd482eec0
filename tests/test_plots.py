"""Figures from synthetic metrics.jsonl and result files: PNG + SVG, one line per condition."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from sd_bench import plots, tables
from sd_bench.markers import MARKERS


def _metrics(path, score0, slope, length0, waits0, decay):
    with path.open("w") as f:
        for step in range(21):
            f.write(
                json.dumps(
                    {
                        "step": step,
                        "loss": 0.1,
                        "score": score0 + slope * step,
                        "response_tokens": length0 * (1 - decay * step / 20),
                        "epistemic_count": waits0 * (1 - decay * step / 20),
                    }
                )
                + "\n"
            )
        f.write("\n")
    return path


def test_training_curves_png_and_svg(tmp_path):
    runs = {
        "GRPO": _metrics(tmp_path / "grpo.jsonl", 0.3, 0.01, 22, 0.6, -0.5),
        "SDPO c = s": _metrics(tmp_path / "sdpo.jsonl", 0.3, 0.02, 22, 0.6, 0.9),
    }
    results = [
        tables.make_result(c, "sd_toy_ood", {"acc": a}, n_problems=256, k=4, step=s)
        for c, pts in (("GRPO", ((0, 0.25), (20, 0.35))), ("SDPO c = s", ((0, 0.25), (20, 0.05))))
        for s, a in pts
    ]
    curves = plots.eval_curves(results, "sd_toy_ood")
    assert curves["SDPO c = s"] == [(0, 0.25), (20, 0.05)]
    paths = plots.plot_training_curves(runs, tmp_path / "fig" / "figure3", eval_points=curves, title="toy")
    assert [p.name for p in paths] == ["figure3.png", "figure3.svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[0].stat().st_size > 10_000
    svg = ET.parse(paths[1]).getroot()
    lines = [el for el in svg.iter() if el.tag.endswith("path") and "clip-path" in el.attrib]
    # 3 metric panels x 2 conditions + the OOD panel x 2 conditions, plus grid lines
    assert len(lines) >= 8
    assert "SDPO c = s" in paths[1].read_text()
    assert not list((tmp_path / "fig").glob(".*tmp*"))


def test_marker_deltas_bar_chart(tmp_path):
    base = {m: 1.0 for m in MARKERS}
    base["wait"] = 70.0
    sd = dict(base, wait=9.2)
    grpo = dict(base, wait=98.5)
    deltas = {"SDPO": plots.marker_deltas(base, sd), "GRPO": plots.marker_deltas(base, grpo)}
    assert deltas["SDPO"]["wait"] == pytest.approx(-60.8) and deltas["GRPO"]["wait"] == pytest.approx(28.5)
    assert list(deltas["SDPO"]) == list(MARKERS)
    paths = plots.plot_marker_deltas(deltas, tmp_path / "figure4", title="AIME24")
    assert all(p.stat().st_size > 5_000 for p in paths)
    text = paths[1].read_text()
    assert "wait" in text and "alternatively" in text


def test_bad_metrics_file_names_the_line(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 0, "score": 0.1}\n{"score": 0.2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: each line needs a 'step'"):
        plots.read_metrics(p)
    p.write_text('{"step": 0}\nnot json\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not valid JSON"):
        plots.read_metrics(p)
