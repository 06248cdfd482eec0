"""`sd-bench check RESULT --against BASELINE`: fail when a result drifts from a baseline beyond tolerance.

Both files are sd-bench table files (`tableN.json`) or result files (see sd_bench/tables.py). Every
metric of the baseline must be present in the result and within its tolerance (two-sided: a reproduction
should match, so an unexplained jump up is reported too). Exit 0 = all within tolerance and all rules hold,
1 = a metric drifted, is missing, or a rule failed, 2 = a file could not be read (the error says which field).

Tolerances, per metric kind (override with `--tolerance NAME=SPEC`, or a `tolerances` block in the baseline
or in `--rules FILE`; NAME is a metric kind such as `acc`, or one full path such as
`conditions.t2_base.metrics.aime24`, which wins over the kind). SPEC is `0.05` (absolute), `15%`
(relative to the baseline), `15%|0.5` (relative, but at least 0.5 absolute), or `3se` (statistical).

- avg@k and other per-problem means in [0, 1] (`acc`, `pass_at_k`, `answer_rate`): `3se`, a z = 3 bound on
  the difference of two independent means,

      allowed = z * sqrt( p~ (1 - p~) * (1/n_ours + 1/n_base) ),   p~ = (x + 2) / (N + 4)

  with x = p_ours n_ours + p_base n_base and N = n_ours + n_base (Agresti-Coull, so p = 0 or 1 does not
  give a zero tolerance). n is the number of problems. Why problems and not n*k samples: avg@k is a mean
  over n problems of per-problem scores s_i in [0, 1], and any such scores with mean p have variance at most
  p (1 - p) (Bhatia-Davis), whatever k is and whether the s_i moved because of sampling noise or because a
  reseeded training run landed on a slightly different model. So p(1-p)/n bounds the variance of a reseeded
  rerun's avg@k; at z = 3 such a rerun fails with probability < 0.3% per metric, while a real drop such as
  Table 2's solution-guided SFT on MATH500 (92.2 -> 65.5, n = 500: allowed 0.078) or on the sd_ood_math
  macro average (68.5 -> 38.9, effective n = 171: allowed 0.16) fails. The bound is loose on tiny sets:
  on AIME24 alone (n = 30) it allows 0.38, so check the group average, or use `--bound samples`
  (n*k instead of n): the tighter bound for re-evaluating the SAME checkpoint with another sampling seed
  (per-sample variance p(1-p)/(nk) when samples are independent), not valid across retraining.
- response length (`response_tokens`, `response_chars`): 15% relative, at least 1.
- epistemic counts (`epistemic_count`, `epistemic_per_1k_tokens`, `wait_count`): 20% relative, at least 0.1:
  marker counts are heavy-tailed (a few looping responses dominate the mean), so they get more room than length.
- anything else: 10% relative, at least 1e-6.

Rules (issue 5's guards, e.g. "SD(solution) waits < 0.2 x base waits") live in the baseline or `--rules`
file as data, never code (no eval):

    "rules": [{"name": "sd waits collapse", "lhs": "conditions.sd_solution.metrics.wait",
               "op": "<", "rhs": "conditions.base.metrics.wait", "factor": 0.2, "offset": 0.0}]

meaning lhs OP factor * rhs + offset, with lhs / rhs dotted paths into the RESULT file (or numbers);
`"rhs_file": "baseline"` resolves rhs in the baseline instead. Ops: < <= > >= == !=.
"""

from __future__ import annotations

import argparse
import json
import math
import operator
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sd_bench.tables import RESULT_SCHEMA, TABLE_SCHEMA, ResultFileError, read_json


class CheckError(ValueError):
    """A file or spec that cannot be checked; the message names the file, field and fix."""


@dataclass(frozen=True)
class Tolerance:
    kind: str  # "abs" | "rel" | "se"
    value: float
    floor: float = 0.0  # rel only: minimum absolute tolerance

    def describe(self) -> str:
        if self.kind == "se":
            return f"{self.value:g}se"
        if self.kind == "rel":
            return f"{self.value * 100:g}%" + (f"|{self.floor:g}" if self.floor else "")
        return f"abs {self.value:g}"


