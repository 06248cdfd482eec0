"""`sd-bench check RESULT --against BASELINE`: fail when a result drifts from a baseline beyond tolerance.

Both files are sd-bench table files (`tableN.json`) or result files (see sd_bench/tables.py), of the same
table (and, for result files, the same condition and task). Every metric of the baseline must be present
in the result and within its tolerance (two-sided: a reproduction should match, so an unexplained jump up
is reported too); NaN or infinity anywhere in the result fails. Exit 0 = all within tolerance and all rules
hold, 1 = a metric drifted, is missing or NaN, a rule failed, or nothing was compared, 2 = a file or spec
could not be read (the one-line error says which file, field and fix).

Tolerances, per metric kind (override with `--tolerance NAME=SPEC`, or a `tolerances` block in the baseline
or in `--rules FILE`; NAME is a metric kind such as `acc`, or one full path such as
`conditions.t2_base.metrics.id_acc`, which wins over the kind; unknown names and negative specs are
refused). SPEC is `0.05` (absolute), `15%` (relative to the baseline), `15%|0.5` (relative, but at least
0.5 absolute), or `3se` (statistical, proportions only).

- avg@k and other per-problem means in [0, 1] (`acc`, `pass_at_k`, `answer_rate`, `maj_at_k`, `pass_at_j`,
  each also `_paper`): `3se`, a z = 3 bound on
  the difference of two independent means, with the standard error that fits how the row was made (its
  condition kind: the table's `conditions.<id>.kind` / the result's `kind`, else the manifest entry of the
  condition id; stated in the diff):

      allowed = z * sqrt( p~ (1 - p~) * (1/m_ours + 1/m_base) ),   p~ = (x + 2) / (M + 4)

  with x = p_ours m_ours + p_base m_base and M = m_ours + m_base (Agresti-Coull, so p = 0 or 1 does not
  give a zero tolerance), and m =

  * `sampling` (evaluation-only rows, kinds eval and probe: the same weights, only the sampling seed
    changes): m = n k. Given the n problems, avg@k = (1/n) sum_i s_i with s_i the mean of k Bernoulli(p_i)
    samples, so Var(avg@k | problems) = (1/n^2) sum_i p_i (1 - p_i) / k <= p (1 - p) / (n k) (concavity:
    mean_i p_i (1 - p_i) <= p (1 - p)). Only means over the k samples (`acc`, `answer_rate`) get it;
    pass@j and maj@k are one 0/1 outcome per problem, so for them m = n. At the smoke baseline (n = 128, k = 4, p = 0.46) it allows 0.093,
    and five reseeded reruns of the base row moved by at most 0.043 (the note of issue 8).
  * `problems` (retrained rows, kinds sft and onpolicy, and rows of unknown kind): m = n. Any per-problem
    scores s_i in [0, 1] with mean p have variance at most p (1 - p) (Bhatia-Davis), whatever k is and
    whether the s_i moved because of sampling noise or because a reseeded training run landed on a
    slightly different model; so p(1-p)/n bounds a reseeded rerun's variance, and at z = 3 such a rerun
    fails with probability < 0.3% per metric. Table 2's solution-guided SFT on MATH500 (92.2 -> 65.5,
    n = 500: allowed 0.078) fails; on AIME24 alone (n = 30) it allows 0.38.
  `--bound samples|problems` forces one for every row. Where the allowed difference is 0.10 or more, a
  warning says that a 10-point drop would pass and how many problems would catch it.
- response length (`response_tokens`, `response_chars`, `thinking_tokens`): 15% relative, at least 1.
- epistemic counts (`epistemic_count`, `epistemic_per_1k_tokens`, `wait_count`, `marker_*`): 20% relative,
  at least 0.1:
  marker counts are heavy-tailed (a few looping responses dominate the mean), so they get more room than length.
- anything else: 10% relative, at least 1e-6.

Rules (issue 5's guards, e.g. "SD(solution) waits < 0.2 x base waits") live in the baseline or `--rules`
file as data, never code (no eval):

    "rules": [{"name": "sd waits collapse", "lhs": "conditions.sd_solution.metrics.wait",
               "op": "<", "rhs": "conditions.base.metrics.wait", "factor": 0.2, "offset": 0.0}]

meaning lhs OP factor * rhs + offset, with lhs / rhs dotted paths into the RESULT file (or numbers);
`"rhs_file": "baseline"` resolves rhs in the baseline instead. Ops: < <= > >= == !=. A `--rules` file may
also list rules per target (`table2: [...]`, the layout of results/smoke/guards.yaml): those of the result's
table apply. Any other field of a rules file is refused (a misspelt `rule:` would otherwise check nothing).
"""

