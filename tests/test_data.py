"""The pinned math sets: sizes, checksums, provenance, the offline error, and clear errors on bad files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sd_bench import data
from sd_bench.data import DataError, load_problems, provenance, read_problems

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not (SHARED / "math").is_dir(), reason="needs ../shared/data")

SIZES = {"aime24": 30, "aime25": 30, "amc23": 40, "math500": 500, "dapo_seen_1x64": 64, "dapo_seen_8x8": 64,
         "dapo_seen_64": 64, "dapo_seen_128": 128, "dapo_seen_512": 512}
UNIQUE = {"dapo_seen_1x64": 1, "dapo_seen_8x8": 8}


@pytest.fixture(autouse=True)
def _shared(monkeypatch):
    monkeypatch.setenv("SD_BENCH_DATA_DIR", str(SHARED))
    monkeypatch.delenv("SD_BENCH_SKIP_CHECKSUM", raising=False)


@pytest.mark.parametrize("name", list(SIZES))
def test_sets_load(name):
    problems = load_problems(name)
    assert len(problems) == SIZES[name]
    assert len({p.id for p in problems}) == UNIQUE.get(name, SIZES[name])
    for p in problems:
        assert p.kind == "math" and p.answer and p.question
        assert p.prompt.endswith("\nPlease reason step by step, and put your final answer within \\boxed{}.")
    if name == "math500":
        assert all(p.solution for p in problems)


def test_parsing_of_string_cells():
    """aime25 stores prompt/reward_model/extra_info as JSON strings; aime24 as structs: same result shape."""
    a24, a25 = load_problems("aime24")[0], load_problems("aime25")[0]
    assert a24.answer == "540" and a25.answer == "70"
    assert a25.question.startswith("Find the sum of all integer bases")
    m = load_problems("math500")[0]
    assert m.answer == "\\left( 3, \\frac{\\pi}{2} \\right)" and m.solution.startswith("We have that")


def test_provenance_names_commit_and_checksum():
    prov = provenance("math500")
    assert prov["commit"] == "5c51051aaa07513764ab66c631277816bc6520e5"
    assert prov["sha256"] == data.SETS["math500"][1] and prov["verified"] is True
    assert prov["repo"] == "beanie00/self-distillation-analysis"


def test_unknown_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SD_BENCH_DATA_DIR", str(tmp_path / "nope"))
    with pytest.raises(DataError, match=r"SD_BENCH_DATA_DIR.*\n.*math/evaluation"):
        load_problems("aime24")


def test_offline_without_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("SD_BENCH_DATA_DIR")
    monkeypatch.setenv("SD_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError) as err:
        load_problems("amc23")
    assert "SD_BENCH_DATA_DIR" in str(err.value) and "math/section_6_2/seen_" in str(err.value)


def test_cache_is_used_offline(monkeypatch, tmp_path):
    """A verified file in the cache (as a download leaves it) is used with downloads off."""
    monkeypatch.delenv("SD_BENCH_DATA_DIR")
    monkeypatch.setenv("SD_BENCH_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dest = tmp_path / data.COMMIT[:12] / data.SETS["amc23"][0]
    dest.parent.mkdir(parents=True)
    shutil.copy(SHARED / data.SETS["amc23"][0], dest)
    assert len(load_problems("amc23")) == 40
    assert provenance("amc23")["source"].startswith("https://raw.githubusercontent.com/beanie00/")


def _copy_tree(tmp_path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(SHARED / "math", root / "math")
    return root


def test_checksum_mismatch(monkeypatch, tmp_path):
    root = _copy_tree(tmp_path)
    target = root / data.SETS["aime24"][0]
    table = pq.read_table(target).slice(0, 5)
    pq.write_table(table, target)
    monkeypatch.setenv("SD_BENCH_DATA_DIR", str(root))
    with pytest.raises(DataError, match=r"aime24.parquet: sha256 .* does not match"):
        load_problems("aime24")
    monkeypatch.setenv("SD_BENCH_SKIP_CHECKSUM", "1")
    assert len(load_problems("aime24")) == 5
    assert provenance("aime24")["verified"] is False


def test_corrupted_parquet(tmp_path):
    bad = tmp_path / "aime24.parquet"
    bad.write_bytes((SHARED / data.SETS["aime24"][0]).read_bytes()[:500])
    with pytest.raises(DataError, match=r"aime24.parquet: not a readable parquet file"):
        read_problems(bad, "aime24")


def test_missing_column(tmp_path):
    table = pq.read_table(SHARED / data.SETS["amc23"][0]).drop_columns(["reward_model"])
    path = tmp_path / "amc23.parquet"
    pq.write_table(table, path)
    with pytest.raises(DataError, match=r"amc23.parquet: missing column 'reward_model'"):
        read_problems(path, "amc23")


def test_bad_cell(tmp_path):
    table = pa.table({"prompt": ["[{'role': 'user', 'content': 'What is 1+1?'}]", "not a list ["],
                      "reward_model": ['{"ground_truth": "2"}', '{"ground_truth": "3"}']})
    path = tmp_path / "x.parquet"
    pq.write_table(table, path)
    with pytest.raises(DataError, match=r"x.parquet: row 1, column 'prompt'"):
        read_problems(path, "x")
    ok = pq.write_table(table.slice(0, 1), path) or read_problems(path, "x")
    assert ok[0].question == "What is 1+1?" and ok[0].answer == "2"  # Python-literal list parsed


def test_unknown_set():
    with pytest.raises(DataError, match="unknown set 'aime26'"):
        load_problems("aime26")
