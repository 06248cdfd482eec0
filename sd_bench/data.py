"""The paper's math sets, pinned, as `Problem`s.

Source: the paper repository's own files (github beanie00/self-distillation-analysis, `data/math/`) at a
fixed commit, each checked against its sha256, so a result names exactly the data it was computed on
(`provenance(set_name)`). Where the files come from, in order:
1. `SD_BENCH_DATA_DIR=<dir>`: a local folder laid out like the paper repository's `data/`
   (`<dir>/math/evaluation/aime24.parquet`, `<dir>/math/section_6_2/seen_512.parquet`, ...), for offline use;
2. the cache `$SD_BENCH_CACHE` (default `~/.cache/sd_bench`), filled on first use by downloading the raw file
   at the pinned commit (skipped when `HF_HUB_OFFLINE=1` or `SD_BENCH_OFFLINE=1`).
A checksum mismatch is an error; `SD_BENCH_SKIP_CHECKSUM=1` accepts modified files (provenance then says
`verified: false` and records the actual sha256).

Files are verl parquet: `prompt` (chat messages; in some files a str holding a JSON- or Python-style list),
`reward_model` ({"ground_truth": ...}, or its JSON string), `extra_info` (raw_problem, index, solution for
MATH500; or its JSON string), and `problem_id` (DAPO UUID) in the section 6.2 subsets.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import tempfile
import urllib.request
from pathlib import Path

from sd_bench.problems import Problem
from sd_bench.prompts import INSTRUCTION

REPO = "beanie00/self-distillation-analysis"
COMMIT = "5c51051aaa07513764ab66c631277816bc6520e5"
URL_TEMPLATE = "https://raw.githubusercontent.com/{repo}/{commit}/data/{relpath}"

# set name -> (path under data/, sha256 at COMMIT). Sizes: 30, 30, 40, 500; DAPO subsets 64, 64, 64, 128, 512 rows.
SETS: dict[str, tuple[str, str]] = {
    "aime24": ("math/evaluation/aime24.parquet",
               "6ef8f7d9e3566cdb820d12ed12dc8aa4fe328ce139fa3a1c4c0a4c452a70b789"),
    "aime25": ("math/evaluation/aime25.parquet",
               "fb078f2e9692ca459c43c98f012d0a4f4c652f98f265072b6327ece431fc59bc"),
    "amc23": ("math/evaluation/amc23.parquet",
              "6578106f9829e7dec492f4554935fb4a5c25c0b753287f8a2d5e931c7e9eeab7"),
    "math500": ("math/evaluation/math500.parquet",
                "a9f68e1217dc0c0a058a2b531554f8737d4f880f63c011d684780f98a436a28f"),
    "dapo_seen_1x64": ("math/section_6_2/seen_1x64.parquet",
                       "be287350eb44f5f09f8ca0bfab958bbba8ca0bb39f53ef08ced0063ec0649b26"),
    "dapo_seen_8x8": ("math/section_6_2/seen_8x8.parquet",
                      "6bfa1a84cd19143b8e1ce8230d4d82f15b447e820cc9a25a63a0e26ba69f64de"),
    "dapo_seen_64": ("math/section_6_2/seen_64.parquet",
                     "8b5594cdeb75943f9586e6494c28e681832ee0690d86675218b4bf4aac202591"),
    "dapo_seen_128": ("math/section_6_2/seen_128.parquet",
                      "72ad58907726ebb1af92cb1a3e2813d66c1d14ca78491da2fec719a55e2ada68"),
    "dapo_seen_512": ("math/section_6_2/seen_512.parquet",
                      "6c92acdacedfb9ea04ff9ed27b903cb1b5d34ce17277a61fc8959b2a1a246c49"),
}

REQUIRED_COLUMNS = ("prompt", "reward_model")
LAYOUT_HELP = (
    "SD_BENCH_DATA_DIR must point at a folder laid out like the paper repository's data/ folder:\n"
    "  $SD_BENCH_DATA_DIR/math/evaluation/{aime24,aime25,amc23,math500}.parquet\n"
    "  $SD_BENCH_DATA_DIR/math/section_6_2/seen_{1x64,8x8,64,128,512}.parquet\n"
    f"(copy data/ from github.com/{REPO} at commit {COMMIT})"
)


class DataError(RuntimeError):
    """The data could not be found, fetched, verified or parsed; the message says which file and how to fix."""


def _check_set(set_name: str) -> tuple[str, str]:
    if set_name not in SETS:
        raise DataError(f"unknown set {set_name!r}; known sets: {', '.join(SETS)}")
    return SETS[set_name]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "SD_BENCH_OFFLINE"))


def cache_dir() -> Path:
    return Path(os.environ.get("SD_BENCH_CACHE") or Path.home() / ".cache" / "sd_bench")


def _verify(path: Path, expected: str) -> tuple[str, bool]:
    """(actual sha256, verified). A mismatch raises unless SD_BENCH_SKIP_CHECKSUM=1."""
    actual = sha256(path)
    if actual == expected:
        return actual, True
    if os.environ.get("SD_BENCH_SKIP_CHECKSUM", "") in ("1", "true"):
        return actual, False
    raise DataError(
        f"{path}: sha256 {actual} does not match the pinned {expected} ({REPO}@{COMMIT[:12]}). The file is "
        "corrupted or not the paper's; replace it (delete it to re-download), or set SD_BENCH_SKIP_CHECKSUM=1 "
        "to use it anyway (results then record the actual checksum)."
    )


def _download(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".tmp-", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            while block := response.read(1 << 20):
                out.write(block)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def resolve(set_name: str) -> dict:
    """Find (and if needed fetch) one set's file and verify it: {"path", "source", "sha256", "verified"}.

    Memoised per environment (data dir, cache dir, offline, checksum switch), so 16 tasks share one check.
    """
    env = tuple(os.environ.get(v) for v in ("SD_BENCH_DATA_DIR", "SD_BENCH_CACHE", "HF_HUB_OFFLINE",
                                            "SD_BENCH_OFFLINE", "SD_BENCH_SKIP_CHECKSUM"))
    return dict(_resolve(set_name, env))


@functools.cache
def _resolve(set_name: str, env: tuple) -> dict:
    relpath, expected = _check_set(set_name)
    data_dir = env[0]
    if data_dir:
        path = Path(data_dir).expanduser() / relpath
        if not path.is_file():
            raise DataError(f"{path} does not exist (set {set_name!r}).\n{LAYOUT_HELP}")
        actual, verified = _verify(path, expected)
        return {"path": str(path), "source": f"SD_BENCH_DATA_DIR={data_dir}", "sha256": actual, "verified": verified}

    url = URL_TEMPLATE.format(repo=REPO, commit=COMMIT, relpath=relpath)
    path = cache_dir() / COMMIT[:12] / relpath
    if not path.is_file():
        if _offline():
            raise DataError(
                f"set {set_name!r} is not cached at {path} and downloads are off (HF_HUB_OFFLINE/SD_BENCH_OFFLINE). "
                f"Set SD_BENCH_DATA_DIR for offline use.\n{LAYOUT_HELP}"
            )
        try:
            _download(url, path)
        except OSError as exc:
            raise DataError(
                f"could not download {url} ({exc}). Without network, set SD_BENCH_DATA_DIR.\n{LAYOUT_HELP}"
            ) from exc
    actual, verified = _verify(path, expected)
    return {"path": str(path), "source": url, "sha256": actual, "verified": verified}


def provenance(set_name: str) -> dict:
    """What a result must record about its data: set, repository, commit, file, sha256, whether it matched."""
    info = resolve(set_name)
    return {"set": set_name, "repo": REPO, "commit": COMMIT, "file": SETS[set_name][0], "source": info["source"],
            "sha256": info["sha256"], "verified": info["verified"]}


def load_problems(set_name: str) -> list[Problem]:
    """All rows of one pinned set, in file order (the 1x64 and 8x8 subsets keep their repeated rows)."""
    return read_problems(Path(resolve(set_name)["path"]), set_name)


def _structured(value, path: Path, row: int, column: str):
    """A cell that holds a list/dict, or its JSON- or Python-literal string form."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            try:
                return ast.literal_eval(value)
            except (ValueError, SyntaxError) as exc:
                raise DataError(f"{path}: row {row}, column {column!r}: cannot parse {value[:80]!r}") from exc
    return value


