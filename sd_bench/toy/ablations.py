"""Issue 5's ablations through the REAL trainer: does the effect hold, and does a remedy hold?

    python -m sd_bench.toy.ablations --seeds 0 1 2 --out results/smoke/ablations.json
    python -m sd_bench.toy.ablations --seeds 0 --work runs/abl &   # split seeds over processes, then
    python -m sd_bench.toy.ablations --seeds 0 1 2 --work runs/abl # rerun: finished runs are reused

Every condition starts from the committed toy base and runs `sd-bench train` in-process (the on-policy
settings of sd_bench/reproduce/smoke.py: 4 prompts x 8 rollouts, one update per step, SDPO / GRPO lr from
`smoke.ONPOLICY_LR`), for STEPS steps; then it is evaluated with the standalone experiment's evaluation
(sd_bench/toy/experiment.py `eval_both`: 256 ID + 256 OOD problems x 2 samples at temperature 1.0; accuracy
of the last `A:`, waits per response, length in tokens).

Departures from smoke.py, to test the paper's actual loss: SD uses the paper's generalized JSD, alpha 0.5,
over the student's top-k + one tail bucket with k = TOP_K (8 of the toy's 23 tokens; the paper's k = 100 of
~150k) instead of the full vocabulary. Conditions (CONDITIONS): base (no training); GRPO; SD with teacher
context = clean solution / answer / none / a successful sibling rollout (the paper's c = s); SD(solution)
with an EMA teacher (rate 0.05, the paper's ablation); SD(solution) + the remedy `loss.exclude_markers`
(marker tokens left out of the distillation loss); and the narrow-coverage pair, SD(solution) and GRPO on
the 8 problems of `toy_train_8` (training score = 16 samples on each of the 8).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

STEPS = 60
TOP_K = 8
SD_LR = None  # None: smoke.ONPOLICY_LR["sdpo"]
# name -> (label, recipe, data set, extra overrides)
CONDITIONS: dict[str, tuple[str, str | None, str, tuple[str, ...]]] = {
    "base": ("base (no training)", None, "", ()),
    "grpo": ("GRPO", "grpo", "toy_train_broad", ()),
    "sd_solution": (
        "SD, c = clean solution",
        "sdpo",
        "toy_train_broad",
        ("teacher.context=reference_solution",),
    ),
    "sd_answer": ("SD, c = answer", "sdpo", "toy_train_broad", ("teacher.context=answer",)),
    "sd_none": ("SD, c = none", "sdpo", "toy_train_broad", ("teacher.context=none",)),
    "sd_solution_ema": (
        "SD(solution), EMA teacher 0.05",
        "sdpo",
        "toy_train_broad",
        ("teacher.context=reference_solution", "teacher.mode=ema", "teacher.ema_rate=0.05"),
    ),
    "sd_sibling": ("SD, c = successful sibling", "sdpo", "toy_train_broad", ("teacher.context=sibling",)),
    "sd_solution_remedy": (
        "SD(solution) + markers out of the loss",
        "sdpo",
        "toy_train_broad",
        ("teacher.context=reference_solution", "loss.exclude_markers=true"),
    ),
    "sd_solution_remedy2": (
        "SD(solution) + live-hedge positions out of the loss",
        "sdpo",
        "toy_train_broad",
        (
            "teacher.context=reference_solution",
            "loss.exclude_markers=true",
            "loss.marker_mass_threshold=0.05",
        ),
    ),
    "sd_solution_D8": (
        "SD(solution), 8 problems",
        "sdpo",
        "toy_train_8",
        ("teacher.context=reference_solution",),
    ),
    "grpo_D8": ("GRPO, 8 problems", "grpo", "toy_train_8", ()),
}
COLUMNS = [  # key, label, metric kind (sd-bench check's tolerance), where in the evaluation
    ("id_acc", "ID acc", "acc", ("id", "acc")),
    ("ood_acc", "OOD acc", "acc", ("ood", "acc")),
    ("id_waits", "waits/resp (ID)", "epistemic_count", ("id", "waits")),
    ("ood_waits", "waits/resp (OOD)", "epistemic_count", ("ood", "waits")),
    ("id_length", "length (ID)", "response_tokens", ("id", "length")),
    ("train8_acc", "acc, 8 train problems", "acc", ("train8", "acc")),
]


def train_overrides(name: str, seed: int, steps: int, base: Path) -> list[str]:
    from sd_bench.reproduce import smoke

    _, recipe, data, extra = CONDITIONS[name]
    lr = smoke.ONPOLICY_LR["grpo"] if recipe == "grpo" else (SD_LR or smoke.ONPOLICY_LR["sdpo"])
    return [
        f"model.path={base}",
        f"data.name={data}",
        f"run.seed={seed}",
        f"run.max_steps={steps}",
        f"run.save_every={steps}",
        f"optim.lr={lr}",
        *smoke.ONPOLICY_OVERRIDES,
        f"loss.top_k={TOP_K}",
        *extra,
    ]


def train(name: str, seed: int, steps: int, base: Path, out: Path) -> Path:
    """`sd-bench train <recipe> --scale smoke --output OUT <overrides>` in-process; returns final/."""
    from sd_bench.train import cli as train_cli

    parser = argparse.ArgumentParser(prog="sd-bench train")
    train_cli.add_arguments(parser)
    args = [
        "--scale",
        "smoke",
        "--output",
        str(out),
        CONDITIONS[name][1],
        *train_overrides(name, seed, steps, base),
    ]
    if train_cli.run(parser.parse_args(args)):
        raise RuntimeError(f"sd-bench train {' '.join(args)} failed")
    return out / "final"


def run_one(name: str, seed: int, steps: int, base: Path, work: Path) -> dict:
    """Train (unless base) and evaluate one condition for one seed; cached as work/<name>-s<seed>.json."""
    import torch

    from sd_bench.toy import experiment, world

    cached = work / f"{name}-s{seed}-{steps}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    torch.set_num_threads(1)
    row: dict = {"condition": name, "seed": seed, "steps": steps}
    model_dir = base
    if CONDITIONS[name][1] is not None:
        t0 = time.monotonic()
        model_dir = train(name, seed, steps, base, work / f"run-{name}-s{seed}")
        row["train_s"] = round(time.monotonic() - t0, 1)
        metrics = [json.loads(x) for x in (model_dir.parent / "metrics.jsonl").read_text().splitlines() if x]
        row["step_s"] = round(statistics.mean(m["step_seconds"] for m in metrics), 3)
        row["curve"] = [
            {k: m[k] for k in ("step", "score", "response_tokens", "epistemic_count", "loss")}
            for m in metrics
        ]
    tok = experiment.load_tokenizer(model_dir)
    model = experiment.load_model(model_dir).eval()
    t0 = time.monotonic()
    row.update(experiment.eval_both(model, tok, 1000 * seed))
    row["train8"] = experiment.evaluate(
        model, tok, world.coverage_set(8, seed=0), experiment.MAX_NEW_ID, 1000 * seed + 2, samples=16
    ).__dict__
    row["eval_s"] = round(time.monotonic() - t0, 1)
    work.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    tmp.write_text(json.dumps(row))
    tmp.replace(cached)
    return row


def _value(row: dict, where: tuple[str, ...]):
    cur = row
    for part in where:
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def aggregate(rows: list[dict], steps: int) -> dict:
    """A `sd-bench/table/v1` file: per condition the mean over seeds (metrics) and min / max / per seed."""
    from sd_bench import provenance

    conditions = {}
    for name, (label, *_rest) in CONDITIONS.items():
        mine = sorted((r for r in rows if r["condition"] == name), key=lambda r: r["seed"])
        if not mine:
            continue
        cond = {
            "label": label,
            "metrics": {},
            "min": {},
            "max": {},
            "per_seed": {},
            "stats": {},
            "seeds": [r["seed"] for r in mine],
        }
        for key, _, kind, where in COLUMNS:
            vals = [v for r in mine if (v := _value(r, where)) is not None]
            if not vals:
                continue
            cond["metrics"][key] = round(statistics.mean(vals), 4)
            cond["min"][key], cond["max"][key] = round(min(vals), 4), round(max(vals), 4)
            cond["per_seed"][key] = [round(v, 4) for v in vals]
            n = 8 if key == "train8_acc" else 256
            cond["stats"][key] = {"metric": kind, "n_problems": n, "k": 16 if key == "train8_acc" else 2}
        if any("train_s" in r for r in mine):  # timing, not a metric: `sd-bench check` must not compare it
            cond["train_s"] = [r.get("train_s") for r in mine]
        conditions[name] = cond
    table = {
        "schema": "sd-bench/table/v1",
        "table": "ablations",
        "scale": "smoke",
        "title": f"Toy world ablations through sd-bench train ({steps} steps, seeds "
        f"{sorted({r['seed'] for r in rows})})",
        "columns": [
            {"key": k, "label": lab, "metric": kind, "scale": 1.0, "digits": 2} for k, lab, kind, _ in COLUMNS
        ],
        "conditions": conditions,
        "settings": {
            "steps": steps,
            "top_k": TOP_K,
            "train_overrides": train_overrides("sd_solution", 0, steps, Path("sd_bench/toy/base")),
            "eval": "sd_bench.toy.experiment.eval_both (256 ID + 256 OOD x 2 samples, T = 1.0)",
        },
    }
    table["verdicts"] = verdicts(conditions)
    table["provenance"] = provenance.stamp(
        {}, model="sd_bench/toy/base", data="sd_bench.toy", seed=sorted({r["seed"] for r in rows})
    ).get("provenance", {})
    return table


def verdicts(c: dict) -> dict:
    """The effect (issue 5's margins, on the seed means) and the remedy (closer to base than SD(solution))."""
    out = {}
    if {"base", "sd_solution"} <= c.keys():
        b, s = c["base"]["metrics"], c["sd_solution"]["metrics"]
        out["effect_holds"] = bool(
            s["id_waits"] < 0.2 * b["id_waits"]
            and s["id_length"] < 0.5 * b["id_length"]
            and s["ood_acc"] < b["ood_acc"] - 0.1
        )
        for key, verdict in (
            ("sd_solution_remedy", "remedy_holds"),
            ("sd_solution_remedy2", "remedy2_holds"),
        ):
            if key in c:
                r = c[key]["metrics"]
                out[verdict] = bool(
                    abs(r["id_waits"] - b["id_waits"]) < abs(s["id_waits"] - b["id_waits"])
                    and abs(r["ood_acc"] - b["ood_acc"]) < abs(s["ood_acc"] - b["ood_acc"])
                )
    return out


def markdown(table: dict) -> str:
    cols = table["columns"]
    lines = [
        f"# {table['title']}",
        "",
        "Mean over seeds, min-max in brackets. " + table["settings"]["eval"] + ".",
        "",
        "| condition | " + " | ".join(c["label"] for c in cols) + " | train s/run |",
        "|---|" + "---|" * (len(cols) + 1),
    ]
    for cond in table["conditions"].values():
        cells = []
        for c in cols:
            k = c["key"]
            if k not in cond["metrics"]:
                cells.append("")
            else:
                cells.append(f"{cond['metrics'][k]:.2f} ({cond['min'][k]:.2f}-{cond['max'][k]:.2f})")
        secs = cond.get("train_s")
        cells.append(f"{min(secs):.0f}-{max(secs):.0f}" if secs else "")
        lines.append(f"| {cond['label']} | " + " | ".join(cells) + " |")
    v = table["verdicts"]
    lines += [
        "",
        (
            "- effect holds (SD(solution) waits < 0.2 x base, length < 0.5 x base, OOD < base - 0.1, "
            f"on the means): **{v.get('effect_holds')}**"
        ),
        (
            "- remedy holds (`loss.exclude_markers`: waits and OOD accuracy closer to base than "
            f"SD(solution)'s, on the means): **{v.get('remedy_holds')}**"
        ),
        (
            "- remedy 2 holds (`loss.exclude_markers` + `loss.marker_mass_threshold=0.05`, same test): "
            f"**{v.get('remedy2_holds')}**"
        ),
        (
            "- train s/run: wall seconds of `sd-bench train` with up to 6 runs sharing 2 CPU cores (not a "
            "speed measurement; see sd_bench/toy/README.md)"
        ),
        "",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sd_bench.toy.ablations", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    parser.add_argument(
        "--base", type=Path, default=None, help="toy base folder (default: the committed one)"
    )
    parser.add_argument("--work", type=Path, default=None, help="run folders and per-run JSON (reused)")
    parser.add_argument(
        "--out", type=Path, default=None, help="write the table JSON here (and .md beside it)"
    )
    parser.add_argument(
        "--rules",
        type=Path,
        default=None,
        help="write the guards that held on every seed as `sd-bench check` rules here",
    )
    args = parser.parse_args(argv)
    from sd_bench import tables
    from sd_bench.toy import BASE_DIR

    base = args.base or Path(BASE_DIR)
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="sd-ablations-")
    work = args.work or Path(tmp.name)
    rows = []
    for seed in args.seeds:
        for name in args.conditions:
            row = run_one(name, seed, args.steps, base, work)
            rows.append(row)
            print(
                f"seed {seed} {name}: ID {row['id']['acc']:.3f} OOD {row['ood']['acc']:.3f} waits "
                f"{row['id']['waits']:.2f} len {row['id']['length']:.1f} train_s {row.get('train_s')}",
                file=sys.stderr,
                flush=True,
            )
    if args.out:
        table = aggregate(rows, args.steps)
        tables.write_text_atomic(args.out, json.dumps(table, indent=1) + "\n")
        report = guard_report(table)
        text = markdown(table) + guards_markdown(report)
        tables.write_text_atomic(args.out.with_suffix(".md"), text)
        print(text)
        if args.rules:
            held = {g["guard"] for g in report} - {g["guard"] for g in report if not g["holds"]}
            rules = {
                "about": f"issue 5's guards on {args.out.name}, one rule per seed (lhs OP factor * rhs + "
                "offset); written by `python -m sd_bench.toy.ablations --rules`; only guards that "
                "held on every seed are kept (the others are listed in the .md)",
                "rules": [g["rule"] for g in report if g["guard"] in held],
            }
            tables.write_text_atomic(args.rules, json.dumps(rules, indent=1) + "\n")
    return 0