from __future__ import annotations

import argparse
import difflib
import functools
import math
import operator
import re
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


TOLERANCE_FORMS = "0.05, 15%, 15%|0.5 or 3se, none negative"


def parse_tolerance(spec: Any, where: str = "tolerance") -> Tolerance:
    """`0.05` / `"0.05"` absolute, `"15%"` relative, `"15%|0.5"` relative with a floor, `"3se"` statistical."""
    bad = CheckError(f"{where}: {spec!r} is not a tolerance ({TOLERANCE_FORMS})")
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        tol = Tolerance("abs", float(spec))
    elif isinstance(spec, str):
        s = spec.strip()
        try:
            if s.endswith("se"):
                tol = Tolerance("se", float(s[:-2]))
            elif "%" in s:
                rel, _, floor = s.partition("|")
                if not rel.endswith("%"):
                    raise bad
                tol = Tolerance("rel", float(rel[:-1]) / 100, float(floor) if floor else 0.0)
            else:
                tol = Tolerance("abs", float(s))
        except ValueError:
            raise bad from None
    else:
        raise bad
    if not all(math.isfinite(v) and v >= 0 for v in (tol.value, tol.floor)):
        raise bad
    return tol


# Per-problem means in [0, 1]: the task metrics (tasks/_sd_math_template), each also under the paper's
# grading rule (`_paper`); pass@j for the j <= k the tasks report.
PROPORTION_METRICS = tuple(
    f"{m}{rule}"
    for m in ("acc", "pass_at_k", "maj_at_k", "answer_rate", *(f"pass_at_{j}" for j in (1, 2, 4, 8, 16)))
    for rule in ("", "_paper")
)
LENGTH_TOLERANCE = Tolerance("rel", 0.15, 1.0)
MARKER_TOLERANCE = Tolerance("rel", 0.20, 0.1)
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    **{m: Tolerance("se", 3.0) for m in PROPORTION_METRICS},
    **{
        m: LENGTH_TOLERANCE
        for m in ("response_tokens", "response_chars", "thinking_tokens", "thinking_chars")
    },
    **{m: MARKER_TOLERANCE for m in ("epistemic_count", "epistemic_per_1k_tokens", "wait_count")},
}
FALLBACK_TOLERANCE = Tolerance("rel", 0.10, 1e-6)
# Proportions that are means over the k samples of each problem (avg@k): the only ones with n*k samples.
MEAN_OF_K_METRICS = ("acc", "acc_paper", "answer_rate", "answer_rate_paper")


def default_tolerance(metric: str) -> Tolerance:
    """The tolerance of a metric kind; per-marker means (`marker_wait`, ...) are counted like E(y)."""
    if metric in DEFAULT_TOLERANCES:
        return DEFAULT_TOLERANCES[metric]
    return MARKER_TOLERANCE if metric.startswith("marker_") else FALLBACK_TOLERANCE