def parse_tolerance(spec: Any, where: str = "tolerance") -> Tolerance:
    """`0.05` / `"0.05"` absolute, `"15%"` relative, `"15%|0.5"` relative with a floor, `"3se"` statistical."""
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        if spec < 0:
            raise CheckError(f"{where}: {spec!r} is negative")
        return Tolerance("abs", float(spec))
    if not isinstance(spec, str):
        raise CheckError(f"{where}: {spec!r} is not a tolerance (0.05, 15%, 15%|0.5 or 3se)")
    s = spec.strip()
    try:
        if s.endswith("se"):
            return Tolerance("se", float(s[:-2]))
        if "%" in s:
            rel, _, floor = s.partition("|")
            if not rel.endswith("%"):
                raise ValueError
            return Tolerance("rel", float(rel[:-1]) / 100, float(floor) if floor else 0.0)
        value = float(s)
        if value < 0:
            raise ValueError
        return Tolerance("abs", value)
    except ValueError:
        raise CheckError(f"{where}: {spec!r} is not a tolerance (0.05, 15%, 15%|0.5 or 3se)") from None


PROPORTION_METRICS = ("acc", "pass_at_k", "answer_rate")
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    **{m: Tolerance("se", 3.0) for m in PROPORTION_METRICS},
    "response_tokens": Tolerance("rel", 0.15, 1.0),
    "response_chars": Tolerance("rel", 0.15, 1.0),
    "epistemic_count": Tolerance("rel", 0.20, 0.1),
    "epistemic_per_1k_tokens": Tolerance("rel", 0.20, 0.1),
    "wait_count": Tolerance("rel", 0.20, 0.1),
}
FALLBACK_TOLERANCE = Tolerance("rel", 0.10, 1e-6)
# When n is unknown, a statistical tolerance cannot be computed; this absolute one is used and shown.
NO_N_TOLERANCE = Tolerance("abs", 0.05)


@dataclass(frozen=True)
class Measurement:
    path: str
    value: float
    metric: str
    n: int | None = None
    k: int | None = None


def measurements(data: Any, where: str) -> dict[str, Measurement]:
    """Flatten a table or result file into path -> Measurement (None cells are skipped)."""
    if not isinstance(data, dict):
        raise CheckError(f"{where}: not a JSON object (expected an sd-bench table or result file)")
    schema = data.get("schema")
    out: dict[str, Measurement] = {}
    if schema == TABLE_SCHEMA:
        cols = data.get("columns")
        conds = data.get("conditions")
        if not isinstance(cols, list) or not isinstance(conds, dict):
            raise CheckError(f"{where}: fields 'columns' (list) and 'conditions' (mapping) are required")
        kinds = {c.get("key"): c.get("metric", c.get("key")) for c in cols if isinstance(c, dict)}
        for cid, cond in conds.items():
            if not isinstance(cond, dict) or not isinstance(cond.get("metrics"), dict):
                raise CheckError(f"{where}: field 'conditions.{cid}.metrics': missing or not a mapping")
            stats = cond.get("stats") or {}
            for key, v in cond["metrics"].items():
                if v is None:
                    continue
                if not isinstance(v, (int, float)) or isinstance(v, bool):
                    raise CheckError(
                        f"{where}: field 'conditions.{cid}.metrics.{key}': {v!r} is not a number"
                    )
                st = stats.get(key) or {}
                path = f"conditions.{cid}.metrics.{key}"
                out[path] = Measurement(
                    path, float(v), kinds.get(key, key), st.get("n_problems"), st.get("k")
                )
    elif schema == RESULT_SCHEMA:
        metrics = data.get("metrics")
        if not isinstance(metrics, dict):
            raise CheckError(f"{where}: field 'metrics': missing or not a mapping")
        for m, v in metrics.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise CheckError(f"{where}: field 'metrics.{m}': {v!r} is not a number")
            out[f"metrics.{m}"] = Measurement(
                f"metrics.{m}", float(v), m, data.get("n_problems"), data.get("k")
            )
    else:
        raise CheckError(
            f"{where}: field 'schema': {schema!r} is neither '{TABLE_SCHEMA}' nor '{RESULT_SCHEMA}' "
            "(pass a tableN.json written by `sd-bench reproduce` or an sd-bench result file)"
        )
    return out