def guards_markdown(report: list[dict]) -> str:
    lines = [
        "## Issue 5's guards, per seed",
        "",
        "| guard | seed | value | bound | slack | holds |",
        "|---|---|---|---|---|---|",
    ]
    for g in report:
        lines.append(
            f"| {g['guard'].replace('|', chr(92) + '|')} | {g['seed']} | {g['lhs']:.3f} | {g['bound']:.3f} | {g['slack']:+.3f} | "
            f"{'yes' if g['holds'] else '**no**'} |"
        )
    return "\n".join(lines) + "\n"


# ---- guards: issue 5's margins, per seed, as `sd-bench check` rules ------------------------------------

# name, lhs (condition, metric), op, rhs (condition, metric), factor, offset: lhs OP factor * rhs + offset
GUARDS: list[tuple[str, tuple[str, str], str, tuple[str, str], float, float]] = [
    ("SD(solution) waits < 0.2 x base", ("sd_solution", "id_waits"), "<", ("base", "id_waits"), 0.2, 0.0),
    ("SD(solution) length < 0.5 x base", ("sd_solution", "id_length"), "<", ("base", "id_length"), 0.5, 0.0),
    ("SD(solution) OOD acc < base - 0.1", ("sd_solution", "ood_acc"), "<", ("base", "ood_acc"), 1.0, -0.1),
    ("GRPO waits > base", ("grpo", "id_waits"), ">", ("base", "id_waits"), 1.0, 0.0),
    (
        "GRPO OOD acc > SD(solution) OOD + 0.15",
        ("grpo", "ood_acc"),
        ">",
        ("sd_solution", "ood_acc"),
        1.0,
        0.15,
    ),
    (
        "SD(answer) waits > SD(solution)",
        ("sd_answer", "id_waits"),
        ">",
        ("sd_solution", "id_waits"),
        1.0,
        0.0,
    ),
    ("SD(answer) waits < base", ("sd_answer", "id_waits"), "<", ("base", "id_waits"), 1.0, 0.0),
    (
        "|D|=8: SD training score > base + 0.3",
        ("sd_solution_D8", "train8_acc"),
        ">",
        ("base", "train8_acc"),
        1.0,
        0.3,
    ),
    (
        "|D|=8: SD held-out ID < base - 0.15",
        ("sd_solution_D8", "id_acc"),
        "<",
        ("base", "id_acc"),
        1.0,
        -0.15,
    ),
]


def guard_report(table: dict) -> list[dict]:
    """Each guard on each seed: the two sides, the slack (positive = holds), and whether it holds."""
    import operator

    ops = {"<": operator.lt, ">": operator.gt}
    c = table["conditions"]
    out = []
    for name, (lc, lm), op, (rc, rm), factor, offset in GUARDS:
        if lc not in c or rc not in c:
            continue
        for i, seed in enumerate(c[lc]["seeds"]):
            lhs, rhs = c[lc]["per_seed"][lm][i], c[rc]["per_seed"][rm][i]
            bound = factor * rhs + offset
            out.append(
                {
                    "guard": name,
                    "seed": seed,
                    "lhs": lhs,
                    "bound": round(bound, 4),
                    "slack": round(bound - lhs if op == "<" else lhs - bound, 4),
                    "holds": ops[op](lhs, bound),
                    "rule": {
                        "name": f"{name} (seed {seed})",
                        "lhs": f"conditions.{lc}.per_seed.{lm}.{i}",
                        "op": op,
                        "rhs": f"conditions.{rc}.per_seed.{rm}.{i}",
                        "factor": factor,
                        "offset": offset,
                    },
                }
            )
    return out


if __name__ == "__main__":
    raise SystemExit(main())