# When n is unknown, a statistical tolerance cannot be computed; this absolute one is used and shown.
NO_N_TOLERANCE = Tolerance("abs", 0.05)
# Condition kinds (checkpoints_manifest.yaml `kind`) whose rows only evaluate fixed weights: a rerun changes
# the sampling seed and nothing else, so the sampling bound applies. Every other kind is (re)trained.
EVAL_ONLY_KINDS = ("eval", "probe")
# The smallest drop the check must catch (issue 8: a planted 10-point drop passed the old bound).
DETECT_DROP = 0.10


@dataclass(frozen=True)
class Measurement:
    path: str
    value: float
    metric: str
    n: int | None = None
    k: int | None = None
    condition: str | None = None
    kind: str | None = None  # condition kind (eval, probe, sft, onpolicy); None = unknown


def _count(v: Any, where: str, field: str) -> int | None:
    """n_problems / k: a positive integer or null."""
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise CheckError(f"{where}: field '{field}': {v!r} is not a positive integer or null")
    return v


def _number(v: Any, where: str, field: str) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise CheckError(f"{where}: field '{field}': {v!r} is not a number")
    return float(v)


def _kind(v: Any, where: str, field: str) -> str | None:
    if v is not None and not isinstance(v, str):
        raise CheckError(
            f"{where}: field '{field}': {v!r} is not a condition kind (eval, probe, sft, onpolicy)"
        )
    return v


def measurements(data: Any, where: str) -> dict[str, Measurement]:
    """Flatten a table or result file into path -> Measurement (null cells are skipped; NaN is kept)."""
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
            stats = cond.get("stats")
            if stats is None:
                stats = {}
            if not isinstance(stats, dict):
                raise CheckError(
                    f"{where}: field 'conditions.{cid}.stats': {type(stats).__name__} is not a mapping "
                    "column -> {n_problems, k, ...}"
                )
            ckind = _kind(cond.get("kind"), where, f"conditions.{cid}.kind")
            for key, v in cond["metrics"].items():
                if v is None:
                    continue
                field = f"conditions.{cid}.metrics.{key}"
                value = _number(v, where, field)
                st = stats.get(key)
                if st is None:
                    st = {}
                if not isinstance(st, dict):
                    raise CheckError(
                        f"{where}: field 'conditions.{cid}.stats.{key}': {st!r} is not a mapping"
                    )
                sf = f"conditions.{cid}.stats.{key}"
                n = _count(st.get("n_problems"), where, f"{sf}.n_problems")
                k = _count(st.get("k"), where, f"{sf}.k")
                out[field] = Measurement(field, value, kinds.get(key, key), n, k, str(cid), ckind)
    elif schema == RESULT_SCHEMA:
        metrics = data.get("metrics")
        if not isinstance(metrics, dict):
            raise CheckError(f"{where}: field 'metrics': missing or not a mapping")
        n = _count(data.get("n_problems"), where, "n_problems")
        k = _count(data.get("k"), where, "k")
        ckind = _kind(data.get("kind"), where, "kind")
        cond = data.get("condition")
        for m, v in metrics.items():
            if v is None:
                continue
            value = _number(v, where, f"metrics.{m}")
            out[f"metrics.{m}"] = Measurement(f"metrics.{m}", value, m, n, k, cond, ckind)
    else:
        raise CheckError(
            f"{where}: field 'schema': {schema!r} is neither '{TABLE_SCHEMA}' nor '{RESULT_SCHEMA}' "
            "(pass a tableN.json written by `sd-bench reproduce` or an sd-bench result file)"
        )
    return out


def same_target(result: dict, baseline: dict, result_name: str, baseline_name: str) -> None:
    """Refuse to compare different things: another table number, a table with a result file, or result
    files of other conditions / tasks (their paths coincide, so the numbers would be compared silently)."""
    rs, bs = result.get("schema"), baseline.get("schema")
    if rs != bs:
        raise CheckError(
            f"{result_name} is a {'table' if rs == TABLE_SCHEMA else 'result'} file but {baseline_name} is "
            f"a {'table' if bs == TABLE_SCHEMA else 'result'} file; compare like with like"
        )
    fields = ("table",) if rs == TABLE_SCHEMA else ("condition", "task")
    for f in fields:
        if result.get(f) != baseline.get(f):
            what = "Table" if f == "table" else f
            raise CheckError(
                f"{result_name} is {what} {result.get(f)!r} but {baseline_name} is {what} "
                f"{baseline.get(f)!r}; check a result against the baseline of the same {f}"
            )