def allowed_difference(
    ours: Measurement, base: Measurement, tol: Tolerance, bound: str = "problems"
) -> tuple[float, str]:
    """The largest |ours - base| accepted, and how it was obtained (shown in the diff table)."""
    if tol.kind == "abs":
        return tol.value, tol.describe()
    if tol.kind == "rel":
        return max(tol.value * abs(base.value), tol.floor), tol.describe()
    n_o, n_b = ours.n or base.n, base.n or ours.n
    if not n_o or not n_b:
        return NO_N_TOLERANCE.value, f"{NO_N_TOLERANCE.describe()} (n unknown)"
    if bound == "samples":
        n_o, n_b = n_o * (ours.k or base.k or 1), n_b * (base.k or ours.k or 1)
    x = ours.value * n_o + base.value * n_b
    p = min(max((x + 2) / (n_o + n_b + 4), 0.0), 1.0)
    return tol.value * math.sqrt(p * (1 - p) * (1 / n_o + 1 / n_b)), f"{tol.describe()} n={base.n}" + (
        f" k={base.k}" if bound == "samples" else ""
    )


@dataclass(frozen=True)
class Row:
    path: str
    ours: float | None
    base: float
    allowed: float | None
    how: str
    ok: bool

    @property
    def status(self) -> str:
        return "ok" if self.ok else ("MISSING" if self.ours is None else "FAIL")


def _resolve_tolerances(specs: dict[str, Any], where: str) -> dict[str, Tolerance]:
    if not isinstance(specs, dict):
        raise CheckError(f"{where}: field 'tolerances': must be a mapping NAME -> SPEC")
    return {name: parse_tolerance(spec, f"{where}: tolerances.{name}") for name, spec in specs.items()}


def compare(
    result: dict,
    baseline: dict,
    tolerances: dict[str, Tolerance] | None = None,
    *,
    bound: str = "problems",
    result_name: str = "RESULT",
    baseline_name: str = "BASELINE",
) -> list[Row]:
    """One Row per baseline metric. `tolerances` maps kind or path -> Tolerance (overrides defaults)."""
    tolerances = tolerances or {}
    ours = measurements(result, result_name)
    base = measurements(baseline, baseline_name)
    rows = []
    for path, b in base.items():
        tol = (
            tolerances.get(path)
            or tolerances.get(b.metric)
            or DEFAULT_TOLERANCES.get(b.metric, FALLBACK_TOLERANCE)
        )
        o = ours.get(path)
        if o is None:
            rows.append(Row(path, None, b.value, None, tol.describe(), False))
            continue
        allowed, how = allowed_difference(o, b, tol, bound)
        rows.append(Row(path, o.value, b.value, allowed, how, abs(o.value - b.value) <= allowed + 1e-12))
    return rows


# --- rules -------------------------------------------------------------------------------------------

OPS = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}


def resolve_path(data: Any, path: str) -> float:
    """Follow a dotted path (mapping keys; integers index lists) to a number; KeyError naming the step."""
    cur = data
    for i, part in enumerate(path.split(".")):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.lstrip("-").isdigit() and -len(cur) <= int(part) < len(cur):
            cur = cur[int(part)]
        else:
            near = f" (available: {', '.join(map(str, list(cur)[:12]))})" if isinstance(cur, dict) else ""
            raise KeyError(f"'{path}': no '{part}' after '{'.'.join(path.split('.')[:i]) or '<root>'}'{near}")
    if not isinstance(cur, (int, float)) or isinstance(cur, bool):
        raise KeyError(f"'{path}': {cur!r} is not a number")
    return float(cur)


@dataclass(frozen=True)
class RuleResult:
    name: str
    text: str
    ok: bool
    error: str | None = None


