"""The pinned math sets: sizes, checksums, provenance, the offline error, and clear errors on bad files;
DAPO-Math-17k (synthetic parquet in the Hub's format: dedupe, prompt rewrite, errors) and the toy sets."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sd_bench import data
from sd_bench.data import DataError, load_problems, provenance, read_problems
from sd_bench.prompts import problem_prompt

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "math").is_dir(), reason="needs ../shared/data")

SIZES = {
    "aime24": 30,
    "aime25": 30,
    "amc23": 40,
    "math500": 500,
    "dapo_seen_1x64": 64,
    "dapo_seen_8x8": 64,
    "dapo_seen_64": 64,
    "dapo_seen_128": 128,
    "dapo_seen_512": 512,
}
UNIQUE = {"dapo_seen_1x64": 1, "dapo_seen_8x8": 8}


@pytest.fixture(autouse=True)
def _shared(monkeypatch):
    monkeypatch.setenv("SD_BENCH_DATA_DIR", str(SHARED))
    monkeypatch.delenv("SD_BENCH_SKIP_CHECKSUM", raising=False)


@needs_shared
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


@needs_shared
def test_parsing_of_string_cells():
    """aime25 stores prompt/reward_model/extra_info as JSON strings; aime24 as structs: same result shape."""
    a24, a25 = load_problems("aime24")[0], load_problems("aime25")[0]
    assert a24.answer == "540" and a25.answer == "70"
    assert a25.question.startswith("Find the sum of all integer bases")
    m = load_problems("math500")[0]
    assert m.answer == "\\left( 3, \\frac{\\pi}{2} \\right)" and m.solution.startswith("We have that")


@needs_shared
def test_provenance_names_commit_and_checksum():
    prov = provenance("math500")
    assert prov["commit"] == "5c51051aaa07513764ab66c631277816bc6520e5"
    assert prov["sha256"] == data.SETS["math500"][1] and prov["verified"] is True
    assert prov["repo"] == "beanie00/self-distillation-analysis"


@needs_shared
def test_unknown_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SD_BENCH_DATA_DIR", str(tmp_path / "nope"))
    with pytest.raises(DataError, match=r"SD_BENCH_DATA_DIR.*\n.*math/evaluation"):
        load_problems("aime24")


@needs_shared
def test_offline_without_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("SD_BENCH_DATA_DIR")
    monkeypatch.setenv("SD_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError) as err:
        load_problems("amc23")
    assert "SD_BENCH_DATA_DIR" in str(err.value) and "math/section_6_2/seen_" in str(err.value)


@needs_shared
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


@needs_shared
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


@needs_shared
def test_corrupted_parquet(tmp_path):
    bad = tmp_path / "aime24.parquet"
    bad.write_bytes((SHARED / data.SETS["aime24"][0]).read_bytes()[:500])
    with pytest.raises(DataError, match=r"aime24.parquet: not a readable parquet file"):
        read_problems(bad, "aime24")


@needs_shared
def test_missing_column(tmp_path):
    table = pq.read_table(SHARED / data.SETS["amc23"][0]).drop_columns(["reward_model"])
    path = tmp_path / "amc23.parquet"
    pq.write_table(table, path)
    with pytest.raises(DataError, match=r"amc23.parquet: missing column 'reward_model'"):
        read_problems(path, "amc23")


def test_bad_cell(tmp_path):
    table = pa.table(
        {
            "prompt": ["[{'role': 'user', 'content': 'What is 1+1?'}]", "not a list ["],
            "reward_model": ['{"ground_truth": "2"}', '{"ground_truth": "3"}'],
        }
    )
    path = tmp_path / "x.parquet"
    pq.write_table(table, path)
    with pytest.raises(DataError, match=r"x.parquet: row 1, column 'prompt'"):
        read_problems(path, "x")
    ok = pq.write_table(table.slice(0, 1), path) or read_problems(path, "x")
    assert ok[0].question == "What is 1+1?" and ok[0].answer == "2"  # Python-literal list parsed


def test_unknown_set():
    with pytest.raises(DataError, match="unknown set 'aime26'"):
        load_problems("aime26")


# ---------------------------------------------------------------- DAPO-Math-17k (synthetic, Hub format)

HEAD = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
TAIL = '\n\nRemember to put your answer on its own line after "Answer:".'
DAPO_SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("ground_truth", pa.string()), ("style", pa.string())])),
        ("extra_info", pa.struct([("index", pa.string())])),
    ]
)
# (uuid, raw problem, answer): the Hub file repeats each problem; "c" is a new UUID with a's text
A = ("aaaa-1", "Find $x$ if $2x = 6$.", "3")
B = ("bbbb-2", "What is $\\frac{1}{2} + \\frac{1}{3}$?\nGive a fraction.", "\\frac{5}{6}")
C = ("cccc-3", A[1], "3")
D = ("dddd-4", "  How many primes are below 10?  ", "4")
ROWS = [A, B, A, C, B, D, A]  # unique by UUID: rows 0, 1, 3, 5; by text: rows 0, 1, 5


def _dapo_parquet(path: Path, rows, prompt=lambda q: HEAD + q + TAIL) -> Path:
    records = [
        {
            "data_source": "math_dapo",
            "prompt": [{"content": prompt(q), "role": "user"}],
            "ability": "MATH",
            "reward_model": {"ground_truth": a, "style": "rule-lighteval/MATH_v2"},
            "extra_info": {"index": u},
        }
        for u, q, a in rows
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records, schema=DAPO_SCHEMA), path)
    return path


def _check_dapo(problems):
    assert [p.id for p in problems] == [
        "dapo_math_17k/aaaa-1",
        "dapo_math_17k/bbbb-2",
        "dapo_math_17k/dddd-4",
    ]
    assert [p.extra["row"] for p in problems] == [0, 1, 5]
    # the raw problem, stripped as the paper's rewrite does (change_math_prompts.py: content.strip())
    assert [p.question for p in problems] == [A[1], B[1], D[1].strip()]
    assert [p.answer for p in problems] == [A[2], B[2], D[2]]
    assert (
        problems[1].prompt
        == B[1] + "\nPlease reason step by step, and put your final answer within \\boxed{}."
    )
    assert all(
        p.prompt == problem_prompt(p.question) and p.kind == "math" and "Answer:" not in p.prompt
        for p in problems
    )


def test_dapo_from_data_dir(monkeypatch, tmp_path):
    """$SD_BENCH_DATA_DIR/math/dapo_math_17k/ holding a clone of the Hub repo (data/dapo-math-17k.parquet)."""
    file = _dapo_parquet(tmp_path / "math" / "dapo_math_17k" / "data" / "dapo-math-17k.parquet", ROWS)
    monkeypatch.setenv("SD_BENCH_DATA_DIR", str(tmp_path))
    _check_dapo(load_problems("dapo_math_17k"))
    prov = provenance("dapo_math_17k")
    assert prov["files"] == [{"file": str(file), "sha256": data.sha256(file)}]
    assert (prov["rows"], prov["unique_index"], prov["unique_problems"]) == (7, 4, 3)
    assert prov["sha256"] == data.problems_sha256(load_problems("dapo_math_17k")) and prov["commit"] is None


def test_dapo_from_local_path(tmp_path):
    """A parquet file in DAPO's format given as the set name (data.name=PATH) is detected and rewritten."""
    file = _dapo_parquet(tmp_path / "dapo.parquet", ROWS)
    _check_dapo(load_problems(str(file)))
    _check_dapo(load_problems(str(tmp_path)))  # a folder of parquet files
    assert provenance(str(file))["set"] == "dapo_math_17k"