# The manifests that name condition kinds: the paper's, and the miniature world's (smoke scale).
MANIFESTS = {"paper": "checkpoints_manifest.yaml", "smoke": "toy_manifest.yaml"}


@functools.lru_cache(maxsize=4)  # one read per process: compare() is called per table
def condition_kinds(scale: str | None = None) -> dict[str, str]:
    """Condition id -> kind from the repository's manifests (the fallback when a file carries no kind), the
    manifest of `scale` winning; a manifest that cannot be read adds nothing (such rows then get the problem
    bound, which is always valid)."""
    from sd_bench import manifest

    order = sorted(MANIFESTS, key=lambda s: s == scale)  # the table's own scale last, so it wins
    kinds: dict[str, str] = {}
    for name in order:
        try:
            kinds.update({e.id: e.kind for e in manifest.load(manifest.REPO_ROOT / MANIFESTS[name]).entries})
        except (manifest.ManifestError, OSError, UnicodeDecodeError):
            continue
    return kinds


def choose_bound(m: Measurement, bound: str, manifest_kinds: dict[str, str]) -> tuple[str, str]:
    """("samples" | "problems", the condition kind shown): `bound` auto picks by condition kind."""
    kind = m.kind or manifest_kinds.get(m.condition or "")
    shown = kind or "kind unknown"
    if bound != "auto":
        return bound, shown
    return ("samples" if kind in EVAL_ONLY_KINDS else "problems"), shown


def allowed_difference(
    ours: Measurement, base: Measurement, tol: Tolerance, bound: str = "problems", kind: str = ""
) -> tuple[float, str]:
    """The largest |ours - base| accepted, and how it was obtained (shown in the diff table)."""
    if tol.kind == "abs":
        return tol.value, tol.describe()
    if tol.kind == "rel":
        return max(tol.value * abs(base.value), tol.floor), tol.describe()
    n_o, n_b = ours.n or base.n, base.n or ours.n
    if not n_o or not n_b:
        return NO_N_TOLERANCE.value, f"{NO_N_TOLERANCE.describe()} (n unknown)"
    k = ""
    if bound == "samples":
        k_o, k_b = ours.k or base.k or 1, base.k or ours.k or 1
        n_o, n_b = n_o * k_o, n_b * k_b
        k = f" k={base.k or ours.k}"
    x = ours.value * n_o + base.value * n_b
    p = min(max((x + 2) / (n_o + n_b + 4), 0.0), 1.0)
    name = "sampling" if bound == "samples" else "problems"
    how = f"{tol.describe()} {name} n={base.n or ours.n}{k}" + (f", {kind}" if kind else "")
    return tol.value * math.sqrt(p * (1 - p) * (1 / n_o + 1 / n_b)), how


def problems_to_detect(allowed: float, n: int, drop: float = DETECT_DROP) -> int:
    """The n (same k, same p) at which the bound `allowed` (at n) shrinks below `drop`: allowed ~ 1/sqrt(n)."""
    return math.ceil(n * (allowed / drop) ** 2) + 1


@dataclass(frozen=True)
class Row:
    path: str
    ours: float | None
    base: float | None  # None: the baseline cell is null (a NaN in the result is still a failure)
    allowed: float | None
    how: str
    ok: bool
    n: int | None = None  # problems behind a statistical bound (None: not a statistical bound)

    @property
    def status(self) -> str:
        if self.ok:
            return "ok"
        if self.ours is None:
            return "MISSING"
        finite = all(math.isfinite(v) for v in (self.ours, self.base) if v is not None)
        return "FAIL" if finite else "NaN"