def read_problems(path: Path, set_name: str = "") -> list[Problem]:
    """Parse one verl parquet file into Problems (no checksum: `load_problems` verifies first)."""
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for truncated / non-parquet files
        raise DataError(f"{path}: not a readable parquet file ({exc}); replace the file") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing column {missing[0]!r} (has {table.column_names}); not a verl math file")
    problems = []
    for row, rec in enumerate(table.to_pylist()):
        messages = _structured(rec["prompt"], path, row, "prompt")
        reward = _structured(rec["reward_model"], path, row, "reward_model")
        extra = _structured(rec.get("extra_info") or {}, path, row, "extra_info") or {}
        try:
            prompt = next(m["content"] for m in messages if m["role"] == "user")
        except (StopIteration, KeyError, TypeError) as exc:
            raise DataError(f"{path}: row {row}, column 'prompt': no user message in {str(messages)[:80]!r}") from exc
        try:
            answer = str(reward["ground_truth"])
        except (KeyError, TypeError) as exc:
            raise DataError(f"{path}: row {row}, column 'reward_model': no 'ground_truth' in {str(reward)[:80]!r}") from exc
        question = extra.get("raw_problem") or prompt.removesuffix(INSTRUCTION).rstrip("\n")
        index = rec.get("problem_id") or extra.get("index", row)
        problems.append(Problem(
            id=f"{set_name or path.stem}/{index}",
            question=question,
            prompt=prompt,
            answer=answer,
            solution=extra.get("solution"),
            kind="math",
            source=rec.get("data_source") or "",
            extra={"row": row},
        ))
    return problems