def test_dapo_without_dedupe_keeps_every_row(tmp_path):
    """dedupe=False (the paper's training data): one problem per row, file order, repeats included; rows that
    share a UUID share one parsed Problem; "c" (a's text under another UUID) stays its own problem."""
    file = _dapo_parquet(tmp_path / "dapo.parquet", ROWS)
    problems = load_problems(str(file), dedupe=False)
    assert [p.id.split("/")[1] for p in problems] == [u for u, _, _ in ROWS]
    assert [p.answer for p in problems] == [a for _, _, a in ROWS]
    assert problems[0] is problems[2] is problems[6] and problems[1] is problems[4]
    assert problems[3] is not problems[0] and problems[3].question == problems[0].question
    prov = provenance(str(file), dedupe=False)
    assert (prov["rows"], prov["n"], prov["dedupe"]) == (7, 7, False)
    assert len(load_problems(str(file))) == 3  # the default (evaluation sets, Table 1) still deduplicates


@pytest.mark.parametrize(
    "prompt,question",
    [
        (HEAD + "  Find $y$.\n" + TAIL, "Find $y$."),  # the problem text is stripped
        # the paper's patterns: any white space between the sentences and before the tail, optional period
        (HEAD.replace(". The last", ".The last").rstrip("\n") + "Find $y$." + TAIL[:-1], "Find $y$."),
        (HEAD + "Find $y$.\n\n\n" + TAIL + "  \n", "Find $y$."),
    ],
)
def test_dapo_rewrite_is_the_papers(prompt, question):
    """Reference: the paper's transform_prompt (experiments/math/change_math_prompts.py), restated."""
    import re

    content = re.sub(
        r"^Solve the following math problem step by step\.\s*The last line of your response should be of the "
        r"form Answer: \$Answer \(without quotes\) where \$Answer is the answer to the problem\.\s*\n*",
        "",
        prompt,
    )
    content = re.sub(r'\s*\n*Remember to put your answer on its own line after "Answer:"\.?\s*$', "", content)
    paper = content.strip() + "\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert data.dapo_question(prompt) == question
    assert problem_prompt(data.dapo_question(prompt)) == paper