def _resolve_tolerances(specs: Any, where: str, known: tuple[str, ...]) -> dict[str, Tolerance]:
    if not isinstance(specs, dict):
        raise CheckError(f"{where}: field 'tolerances': must be a mapping NAME -> SPEC")
    return {
        name: _tolerance_for(name, spec, f"{where}: tolerances.{name}", known) for name, spec in specs.items()
    }


def _tolerance_for(name: Any, spec: Any, where: str, known: tuple[str, ...]) -> Tolerance:
    """`spec` parsed, for a NAME that is a metric kind or a path of the baseline (else one line listing them)."""
    if name not in known:
        kinds = [k for k in known if "." not in k]
        close = difflib.get_close_matches(str(name), known, n=1)
        raise CheckError(
            f"{where}: unknown metric kind or path {name!r}"
            + (f" (did you mean {close[0]!r}?)" if close else "")
            + f"; kinds: {', '.join(kinds[:12])}{', ...' if len(kinds) > 12 else ''}, or a full path of the "
            "baseline such as conditions.<id>.metrics.<column>"
        )
    return parse_tolerance(spec, where)


def compare(
    result: dict,
    baseline: dict,
    tolerances: dict[str, Tolerance] | None = None,
    *,
    bound: str = "auto",
    result_name: str = "RESULT",
    baseline_name: str = "BASELINE",
    manifest_kinds: dict[str, str] | None = None,
) -> list[Row]:
    """One Row per baseline metric, plus one per NaN in the result that the baseline has no number for.
    `tolerances` maps kind or path -> Tolerance (overrides defaults)."""
    tolerances = tolerances or {}
    ours = measurements(result, result_name)
    base = measurements(baseline, baseline_name)
    if bound == "auto" and manifest_kinds is None:
        needs = any(b.kind is None for b in base.values())
        manifest_kinds = condition_kinds(baseline.get("scale")) if needs else {}
    rows = []
    for path, b in base.items():
        tol = tolerances.get(path) or tolerances.get(b.metric) or default_tolerance(b.metric)
        if tol.kind == "se" and b.metric not in PROPORTION_METRICS:
            raise CheckError(
                f"{baseline_name}: {path} ({b.metric}): a statistical tolerance ({tol.describe()}) applies to "
                f"proportions only (acc, pass_at_k, answer_rate, ...); use 0.05, 15% or 15%|0.5"
            )
        o = ours.get(path)
        if o is None:
            rows.append(Row(path, None, b.value, None, tol.describe(), False))
            continue
        if not (math.isfinite(b.value) and math.isfinite(o.value)):
            what = "the result" if math.isfinite(b.value) else "the baseline"
            rows.append(Row(path, o.value, b.value, None, f"not a number in {what}", False))
            continue
        which, kind = choose_bound(b, bound, manifest_kinds or {})
        if which == "samples" and bound == "auto" and o.n and b.n and o.n != b.n:
            which, kind = "problems", f"{kind}, other problems"  # the sampling bound needs the same problems
        if which == "samples" and b.metric not in MEAN_OF_K_METRICS:
            which = "problems"  # pass@j / maj@k: one outcome per problem, whatever k is
        allowed, how = allowed_difference(o, b, tol, which, kind if tol.kind == "se" else "")
        ok = abs(o.value - b.value) <= allowed + 1e-12
        n = (b.n or o.n) if tol.kind == "se" and (b.n or o.n) else None
        rows.append(Row(path, o.value, b.value, allowed, how, ok, n))
    # NaN / infinity is a failure even where the baseline has no number (a null cell) to compare it with
    rows += [
        Row(path, o.value, None, None, "not a number in the result", False)
        for path, o in ours.items()
        if path not in base and not math.isfinite(o.value)
    ]
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