def check_rules(rules: Any, result: dict, baseline: dict, where: str = "rules") -> list[RuleResult]:
    if not isinstance(rules, list):
        raise CheckError(f"{where}: field 'rules': must be a list of {{name, lhs, op, rhs, factor, offset}}")
    out = []
    for i, rule in enumerate(rules):
        rwhere = f"{where}: rules[{i}]"
        if not isinstance(rule, dict):
            raise CheckError(f"{rwhere}: must be a mapping")
        unknown = set(rule) - {"name", "lhs", "op", "rhs", "factor", "offset", "rhs_file"}
        if unknown:
            raise CheckError(f"{rwhere}: unknown field(s) {', '.join(sorted(unknown))}")
        name = str(rule.get("name") or f"rule {i}")
        op = rule.get("op")
        if op not in OPS:
            raise CheckError(f"{rwhere} ({name}): field 'op': {op!r} is not one of {' '.join(OPS)}")
        for key in ("lhs", "rhs"):
            v = rule.get(key)
            if not (isinstance(v, str) and v) and not (
                isinstance(v, (int, float)) and not isinstance(v, bool)
            ):
                raise CheckError(f"{rwhere} ({name}): field '{key}': must be a dotted path or a number")
        factor, offset = rule.get("factor", 1.0), rule.get("offset", 0.0)
        for key, v in (("factor", factor), ("offset", offset)):
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise CheckError(f"{rwhere} ({name}): field '{key}': {v!r} is not a number")
        rhs_src = rule.get("rhs_file", "result")
        if rhs_src not in ("result", "baseline"):
            raise CheckError(
                f"{rwhere} ({name}): field 'rhs_file': {rhs_src!r} is not 'result' or 'baseline'"
            )
        try:
            lhs = rule["lhs"] if not isinstance(rule["lhs"], str) else resolve_path(result, rule["lhs"])
            rhs_doc = baseline if rhs_src == "baseline" else result
            rhs = rule["rhs"] if not isinstance(rule["rhs"], str) else resolve_path(rhs_doc, rule["rhs"])
        except KeyError as exc:
            out.append(
                RuleResult(name, f"{rule['lhs']} {op} {rule['rhs']}", False, f"path not found: {exc.args[0]}")
            )
            continue
        target = factor * rhs + offset
        shown = (
            f"{rhs:.4g}"
            if (factor, offset) == (1.0, 0.0)
            else f"{factor:g} * {rhs:.4g} {offset:+g} = {target:.4g}"
        )
        out.append(RuleResult(name, f"{lhs:.4g} {op} {shown}", OPS[op](lhs, target)))
    return out


# --- rendering and CLI -------------------------------------------------------------------------------


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def render_text(rows: list[Row], rules: list[RuleResult]) -> str:
    from tabulate import tabulate

    parts = []
    if rows:
        table = [
            [
                r.path,
                _num(r.ours),
                _num(r.base),
                _num(None if r.ours is None else r.ours - r.base),
                "-" if r.allowed is None else f"±{r.allowed:.4g} ({r.how})",
                r.status,
            ]
            for r in rows
        ]
        parts.append(
            tabulate(
                table,
                ["metric", "ours", "baseline", "diff", "allowed", "status"],
                tablefmt="simple",
                disable_numparse=True,
            )
        )
    if rules:
        table = [[r.name, r.text, "ok" if r.ok else "FAIL", r.error or ""] for r in rules]
        parts.append(
            tabulate(table, ["rule", "check", "status", "error"], tablefmt="simple", disable_numparse=True)
        )
    n_bad = sum(not r.ok for r in rows) + sum(not r.ok for r in rules)
    parts.append(
        f"{len(rows)} metrics, {len(rules)} rules: "
        + ("all within tolerance" if not n_bad else f"{n_bad} FAILED")
    )
    return "\n\n".join(parts)


def _gh_escape(s: str, prop: bool = False) -> str:
    s = s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return s.replace(":", "%3A").replace(",", "%2C") if prop else s


