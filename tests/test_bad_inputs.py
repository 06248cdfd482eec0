"""The bad-input battery (issue 8): every command, given a realistic bad input, exits non-zero with ONE line
naming the file, field or value (and the fix), prints no traceback, and deletes nothing it did not write.

Table-driven: each row is (id, command line, expected exit code, words the message must contain, user files
that must survive). The commands run in-process (`sd_bench.cli.main`), the real code paths, no mocks.
Train's config values and run-folder rules have their own battery (tests/test_train_cli_errors.py); only
rows not covered there are here.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from sd_bench import atomic, tables
from sd_bench.cli import error_message, main

REPO = Path(__file__).resolve().parents[1]
SMOKE_TABLE1 = REPO / "results" / "smoke" / "table1.json"
MANIFEST = REPO / "checkpoints_manifest.yaml"


def _table2() -> dict:
    results = [
        tables.make_result(c, t, {"acc": a}, n_problems=128, k=4)
        for c, a in (("t2_base", 0.46), ("t2_sft_guided", 0.12))
        for t in ("sd_toy_id", "sd_toy_ood")
    ]
    return tables.build_table(2, results, scale="smoke")


def _mutated(mutate) -> dict:
    t = copy.deepcopy(_table2())
    mutate(t)
    return t


def _stats(t: dict) -> dict:
    return t["conditions"]["t2_base"]["stats"]["toy_id"]


def _set(d: dict, key: str, value) -> None:
    d[key] = value


SAMPLE = {"doc_id": 0, "filtered_resps": [["Wait, check."]]}

# name -> file content (bytes, str, or an object written as JSON); every row's inputs come from here
FILES: dict[str, object] = {
    "t2.json": _table2(),
    "t2_result.json": tables.make_result("t2_base", "sd_toy_id", {"acc": 0.46}, n_problems=128, k=4),
    "t2_result_other.json": tables.make_result("t2_sft", "sd_toy_id", {"acc": 0.46}, n_problems=128, k=4),
    "result_n_neg.json": {
        **tables.make_result("t2_base", "sd_toy_id", {"acc": 0.46}, n_problems=128, k=4),
        "n_problems": -5,
    },
    "broken.json": "{not json",
    "empty.json": "",
    "latin1.json": b'{"schema": "caf\xe9"}',
    "list.json": [1, 2],
    "noschema.json": {"results": {}},
    "n_neg.json": _mutated(lambda t: _set(_stats(t), "n_problems", -5)),
    "n_str.json": _mutated(lambda t: _set(_stats(t), "n_problems", "128")),
    "n_bool.json": _mutated(lambda t: _set(_stats(t), "n_problems", True)),
    "k_zero.json": _mutated(lambda t: _set(_stats(t), "k", 0)),
    "stats_list.json": _mutated(lambda t: _set(t["conditions"]["t2_base"], "stats", [1, 2])),
    "stats_cell_list.json": _mutated(lambda t: _set(t["conditions"]["t2_base"]["stats"], "toy_id", [128])),
    "metric_str.json": _mutated(lambda t: _set(t["conditions"]["t2_base"]["metrics"], "toy_id", "0.46")),
    "metrics_list.json": _mutated(lambda t: _set(t["conditions"]["t2_base"], "metrics", [0.46])),
    "kind_num.json": _mutated(lambda t: _set(t["conditions"]["t2_base"], "kind", 3)),
    "columns_dict.json": _mutated(lambda t: _set(t, "columns", {})),
    "other_conds.json": _mutated(lambda t: _set(t, "conditions", {"x": t["conditions"]["t2_base"]})),
    "tol_neg.json": {**_table2(), "tolerances": {"acc": "-3se"}},
    "tol_unknown.json": {**_table2(), "tolerances": {"accuracy": 0.05}},
    "tol_block_list.json": {**_table2(), "tolerances": [0.05]},
    "rules_bad_op.json": {**_table2(), "rules": [{"lhs": "a", "op": "=<", "rhs": 1}]},
    "rules_not_list.json": {**_table2(), "rules": {"lhs": "a"}},
    "r_yaml.yaml": "rules: [{name: x, op: <\n",
    "r_json.json": "{'rules': []}",
    "r_list.json": [{"lhs": "a", "op": "<", "rhs": 1}],
    "r_unknown.json": {"rule": []},
    "r_latin1.yaml": b"rules: []\n# caf\xe9\n",
    "r_expr.json": {"rules": [{"lhs": "a", "op": "<", "rhs": 1, "expr": "__import__('os')"}]},
    "r_factor.json": {"rules": [{"lhs": "a", "op": "<", "rhs": 1, "factor": "2"}]},
    "r_tol.json": {"tolerances": {"acc": "lots"}},
    "r_empty.yaml": "# nothing here\n",
    # markers
    "samples/samples_sd_toy_id_2026-01-01T00-00-00.jsonl": json.dumps(SAMPLE) + "\n",
    "s_latin1/samples_t_2026-01-01T00-00-00.jsonl": b'{"filtered_resps": ["caf\xe9"]}\n',
    "s_badline/samples_t_2026-01-01T00-00-00.jsonl": json.dumps(SAMPLE) + "\n{not json\n",
    "s_badbase/samples_sd_toy_id_2026-01-01T00-00-00.jsonl": "{not json\n",
    "s_list/samples_t_2026-01-01T00-00-00.jsonl": "[1, 2]\n",
    "s_none/samples_t_2026-01-01T00-00-00.jsonl": json.dumps({"doc_id": 0, "acc": 1.0}) + "\n",
    "s_empty/samples_t_2026-01-01T00-00-00.jsonl": "",
    "s_nofiles/results.json": "{}",
    # manifests
    "m_latin1.yaml": b"version: 1\n# caf\xe9\n",
    "m_yaml.yaml": "version: 1\nmodels: [\n",
    "m_list.yaml": "- version: 1\n",
    "m_empty.yaml": "",
    # a user's folder with their own files, and a regular file
    "user/notes.txt": "my notes\n",
    "user/data/keep.csv": "a,b\n",
    "plainfile": "not a folder\n",
    # a reproduction output another live process is writing (its lock holds that pid: our parent's)
    "locked/.sd-bench/lock": str(os.getppid()),
}


def _manifest_with(edit) -> str:
    data = yaml.safe_load(MANIFEST.read_text())
    edit(data)
    return yaml.safe_dump(data, sort_keys=False)


def _entry(data: dict, eid: str) -> dict:
    return next(e for e in data["entries"] if e["id"] == eid)


FILES["m_recipe.yaml"] = _manifest_with(lambda d: _set(_entry(d, "t2_sft_guided"), "recipe", "sftt"))
FILES["m_override_yaml.yaml"] = _manifest_with(
    lambda d: _set(_entry(d, "t2_sft_guided"), "overrides", {"optim.betas": "[0.9,"})
)
FILES["m_override_key.yaml"] = _manifest_with(
    lambda d: _set(_entry(d, "t2_sft_guided"), "overrides", {"optim.lrr": 1e-5})
)
FILES["m_override_nan.yaml"] = _manifest_with(
    lambda d: _set(_entry(d, "t2_sft_guided"), "overrides", {"optim.lr": float("nan")})
)
FILES["m_decoding.yaml"] = _manifest_with(lambda d: _set(d["decoding"]["thinking"], "k", -1))


def _write_files(root: Path) -> None:
    for name, content in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content)
        else:
            path.write_text(json.dumps(content))


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]  # {t1}, {smoke}: the committed smoke Table 1 and results/smoke; others: FILES
    rc: int | tuple[int, ...]
    needles: tuple[str, ...]  # words the one message line must contain
    problems: bool = False  # `manifest validate` style: a header line, then one "  - " line per problem


USER_FILES = ("user/notes.txt", "user/data/keep.csv", "plainfile")

CHECK = "check"
CASES = [
    # --- sd-bench check: files ---------------------------------------------------------------------
    Case(
        "check-missing", (CHECK, "absent.json", "--against", "t2.json"), 2, ("absent.json", "file not found")
    ),
    Case("check-folder", (CHECK, "user", "--against", "t2.json"), 2, ("user", "not a regular file")),
    Case(
        "check-not-json", (CHECK, "broken.json", "--against", "t2.json"), 2, ("broken.json", "not valid JSON")
    ),
    Case("check-not-utf8", (CHECK, "latin1.json", "--against", "t2.json"), 2, ("latin1.json", "UTF-8")),
    Case(
        "check-baseline-not-utf8", (CHECK, "t2.json", "--against", "latin1.json"), 2, ("latin1.json", "UTF-8")
    ),
    Case(
        "check-top-list", (CHECK, "list.json", "--against", "t2.json"), 2, ("list.json", "not a JSON object")
    ),
    Case(
        "check-no-schema", (CHECK, "noschema.json", "--against", "t2.json"), 2, ("noschema.json", "'schema'")
    ),
    # --- check: fields ------------------------------------------------------------------------------
    Case(
        "check-n-negative",
        (CHECK, "n_neg.json", "--against", "t2.json"),
        2,
        ("n_neg.json", "n_problems", "-5"),
    ),
    Case(
        "check-n-string",
        (CHECK, "n_str.json", "--against", "t2.json"),
        2,
        ("n_str.json", "n_problems", "'128'"),
    ),
    Case(
        "check-n-bool",
        (CHECK, "t2.json", "--against", "n_bool.json"),
        2,
        ("n_bool.json", "n_problems", "True"),
    ),
    Case(
        "check-k-zero",
        (CHECK, "k_zero.json", "--against", "t2.json"),
        2,
        ("k_zero.json", "stats.toy_id.k", "0"),
    ),
    Case(
        "check-stats-list",
        (CHECK, "stats_list.json", "--against", "t2.json"),
        2,
        ("stats_list.json", "stats"),
    ),
    Case(
        "check-stats-cell-list",
        (CHECK, "t2.json", "--against", "stats_cell_list.json"),
        2,
        ("stats_cell_list.json", "stats.toy_id"),
    ),
    Case(
        "check-metric-str",
        (CHECK, "metric_str.json", "--against", "t2.json"),
        2,
        ("metrics.toy_id", "'0.46'"),
    ),
    Case("check-metrics-list", (CHECK, "metrics_list.json", "--against", "t2.json"), 2, ("t2_base.metrics",)),
    Case("check-kind-number", (CHECK, "kind_num.json", "--against", "t2.json"), 2, ("t2_base.kind", "3")),
    Case("check-columns-dict", (CHECK, "columns_dict.json", "--against", "t2.json"), 2, ("'columns'",)),
    Case(
        "check-result-n-negative",
        (CHECK, "result_n_neg.json", "--against", "t2_result.json"),
        2,
        ("result_n_neg.json", "'n_problems'", "-5"),
    ),
    # --- check: comparing unlike things / nothing ----------------------------------------------------
    Case("check-table2-vs-table1", (CHECK, "t2.json", "--against", "{t1}"), 2, ("Table '2'", "Table '1'")),
    Case("check-table-vs-result", (CHECK, "t2.json", "--against", "t2_result.json"), 2, ("like with like",)),
    Case(
        "check-other-condition",
        (CHECK, "t2_result_other.json", "--against", "t2_result.json"),
        2,
        ("condition 't2_sft'", "'t2_base'"),
    ),
    Case(
        "check-nothing-compared",
        (CHECK, "other_conds.json", "--against", "t2.json"),
        1,
        ("nothing compared",),
    ),
    # --- check: tolerance specs -----------------------------------------------------------------------
    Case(
        "tol-unknown-name",
        (CHECK, "t2.json", "--against", "t2.json", "--tolerance", "length=1%"),
        2,
        ("'length'",),
    ),
    Case(
        "tol-negative",
        (CHECK, "t2.json", "--against", "t2.json", "--tolerance", "acc=-0.05"),
        2,
        ("'-0.05'",),
    ),
    Case(
        "tol-negative-se",
        (CHECK, "t2.json", "--against", "t2.json", "--tolerance", "acc=-3se"),
        2,
        ("'-3se'",),
    ),
    Case(
        "tol-negative-rel",
        (CHECK, "t2.json", "--against", "t2.json", "--tolerance", "acc=-5%"),
        2,
        ("'-5%'",),
    ),
    Case(
        "tol-negative-floor",
        (CHECK, "t2.json", "--against", "t2.json", "--tolerance", "acc=5%|-1"),
        2,
        ("'5%|-1'",),
    ),
    Case("tol-nan", (CHECK, "t2.json", "--against", "t2.json", "--tolerance", "acc=nan"), 2, ("'nan'",)),
    Case("tol-words", (CHECK, "t2.json", "--against", "t2.json", "--tolerance", "acc=lots"), 2, ("'lots'",)),
    Case(
        "tol-no-equals", (CHECK, "t2.json", "--against", "t2.json", "--tolerance", "acc"), 2, ("NAME=SPEC",)
    ),
    Case(
        "tol-baseline-negative",
        (CHECK, "t2.json", "--against", "tol_neg.json"),
        2,
        ("tol_neg.json", "'-3se'"),
    ),
    Case(
        "tol-baseline-unknown",
        (CHECK, "t2.json", "--against", "tol_unknown.json"),
        2,
        ("tol_unknown.json", "accuracy"),
    ),
    Case("tol-baseline-list", (CHECK, "t2.json", "--against", "tol_block_list.json"), 2, ("'tolerances'",)),
    # --- check: rules ---------------------------------------------------------------------------------
    Case(
        "rules-missing", (CHECK, "t2.json", "--against", "t2.json", "--rules", "nope.json"), 2, ("nope.json",)
    ),
    Case(
        "rules-bad-yaml",
        (CHECK, "t2.json", "--against", "t2.json", "--rules", "r_yaml.yaml"),
        2,
        ("r_yaml.yaml", "YAML"),
    ),
    Case(
        "rules-bad-json",
        (CHECK, "t2.json", "--against", "t2.json", "--rules", "r_json.json"),
        2,
        ("r_json.json", "JSON"),
    ),
    Case(
        "rules-list",
        (CHECK, "t2.json", "--against", "t2.json", "--rules", "r_list.json"),
        2,
        ("r_list.json", "mapping"),
    ),
    Case(
        "rules-unknown-field",
        (CHECK, "t2.json", "--against", "t2.json", "--rules", "r_unknown.json"),
        2,
        ("'rule'",),
    ),
    Case(
        "rules-not-utf8",
        (CHECK, "t2.json", "--against", "t2.json", "--rules", "r_latin1.yaml"),
        2,
        ("r_latin1.yaml", "UTF-8"),
    ),
    Case(
        "rules-expr",
        (CHECK, "t2.json", "--against", "t2.json", "--rules", "r_expr.json"),
        2,
        ("unknown field", "expr"),
    ),
    Case(
        "rules-factor-str",
        (CHECK, "t2.json", "--against", "t2.json", "--rules", "r_factor.json"),
        2,
        ("'factor'", "'2'"),
    ),
    Case(
        "rules-tolerance",
        (CHECK, "t2.json", "--against", "t2.json", "--rules", "r_tol.json"),
        2,
        ("r_tol.json", "'lots'"),
    ),
    Case(
        "rules-baseline-op",
        (CHECK, "t2.json", "--against", "rules_bad_op.json"),
        2,
        ("rules_bad_op.json", "'op'"),
    ),
    Case(
        "rules-baseline-dict", (CHECK, "t2.json", "--against", "rules_not_list.json"), 2, ("'rules'", "list")
    ),
    # --- check: command line (argparse) -------------------------------------------------------------
    Case(
        "check-bad-bound", (CHECK, "t2.json", "--against", "t2.json", "--bound", "z"), 2, ("--bound", "'z'")
    ),
    Case("check-no-against", (CHECK, "t2.json"), 2, ("--against",)),
    # --- sd-bench markers ------------------------------------------------------------------------------
    Case("markers-missing", ("markers", "absent"), 2, ("absent", "no such file")),
    Case("markers-no-samples", ("markers", "s_nofiles"), 2, ("s_nofiles", "--log_samples")),
    Case("markers-not-utf8", ("markers", "s_latin1"), 2, ("samples_t_", "UTF-8")),
    Case("markers-bad-line", ("markers", "s_badline"), 2, ("samples_t_2026-01-01T00-00-00.jsonl:2", "JSON")),
    Case("markers-list-record", ("markers", "s_list"), 2, (".jsonl:1", "list")),
    Case("markers-not-samples", ("markers", "t2.json"), 2, ("t2.json", "no responses")),
    Case("markers-no-responses", ("markers", "s_none"), 2, ("no responses",)),
    Case("markers-empty-file", ("markers", "s_empty"), 2, ("no responses",)),
    Case("markers-baseline-missing", ("markers", "samples", "absent"), 2, ("absent", "no such file")),
    Case(
        "markers-baseline-bad-line", ("markers", "samples", "s_badbase"), 2, ("s_badbase", ".jsonl:1", "JSON")
    ),
    Case("markers-baseline-other-task", ("markers", "samples", "s_badline"), 2, ("no task in common",)),
    # --- sd-bench manifest validate --------------------------------------------------------------------
    Case(
        "manifest-missing",
        ("manifest", "validate", "absent.yaml"),
        1,
        ("absent.yaml", "file not found"),
        True,
    ),
    Case("manifest-folder", ("manifest", "validate", "user"), 1, ("user", "a folder"), True),
    Case("manifest-not-utf8", ("manifest", "validate", "m_latin1.yaml"), 1, ("m_latin1.yaml", "UTF-8"), True),
    Case(
        "manifest-bad-yaml",
        ("manifest", "validate", "m_yaml.yaml"),
        1,
        ("m_yaml.yaml", "YAML", "line 3"),
        True,
    ),
    Case("manifest-top-list", ("manifest", "validate", "m_list.yaml"), 1, ("must be a mapping",), True),
    Case("manifest-empty", ("manifest", "validate", "m_empty.yaml"), 1, ("must be a mapping",), True),
    Case("manifest-recipe", ("manifest", "validate", "m_recipe.yaml"), 1, ("t2_sft_guided", "'sftt'"), True),
    Case(
        "manifest-override-yaml",
        ("manifest", "validate", "m_override_yaml.yaml"),
        1,
        ("t2_sft_guided", "optim.betas", "YAML"),
        True,
    ),
    Case(
        "manifest-override-key",
        ("manifest", "validate", "m_override_key.yaml"),
        1,
        ("optim.lrr", "optim.lr"),
        True,
    ),
    Case(
        "manifest-override-nan",
        ("manifest", "validate", "m_override_nan.yaml"),
        1,
        ("optim.lr", "'nan'"),
        True,
    ),
    Case(
        "manifest-decoding-k",
        ("manifest", "validate", "m_decoding.yaml"),
        1,
        ("decoding 'thinking'", "'k'"),
        True,
    ),
    Case("manifest-bad-action", ("manifest", "check"), 2, ("'check'",)),
    # --- sd-bench tasks-path: never replaces a user's folder ------------------------------------------
    Case(
        "tasks-path-user-folder",
        ("tasks-path", "--k", "4", "--out", "user"),
        2,
        ("user", "not written by sd-bench"),
    ),
    Case(
        "tasks-path-cwd",
        ("tasks-path", "--k", "4", "--out", "."),
        2,
        ("not written by sd-bench", "new or empty"),
    ),
    Case(
        "tasks-path-file", ("tasks-path", "--k", "4", "--out", "plainfile"), 2, ("plainfile", "not a folder")
    ),
    Case(
        "tasks-path-under-file",
        ("tasks-path", "--k", "4", "--out", "plainfile/x"),
        2,
        ("plainfile/x", "plainfile is a file"),
    ),
    Case("tasks-path-k-zero", ("tasks-path", "--k", "0", "--out", "new"), 2, ("k must be >= 1", "0")),
    Case(
        "tasks-path-max-gen-toks-zero",
        ("tasks-path", "--max-gen-toks", "0", "--out", "n0"),
        2,
        ("max_gen_toks",),
    ),
    Case(
        "tasks-path-max-gen-toks-negative",
        ("tasks-path", "--max-gen-toks", "-5", "--out", "n5"),
        2,
        ("max_gen_toks",),
    ),
    Case("tasks-path-thinking", ("tasks-path", "--thinking", "maybe"), 2, ("--thinking", "'maybe'")),
    Case("tasks-path-k-word", ("tasks-path", "--k", "four"), 2, ("--k", "'four'")),
    # --- sd-bench toy pretrain (its --output: test_toy_pretrain_never_replaces_a_users_folder) ------------
    Case(
        "toy-pretrain-steps-zero", ("toy", "pretrain", "--steps", "0", "--output", "tp0"), 2, ("--steps", "0")
    ),
    Case(
        "toy-pretrain-steps-negative",
        ("toy", "pretrain", "--steps", "-3", "--output", "tp3"),
        2,
        ("--steps", "-3"),
    ),
    Case("toy-bad-action", ("toy", "pretrian"), 2, ("'pretrian'",)),
    # --- sd-bench reproduce ------------------------------------------------------------------------------
    Case(
        "reproduce-output-file",
        ("reproduce", "--table", "2", "--scale", "smoke", "--output", "plainfile"),
        (1, 2),
        ("plainfile", "not a folder"),
    ),
    Case(
        "reproduce-output-under-file",
        ("reproduce", "--table", "2", "--scale", "smoke", "--output", "plainfile/run"),
        (1, 2),
        ("plainfile/run",),
    ),
    Case(
        "reproduce-output-user-folder",
        ("reproduce", "--table", "2", "--scale", "smoke", "--output", "user"),
        (1, 2),
        ("user", "not empty", "new or empty folder"),
    ),
    Case(
        "reproduce-second-writer",
        ("reproduce", "--table", "2", "--scale", "smoke", "--output", "locked"),
        (1, 2),
        ("locked", f"pid {os.getppid()}", "another --output"),
    ),
    Case(
        "reproduce-manifest-not-utf8",
        ("reproduce", "--table", "2", "--scale", "smoke", "--output", "r", "--manifest", "m_latin1.yaml"),
        (1, 2),
        ("m_latin1.yaml", "UTF-8"),
        True,
    ),
    Case("reproduce-bad-table", ("reproduce", "--table", "9"), 2, ("--table", "9")),
    # --- sd-bench export / report / doctor (RUN: {smoke} = the committed results/smoke) ------------------
    Case("export-run-missing", ("export", "absent", "--output", "ex"), 2, ("absent", "no such folder")),
    Case(
        "export-run-empty", ("export", "s_nofiles", "--output", "ex"), 2, ("s_nofiles", "no lm-eval results")
    ),
    Case(
        "export-output-user-folder",
        ("export", "{smoke}", "--output", "user"),
        2,
        ("user", "not written by sd-bench"),
    ),
    Case(
        "export-output-file", ("export", "{smoke}", "--output", "plainfile"), 2, ("plainfile", "not a folder")
    ),
    Case("export-no-output", ("export", "{smoke}"), 2, ("--output",)),
    Case("report-run-missing", ("report", "absent", "--output", "rp"), 2, ("absent", "no such folder")),
    Case(
        "report-output-user-folder",
        ("report", "{smoke}", "--output", "user"),
        2,
        ("user", "not written by sd-bench"),
    ),
    Case(
        "report-output-file", ("report", "{smoke}", "--output", "plainfile"), 2, ("plainfile", "not a folder")
    ),
    Case("doctor-bad-option", ("doctor", "--bogus"), 2, ("--bogus",)),
    # --- the top level -------------------------------------------------------------------------------
    Case("unknown-command", ("chekc",), 2, ("'chekc'",)),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad_inputs")
    _write_files(root)
    return root


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        rc = exc.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def _assert_one_clear_line(case: Case, rc, out: str, err: str) -> None:
    assert rc == case.rc if isinstance(case.rc, int) else rc in case.rc, (rc, err)
    assert "Traceback" not in err + out, err
    if case.problems:  # `manifest validate`: "<file>: 1 problem(s):" then one line per problem
        lines = [line for line in err.splitlines() if line.startswith("  - ")]
        assert len(lines) == 1, err
        text = err
    else:
        lines = [line for line in err.splitlines() if line.startswith("sd-bench")]
        assert len(lines) == 1, err
        text = lines[0]
    for needle in case.needles:
        assert needle in text, (needle, err)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_one_clear_line(case: Case, inputs: Path, capsys, monkeypatch):
    monkeypatch.chdir(inputs)
    monkeypatch.delenv("SD_BENCH_DEBUG", raising=False)
    argv = [
        a.replace("{t1}", str(SMOKE_TABLE1)).replace("{smoke}", str(SMOKE_TABLE1.parent)) for a in case.argv
    ]
    rc, out, err = _run(argv, capsys)
    _assert_one_clear_line(case, rc, out, err)
    for name in USER_FILES:  # nothing of the user's was deleted
        assert (inputs / name).read_text() == FILES[name], name
    assert sorted(p.name for p in inputs.glob(".*tmp-*")) == []  # no temporaries left behind


def test_battery_size():
    """The battery keeps its spirit: many bad inputs, each command reachable from the top."""
    assert len(CASES) >= 70
    commands = {c.argv[0] for c in CASES}
    assert {"check", "markers", "manifest", "tasks-path", "reproduce", "toy", "export", "report"} <= commands


# --- writes never destroy what sd-bench did not create (issue 8, item 1) ----------------------------------


def test_atomic_dir_replaces_only_its_own_folders(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with (
        pytest.raises(atomic.OutputPathError, match="not written by sd-bench"),
        atomic.atomic_dir(user) as tmp,
    ):
        (tmp / "x").write_text("new")
    assert (user / "notes.txt").read_text() == "mine" and not (user / "x").exists()
    # an empty folder, a new one, and sd-bench's own (marked) folder are written / replaced
    for target in (tmp_path / "empty", tmp_path / "new"):
        if target.name == "empty":
            target.mkdir()
        with atomic.atomic_dir(target) as tmp:
            (tmp / "a").write_text("1")
        assert (target / atomic.OUTPUT_MARKER).is_file() and (target / "a").read_text() == "1"
        with atomic.atomic_dir(target) as tmp:
            (tmp / "b").write_text("2")
        assert not (target / "a").exists() and (target / "b").read_text() == "2"
    assert not list(tmp_path.glob(".*tmp-*")) and not list(tmp_path.glob(".*old-*"))
    # owned=True: the caller's own folder (a cache) is replaced even without the marker
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "stale.yaml").write_text("old")
    with atomic.atomic_dir(cache, owned=True) as tmp:
        (tmp / "fresh.yaml").write_text("new")
    assert sorted(p.name for p in cache.iterdir()) == [atomic.OUTPUT_MARKER, "fresh.yaml"]


def test_atomic_dir_refusal_comes_before_the_work(tmp_path):
    (tmp_path / "f").write_text("x")
    ran = []
    with pytest.raises(atomic.OutputPathError, match="not a folder"), atomic.atomic_dir(tmp_path / "f"):
        ran.append(1)
    assert ran == [] and (tmp_path / "f").read_text() == "x"


def test_failed_work_keeps_the_previous_folder(tmp_path):
    target = tmp_path / "out"
    with atomic.atomic_dir(target) as tmp:
        (tmp / "v1").write_text("1")
    with pytest.raises(RuntimeError), atomic.atomic_dir(target) as tmp:
        (tmp / "v2").write_text("2")
        raise RuntimeError("crash")
    assert (target / "v1").read_text() == "1" and not (target / "v2").exists()
    assert not list(tmp_path.glob(".*tmp-*"))


def test_tasks_path_out_dot_keeps_the_working_directory(tmp_path, capsys, monkeypatch):
    (tmp_path / "thesis.tex").write_text("years of work")
    monkeypatch.chdir(tmp_path)
    rc, _, err = _run(["tasks-path", "--k", "4", "--out", "."], capsys)
    assert rc == 2 and "not written by sd-bench" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]
    # into a new folder it works, and a rerun may replace that folder (sd-bench's own now)
    assert _run(["tasks-path", "--k", "4", "--out", "t"], capsys)[0] == 0
    assert _run(["tasks-path", "--k", "3", "--out", "t"], capsys)[0] == 0
    assert "repeats: 3" in next((tmp_path / "t").glob("*template*")).read_text()


@pytest.mark.parametrize("output", ["user", "plainfile"])
def test_toy_pretrain_never_replaces_a_users_folder(output, tmp_path, capsys, monkeypatch):
    _write_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    rc, _out, err = _run(["toy", "pretrain", "--steps", "1", "--threads", "1", "--output", output], capsys)
    assert rc == 2 and "Traceback" not in err and output in err and "new or empty folder" in err
    for name in USER_FILES:
        assert (tmp_path / name).read_text() == FILES[name]
    assert not list(tmp_path.glob(".*tmp-*"))


# --- tracebacks only under --debug; errors from inside other libraries; ENOSPC -----------------------------


def test_debug_flag_and_environment_show_the_traceback(inputs, capsys, monkeypatch):
    monkeypatch.chdir(inputs)
    argv = ["tasks-path", "--k", "0", "--out", "new"]
    rc, _, err = _run(argv, capsys)
    assert rc == 2 and "Traceback" not in err and "k must be >= 1" in err
    rc, _, err = _run(["--debug", *argv], capsys)
    assert rc == 2 and "Traceback (most recent call last)" in err
    rc, _, err = _run([*argv, "--debug"], capsys)
    assert rc == 2 and "Traceback (most recent call last)" in err
    monkeypatch.setenv("SD_BENCH_DEBUG", "1")
    rc, _, err = _run(argv, capsys)
    assert rc == 2 and "Traceback (most recent call last)" in err


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux) for a real ENOSPC")
def test_enospc_names_the_path(tmp_path):
    """A real ENOSPC (writing to /dev/full): the write's OSError names no file; atomic writes add the path,
    and the top-level message names it with the fix."""
    with pytest.raises(OSError) as info, open("/dev/full", "w") as f:
        f.write("x" * 10)
    assert info.value.errno == 28 and info.value.filename is None
    named = atomic._named(info.value, tmp_path / "table2.json")
    assert error_message(named) == f"{tmp_path / 'table2.json'}: {'no space left on device'}" + (
        "; free space there or write elsewhere (--output)"
    )
    # copytree (tasks-path) collects per-file errors in shutil.Error: the folder is named
    err = shutil.Error([("src/a.yaml", str(tmp_path / ".t.tmp-1" / "a.yaml"), "[Errno 28] No space left")])
    assert error_message(err).startswith(f"{tmp_path / '.t.tmp-1'}: no space left on device")


def test_data_error_raised_inside_lm_eval_is_one_line(tmp_path):
    """lm-eval loads sd-bench's task datasets through sd_bench.data; a DataError raised there reaches the top
    through lm-eval unchanged (the real lm-eval, an empty data folder) and prints as its own message."""
    import lm_eval

    from sd_bench import lm_eval_tasks

    env = {"SD_BENCH_DATA_DIR": str(tmp_path)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with pytest.raises(Exception) as info:
            lm_eval.simple_evaluate(
                model="dummy",
                tasks=["sd_aime24"],
                task_manager=lm_eval_tasks.task_manager(k=1, include_defaults=False),
                limit=1,
            )
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    message = error_message(info.value)
    assert type(info.value).__name__ == "DataError"
    assert message.startswith(f"{tmp_path / 'math' / 'evaluation' / 'aime24.parquet'} does not exist")


def test_unknown_exception_becomes_one_line():
    try:
        {}["missing"]
    except KeyError as exc:
        assert error_message(exc) == "'missing' (KeyError; rerun with --debug for the traceback)"
    # a chained sd-bench error wins over the wrapper that lm-eval / datasets may add
    from sd_bench.check import CheckError

    try:
        try:
            raise CheckError("x.json: field 'k': 0 is not a positive integer or null")
        except CheckError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert error_message(outer) == "x.json: field 'k': 0 is not a positive integer or null"


def test_decode_error_names_the_file_it_came_from(tmp_path):
    """Code that reads a file without naming it in its error (Path.read_text, a loop over open()): the top
    level finds the file in the traceback, so the line still names it."""
    bad = tmp_path / "recipe.yaml"
    bad.write_bytes(b"lr: 1\n# caf\xe9\n")
    with pytest.raises(UnicodeDecodeError) as info:
        bad.read_text(encoding="utf-8")
    assert error_message(info.value).startswith(f"{bad}: not UTF-8 text (byte b'\\xe9' at offset 11)")
    with pytest.raises(UnicodeDecodeError) as info, open(bad, encoding="utf-8") as f:
        for _ in f:
            pass
    assert error_message(info.value).startswith(f"{bad}: not UTF-8 text")


@pytest.mark.parametrize("name", sorted(__import__("sd_bench.cli").cli.MESSAGE_ERRORS))
def test_message_error_names_exist(name):
    """cli.MESSAGE_ERRORS names classes by string (no imports at startup): each must still exist."""
    import importlib

    module, _, cls = name.rpartition(".")
    assert issubclass(getattr(importlib.import_module(module), cls), Exception), name