def _diff(r: Row) -> str:
    return "-" if r.ours is None or r.base is None else _num(r.ours - r.base)


def detection_warnings(rows: list[Row]) -> list[str]:
    """One line per statistical bound too wide to catch a DETECT_DROP drop, with the n that would."""
    out = []
    for r in rows:
        if r.n is None or r.allowed is None or r.allowed < DETECT_DROP:
            continue
        out.append(
            f"warning: {r.path}: ±{r.allowed:.3g} ({r.how}) lets a {DETECT_DROP * 100:g}-point drop pass; "
            f"about n >= {problems_to_detect(r.allowed, r.n)} problems would catch one"
        )
    return out


BOUND_LEGEND = (
    "allowed: 'sampling' = evaluation-only row (only the sampling seed changes; SE of avg@k given the "
    "problems, p(1-p)/(n k)); 'problems' = retrained row or unknown kind (p(1-p)/n)"
)


def render_text(rows: list[Row], rules: list[RuleResult]) -> str:
    from tabulate import tabulate

    parts = []
    if rows:
        table = [
            [
                r.path,
                _num(r.ours),
                _num(r.base),
                _diff(r),
                ("-" if r.allowed is None else f"±{r.allowed:.4g}") + f" ({r.how})",
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
        if any("sampling" in r.how or "problems" in r.how for r in rows):
            parts.append(BOUND_LEGEND)
    if rules:
        table = [[r.name, r.text, "ok" if r.ok else "FAIL", r.error or ""] for r in rules]
        parts.append(
            tabulate(table, ["rule", "check", "status", "error"], tablefmt="simple", disable_numparse=True)
        )
    warnings = detection_warnings(rows)
    if warnings:
        parts.append("\n".join(warnings))
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
    """GitHub Actions workflow commands: one ::error per failed metric or rule, ::warning per weak bound."""
    lines = []
    f = _gh_escape(result_file, prop=True)
    for r in rows:
        if r.ok:
            continue
        title = _gh_escape(f"sd-bench check: {r.path}", prop=True)
        if r.ours is None:
            msg = f"{r.path} is missing from the result (baseline {r.base:.4g})"
        elif r.allowed is None:
            msg = f"{r.path}: ours {_num(r.ours)}, baseline {_num(r.base)}: {r.how}"
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
    for w in detection_warnings(rows):
        lines.append(f"::warning file={f},title=sd-bench check%3A weak bound::{_gh_escape(w)}")
    return "\n".join(lines)


RULES_FILE_FIELDS = ("tolerances", "rules", "about", "note", "description")
# guards files list rules per target: {table2: [...], figure3: [...], ablations: [...]}
TARGET_KEY = re.compile(r"^((table|figure)\d+|ablations)$")


def _read(path: str) -> Any:
    """A JSON (or, for --rules, YAML) file; every way it can be unreadable is a CheckError naming it."""
    if Path(path).exists() and not Path(path).is_file():
        raise CheckError(f"{path}: not a regular file (a folder?); pass a tableN.json or result file")
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            try:
                return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
            except yaml.YAMLError as exc:
                raise CheckError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
        return read_json(path)
    except ResultFileError as exc:
        raise CheckError(str(exc)) from None
    except UnicodeDecodeError as exc:
        raise CheckError(f"{path}: not UTF-8 text (byte offset {exc.start}); save it as UTF-8") from None
    except FileNotFoundError:
        raise CheckError(f"{path}: file not found") from None
    except OSError as exc:
        raise CheckError(f"{path}: cannot read ({exc.strerror or exc})") from None


def run_check(
    result_path: str,
    baseline_path: str,
    cli_tolerances: list[str] = (),
    rules_path: str | None = None,
    bound: str = "auto",
) -> tuple[list[Row], list[RuleResult]]:
    result = _read(result_path)
    baseline = _read(baseline_path)
    for data, name in ((result, result_path), (baseline, baseline_path)):
        if not isinstance(data, dict):
            raise CheckError(f"{name}: not a JSON object (expected an sd-bench table or result file)")
    extra: Any = {}
    if rules_path:
        extra = _read(rules_path)
        if extra is None:
            raise CheckError(f"{rules_path}: the rules file is empty; give 'tolerances' and/or 'rules'")
        if not isinstance(extra, dict):
            raise CheckError(f"{rules_path}: must be a mapping with 'tolerances' and/or 'rules'")
        unknown = sorted(str(k) for k in set(extra) - set(RULES_FILE_FIELDS) if not TARGET_KEY.match(str(k)))
        if unknown:
            close = difflib.get_close_matches(unknown[0], RULES_FILE_FIELDS, n=1)
            raise CheckError(
                f"{rules_path}: unknown field(s) {', '.join(map(repr, unknown))}"
                + (f" (did you mean {close[0]!r}?)" if close else "")
                + "; a rules file holds 'tolerances' and/or 'rules'"
            )
    base_m = measurements(baseline, baseline_path)
    measurements(result, result_path)  # a malformed result is reported before any comparison
    same_target(result, baseline, result_path, baseline_path)
    present = sorted({m.metric for m in base_m.values()})  # listed first in an unknown-name error
    known = (*present, *sorted(set(DEFAULT_TOLERANCES) - set(present)), *base_m)
    tolerances: dict[str, Tolerance] = {}
    tolerances.update(_resolve_tolerances(baseline.get("tolerances", {}), baseline_path, known))
    tolerances.update(_resolve_tolerances(extra.get("tolerances", {}), str(rules_path), known))
    for item in cli_tolerances:
        name, sep, spec = item.partition("=")
        if not sep or not name:
            raise CheckError(
                f"--tolerance {item!r}: expected NAME=SPEC, e.g. acc=0.05 or response_tokens=15%"
            )
        tolerances[name] = _tolerance_for(name, spec, f"--tolerance {name}", known)
    rows = compare(
        result, baseline, tolerances, bound=bound, result_name=result_path, baseline_name=baseline_path
    )
    rules = []
    if "rules" in baseline:
        rules += check_rules(baseline["rules"], result, baseline, baseline_path)
    if "rules" in extra:
        rules += check_rules(extra["rules"], result, baseline, str(rules_path))
    targets = sorted(str(k) for k in extra if TARGET_KEY.match(str(k)))
    if targets:  # a guards file (results/smoke/guards.yaml): the rules listed under this table
        table = str(result.get("table"))
        target = table if TARGET_KEY.match(table) else f"table{table}"
        if target not in extra:
            raise CheckError(
                f"{rules_path}: no rules for {target} (it has {', '.join(targets)}); pass the rules of this table"
            )
        rules += check_rules(extra[target], result, baseline, f"{rules_path}: {target}")
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
        choices=("auto", "problems", "samples"),
        default="auto",
        help="n of the statistical bound: auto (default) = problems*k for evaluation-only rows, problems "
        "for retrained rows; or force one for every row",
    )
    parser.add_argument("--format", choices=("text", "github"), default="text")


def run(args: argparse.Namespace) -> int:
    try:
        rows, rules = run_check(args.result, args.against, args.tolerance, args.rules, args.bound)
    except CheckError as exc:
        print(f"sd-bench check: {exc}", file=sys.stderr)
        return 2
    if not any(r.ours is not None for r in rows) and (rows or not rules):
        print(
            f"sd-bench check: nothing compared: none of the {len(rows)} metrics of {args.against} is in "
            f"{args.result} (another scale, columns or conditions?)",
            file=sys.stderr,
        )
        return 1
    print(render_text(rows, rules))
    if args.format == "github":
        gh = render_github(rows, rules, args.result)
        if gh:
            print(gh)
    return 0 if all(r.ok for r in rows) and all(r.ok for r in rules) else 1