def render_github(rows: list[Row], rules: list[RuleResult], result_file: str) -> str:
    """GitHub Actions workflow commands: one ::error per failed metric or rule."""
    lines = []
    f = _gh_escape(result_file, prop=True)
    for r in rows:
        if r.ok:
            continue
        title = _gh_escape(f"sd-bench check: {r.path}", prop=True)
        if r.ours is None:
            msg = f"{r.path} is missing from the result (baseline {r.base:.4g})"
        else:
            msg = (
                f"{r.path}: ours {r.ours:.4g}, baseline {r.base:.4g}, diff {r.ours - r.base:+.4g}, "
                f"allowed ±{r.allowed:.4g} ({r.how})"
            )
        lines.append(f"::error file={f},title={title}::{_gh_escape(msg)}")
    for r in rules:
        if not r.ok:
            title = _gh_escape(f"sd-bench rule: {r.name}", prop=True)
            lines.append(
                f"::error file={f},title={title}::{_gh_escape(r.error or r.text + ' does not hold')}"
            )
    return "\n".join(lines)


def run_check(
    result_path: str,
    baseline_path: str,
    cli_tolerances: list[str] = (),
    rules_path: str | None = None,
    bound: str = "problems",
) -> tuple[list[Row], list[RuleResult]]:
    try:
        result = read_json(result_path)
        baseline = read_json(baseline_path)
        extra = {}
        if rules_path:
            if rules_path.endswith((".yaml", ".yml")):
                import yaml

                extra = yaml.safe_load(Path(rules_path).read_text()) or {}
            else:
                extra = read_json(rules_path)
            if not isinstance(extra, dict):
                raise CheckError(f"{rules_path}: must be a mapping with 'tolerances' and/or 'rules'")
    except ResultFileError as exc:
        raise CheckError(str(exc)) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckError(f"{rules_path}: {exc}") from None
    tolerances: dict[str, Tolerance] = {}
    tolerances.update(
        _resolve_tolerances(baseline.get("tolerances", {}), baseline_path)
        if isinstance(baseline, dict)
        else {}
    )
    tolerances.update(_resolve_tolerances(extra.get("tolerances", {}), str(rules_path)))
    for item in cli_tolerances:
        name, sep, spec = item.partition("=")
        if not sep or not name:
            raise CheckError(
                f"--tolerance {item!r}: expected NAME=SPEC, e.g. acc=0.05 or response_tokens=15%"
            )
        tolerances[name] = parse_tolerance(spec, f"--tolerance {name}")
    rows = compare(
        result, baseline, tolerances, bound=bound, result_name=result_path, baseline_name=baseline_path
    )
    rules = []
    if isinstance(baseline, dict) and "rules" in baseline:
        rules += check_rules(baseline["rules"], result, baseline, baseline_path)
    if "rules" in extra:
        rules += check_rules(extra["rules"], result, baseline, str(rules_path))
    return rows, rules


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("result", help="tableN.json (or result file) to check")
    parser.add_argument(
        "--against", required=True, metavar="BASELINE", help="baseline tableN.json / result file"
    )
    parser.add_argument(
        "--tolerance",
        action="append",
        default=[],
        metavar="NAME=SPEC",
        help="override a tolerance: NAME is a metric kind (acc) or a full path; SPEC is 0.05, "
        "15%%, 15%%|0.5 or 3se (repeatable)",
    )
    parser.add_argument("--rules", metavar="FILE", help="JSON/YAML file with extra 'tolerances' and 'rules'")
    parser.add_argument(
        "--bound",
        choices=("problems", "samples"),
        default="problems",
        help="n for the statistical bound: problems (rerun incl. retraining; default) or "
        "problems*k (same checkpoint, new sampling seed)",
    )
    parser.add_argument("--format", choices=("text", "github"), default="text")


def run(args: argparse.Namespace) -> int:
    try:
        rows, rules = run_check(args.result, args.against, args.tolerance, args.rules, args.bound)
    except CheckError as exc:
        print(f"sd-bench check: {exc}", file=sys.stderr)
        return 2
    print(render_text(rows, rules))
    if args.format == "github":
        gh = render_github(rows, rules, args.result)
        if gh:
            print(gh)
    return 0 if all(r.ok for r in rows) and all(r.ok for r in rules) else 1