def test_dapo_string_extra_info(tmp_path):
    """extra_info as JSON strings (no vectorised UUID dedupe): the text dedupe still leaves 3 problems."""
    path = _dapo_parquet(tmp_path / "x.parquet", ROWS)
    table = pq.read_table(path)
    table = table.set_column(4, "extra_info", pa.array([f'{{"index": "{u}"}}' for u, _, _ in ROWS]))
    pq.write_table(table, path)
    assert [p.id for p in load_problems(str(path))] == [
        "dapo_math_17k/aaaa-1",
        "dapo_math_17k/bbbb-2",
        "dapo_math_17k/dddd-4",
    ]


def test_dapo_row_not_matching_template(monkeypatch, tmp_path):
    rows = [A, B, ("eeee-5", "Compute $1+1$.", "2")]
    _dapo_parquet(
        tmp_path / "math" / "dapo_math_17k" / "train.parquet",
        rows,
        prompt=lambda q: HEAD + q + TAIL if q != "Compute $1+1$." else HEAD + q + "\n\nAnswer:",
    )
    monkeypatch.setenv("SD_BENCH_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match=r"train.parquet: row 2, column 'prompt': not DAPO's prompt template"):
        load_problems("dapo_math_17k")


def test_dapo_missing_column(monkeypatch, tmp_path):
    path = _dapo_parquet(tmp_path / "math" / "dapo_math_17k" / "train.parquet", ROWS)
    pq.write_table(pq.read_table(path).drop_columns(["reward_model"]), path)
    monkeypatch.setenv("SD_BENCH_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match=r"train.parquet: missing column 'reward_model'"):
        load_problems("dapo_math_17k")


def test_dapo_offline_error(monkeypatch, tmp_path):
    """No local copy, downloads off, empty datasets cache: one error naming the variable and the folder."""
    monkeypatch.setenv("SD_BENCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    with pytest.raises(DataError) as err:
        load_problems("dapo_math_17k")
    msg = str(err.value)
    assert "BytedTsinghua-SIA/DAPO-Math-17k" in msg and "revision='main'" in msg
    assert "$SD_BENCH_DATA_DIR/math/dapo_math_17k/" in msg and str(tmp_path / "data") in msg


def test_commit_from_cache_files():
    sha = "0123456789abcdef0123456789abcdef01234567"
    files = [
        {"filename": f"/c/BytedTsinghua-SIA___dapo-math-17k/default/0.0.0/{sha}/dapo-math-17k-train.arrow"}
    ]
    assert data.commit_from_cache_files(files) == sha
    assert data.commit_from_cache_files([{"filename": "/c/x/default/0.0.0/abc/x.arrow"}]) is None


# ---------------------------------------------------------------- the miniature world's sets


def test_toy_sets():
    from sd_bench.toy import world

    sizes = {
        "toy_id": 256,
        "toy_ood": 256,
        "toy_train_1": 1,
        "toy_train_8": 8,
        "toy_train_64": 64,
        "toy_train_broad": world.BROAD_SIZE,
    }
    assert set(sizes) == set(data.TOY_SETS)
    for name, size in sizes.items():
        problems = load_problems(name)
        assert len(problems) == size and all(p.kind == "toy" for p in problems), name
    assert load_problems("toy_id") == world.toy_problems("id")
    assert load_problems("toy_train_8") == world.coverage_set(8)
    held_out = {p.question for p in load_problems("toy_id")}
    assert not held_out & {p.question for p in load_problems("toy_train_broad")}
    prov = provenance("toy_ood")
    assert (
        prov["sha256"] == provenance("toy_ood")["sha256"] == data.problems_sha256(world.toy_problems("ood"))
    )
    assert prov["seed"] == world.EVAL_SEED and prov["n"] == 256
    assert provenance("toy_train_8")["sha256"] != provenance("toy_train_64")["sha256"]


def test_dapo_through_datasets_load_dataset(monkeypatch, tmp_path):
    """The Hub code path with the real `datasets.load_dataset`, pointed at a local folder in the Hub's layout
    (no network here); a local folder has no commit, so provenance records none."""
    _dapo_parquet(tmp_path / "hub" / "data" / "dapo-math-17k.parquet", ROWS)
    monkeypatch.setattr(data, "DAPO_HUB_REPO", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("SD_BENCH_DATA_DIR")
    _check_dapo(load_problems("dapo_math_17k"))
    prov = provenance("dapo_math_17k")
    assert prov["revision"] == "main" and prov["commit"] is None and prov["unique_problems"] == 3
    # a pinned commit that the loaded copy does not carry is refused, never silently replaced
    monkeypatch.setenv("SD_BENCH_DAPO_REVISION", "0123456789abcdef0123456789abcdef01234567")
    with pytest.raises(DataError, match="asked for commit 0123456789ab.* but datasets returned None"):
        load_problems("dapo_math_17k")


# ---------------------------------------------------------------- training data (sd_bench.train.training_data)


def _tiny_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    from sd_bench.tiny_model import build_tiny_qwen3

    return AutoTokenizer.from_pretrained(build_tiny_qwen3(tmp_path / "tiny"))


def test_training_prompts_over_max_prompt_tokens_are_dropped(tmp_path):
    """verl's filter_overlong_prompts: keep a row when its chat-rendered prompt (generation prompt included)
    has <= max_prompt_length tokens. Reference lengths are computed here from that definition."""
    import json

    from sd_bench.prompts import render
    from sd_bench.train.config import DataConfig
    from sd_bench.train.training_data import load_training_set

    tok = _tiny_tokenizer(tmp_path)
    questions = ["What is 1 + 1?", "What is " + " + ".join(["1"] * 40) + "?", "What is 2 + 2?"]
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"question": q, "answer": "2"}) + "\n" for q in questions))
    lengths = [
        len(
            tok.apply_chat_template(
                [{"role": "user", "content": problem_prompt(q)}],
                add_generation_prompt=True,
                return_dict=False,
            )  # the token ids (transformers 5 returns a dict by default, whose len() is 2)
        )
        for q in questions
    ]
    assert lengths[1] > lengths[0] == lengths[2]
    assert lengths == [
        len(tok(render(tok, problem_prompt(q)), add_special_tokens=False)["input_ids"]) for q in questions
    ]
    for limit, kept in [
        (lengths[0] - 1, []),
        (lengths[0], [0, 2]),
        (lengths[1] - 1, [0, 2]),
        (lengths[1], [0, 1, 2]),
    ]:
        cfg = DataConfig(name=str(f), max_prompt_tokens=limit)
        if not kept:
            with pytest.raises(
                DataError, match=f"all 3 prompts are longer than data.max_prompt_tokens={limit}"
            ):
                load_training_set(cfg, tok)
            continue
        data = load_training_set(cfg, tok)
        assert [p.question for p in data.problems] == [questions[i] for i in kept]
        assert data.too_long == 3 - len(kept) and f"{data.too_long} dropped" in data.summary(cfg)
    assert len(load_training_set(DataConfig(name=str(f), max_prompt_tokens=None), tok).problems) == 3
    assert len(load_training_set(DataConfig(name=str(f), max_prompt_tokens=1)).problems) == 3  # no tokenizer


def test_training_data_dedupe_option(tmp_path):
    """data.dedupe=false (default, the paper): the file's rows with their repeats; true: distinct problems."""
    from sd_bench.train.config import DataConfig, TrainConfig
    from sd_bench.train.training_data import load_training_set

    assert TrainConfig().data.dedupe is False and TrainConfig().data.max_prompt_tokens == 2048
    file = _dapo_parquet(tmp_path / "dapo.parquet", ROWS)
    rows = load_training_set(DataConfig(name=str(file)))
    assert (len(rows.problems), rows.distinct) == (7, 3)  # 3 distinct prompts: c carries a's text
    unique = load_training_set(DataConfig(name=str(file), dedupe=True))
    assert [p.id for p in unique.problems] == [
        "dapo_math_17k/aaaa-1",
        "dapo_math_17k/bbbb-2",
        "dapo_math_17k/dddd-4",
    ]


@needs_shared
def test_training_data_dedupe_of_a_pinned_subset():
    from sd_bench.train.config import DataConfig
    from sd_bench.train.training_data import load_training_set

    assert len(load_training_set(DataConfig(name="dapo_seen_1x64")).problems) == 64
    assert len(load_training_set(DataConfig(name="dapo_seen_1x64", dedupe=True)).problems) == 1
    assert len(load_training_set(DataConfig(name="dapo_seen_8x8", dedupe=True)).problems) == 8
