"""A standalone measurement of the paper's effect in the toy world (plain torch, no sd-bench trainer).

    sd-bench toy experiment [--base sd_bench/toy/base] [--steps 60] [--seeds 0 1 2] [--out result.json]

Why standalone: it checks that the committed base *has* the effect before the real trainer, lm-eval tasks
and `reproduce` are pointed at it, and it is the yardstick they should match. It follows issue 5's
prototype recipe:

- evaluation: 256 ID (n in {3,4}) and 256 OOD (n in {5,6}) problems, 2 samples each at temperature 1.0;
  accuracy of the LAST `A:`, waits per response (the paper's E(y) on the decoded text), response length in
  tokens (EOS excluded);
- post-training from the base, 60 steps, 64 rollouts per step (8 problems x 8) at temperature 1.0, one
  AdamW update per batch at lr 1e-4 (the paper's wd 0.01 and clip 1.0; no warm-up: departure, 60 steps);
- SD: teacher = the frozen base with a context c in its prompt (`sdpo_teacher_prompt`, rendered by the
  toy chat template); loss = full-vocabulary reverse KL per response token, token mean:
      L_SD = 1/|T| sum_t sum_v p_S(v | x, y_<t) [log p_S(v | x, y_<t) - log p_T(v | c, x, y_<t)]
  (the paper's SDPO uses JSD alpha 0.5 over top-100 + tail with a sibling rollout as c: departure);
- GRPO: mean-centred rewards within each group of 8, no std, on-policy (ratio 1, so no clipping):
      L_GRPO = -1/|T| sum_i sum_t (r_i - mean_group(r)) log p_S(y_i,t | x, y_i,<t).
"""

from __future__ import annotations

import inspect
import json
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from sd_bench import atomic
from sd_bench.markers import epistemic_count
from sd_bench.prompts import render, sdpo_teacher_prompt
from sd_bench.toy import BASE_DIR, world

LR, WEIGHT_DECAY, CLIP = 1e-4, 0.01, 1.0
PROMPTS_PER_STEP, ROLLOUTS_PER_PROMPT = 8, 8  # 64 rollouts per step (issue 5)
TEMPERATURE = 1.0
EVAL_SAMPLES = 2  # per problem: 512 evaluations per split
MAX_NEW_ID, MAX_NEW_OOD = 96, 160  # longest clean responses: ~45 (n=4) and ~75 (n=6) tokens

# run name -> (method, teacher context); the context names follow sd_bench.train.teacher_context
RUNS: dict[str, tuple[str, str | None]] = {
    "sd_solution": ("sd", "solution"),
    "sd_answer": ("sd", "answer"),
    "sd_none": ("sd", "none"),
    "grpo": ("grpo", None),
}


# ---- sampling -------------------------------------------------------------------------------------------


def encode_prompts(tok, texts: list[str]) -> list[list[int]]:
    return [tok.encode(t, add_special_tokens=False) for t in texts]


def sample(
    model, tok, prompts: list[list[int]], max_new: int, temperature: float, generator
) -> list[list[int]]:
    """Batched ancestral sampling with a KV cache; returns each response's ids, EOS included if produced.

    Left padding with explicit position ids, so every prompt's last token sits at the same column. Finished
    rows are dropped from the batch and the cache at once: most toy responses stop after a handful of
    tokens (a gut answer), so compaction roughly halves the work on CPU.
    """
    import torch

    B = len(prompts)
    width = max(len(p) for p in prompts)
    ids_B_T = torch.full((B, width), tok.pad_token_id, dtype=torch.long)
    mask_B_T = torch.zeros((B, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids_B_T[i, width - len(p) :] = torch.tensor(p)
        mask_B_T[i, width - len(p) :] = 1
    pos_B_T = (mask_B_T.cumsum(1) - 1).clamp(min=0)
    out: list[list[int]] = [[] for _ in range(B)]
    rows = torch.arange(B)  # original index of each active row
    cache, step_ids, step_pos = None, ids_B_T, pos_B_T
    # transformers >= 5.2x names the KV cache `cache`; older releases `past_key_values`
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.no_grad():
        for _ in range(max_new):
            res = model(
                input_ids=step_ids,
                attention_mask=mask_B_T,
                position_ids=step_pos,
                use_cache=True,
                **{cache_kw: cache},
            )
            cache = getattr(res, "cache", None) or res.past_key_values
            probs_b_V = torch.softmax(res.logits[:, -1].float() / temperature, dim=-1)
            nxt_b = torch.multinomial(probs_b_V, 1, generator=generator).squeeze(1)
            for i, t in zip(rows.tolist(), nxt_b.tolist()):
                out[i].append(t)
            keep_b = nxt_b != tok.eos_token_id
            if not bool(keep_b.any()):
                break
            step_pos = step_pos[:, -1:] + 1
            mask_B_T = torch.cat([mask_B_T, torch.ones((len(rows), 1), dtype=torch.long)], dim=1)
            step_ids = nxt_b[:, None]
            if not bool(keep_b.all()):
                keep = torch.nonzero(keep_b).flatten()
                cache.reorder_cache(keep)  # index_select on every layer's keys and values
                rows, step_ids, step_pos, mask_B_T = (
                    rows[keep],
                    step_ids[keep],
                    step_pos[keep],
                    mask_B_T[keep],
                )
    return out


def decode_response(tok, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=True)


def response_length(tok, ids: list[int]) -> int:
    return len([i for i in ids if i != tok.eos_token_id])


# ---- evaluation -----------------------------------------------------------------------------------------


@dataclass
class Scores:
    acc: float
    waits: float
    length: float
    wait_rate: float  # fraction of responses with at least one wait
    acc_after_wait: float | None  # accuracy of responses that waited: the hedge works when this is high
    acc_without_wait: float | None  # i.e. the gut answer's accuracy


def score(tok, problems, responses: list[list[int]]) -> Scores:
    texts = [decode_response(tok, r) for r in responses]
    correct = [world.grade_toy(t, p.answer).correct for t, p in zip(texts, problems)]
    waits = [epistemic_count(t) for t in texts]
    waited = [c for c, w in zip(correct, waits) if w > 0]
    unwaited = [c for c, w in zip(correct, waits) if w == 0]
    return Scores(
        acc=statistics.mean(correct),
        waits=statistics.mean(waits),
        length=statistics.mean(response_length(tok, r) for r in responses),
        wait_rate=len(waited) / len(correct),
        acc_after_wait=statistics.mean(waited) if waited else None,
        acc_without_wait=statistics.mean(unwaited) if unwaited else None,
    )


def evaluate(model, tok, problems, max_new: int, seed: int, samples: int = EVAL_SAMPLES, chunk: int = 256):
    import torch

    model.eval()
    gen = torch.Generator().manual_seed(seed)
    expanded = [p for p in problems for _ in range(samples)]
    prompts = encode_prompts(tok, [render(tok, p.prompt) for p in expanded])
    responses = []
    for i in range(0, len(prompts), chunk):
        responses += sample(model, tok, prompts[i : i + chunk], max_new, TEMPERATURE, gen)
    return score(tok, expanded, responses)


# ---- post-training --------------------------------------------------------------------------------------


def teacher_user_turn(problem, context: str) -> str:
    """The teacher's user turn for a context: none (= the student's), answer, or the clean solution."""
    if context == "none":
        return problem.prompt
    if context == "answer":
        return sdpo_teacher_prompt(problem.prompt, problem.answer)
    if context == "solution":
        return sdpo_teacher_prompt(problem.prompt, problem.solution)
    raise ValueError(f"unknown teacher context {context!r}: use none, answer or solution")


def response_logprobs(model, prompts: list[list[int]], responses: list[list[int]], pad_id: int):
    """Log-softmax over the vocabulary at each response position: (B, T_resp, V) and its mask (B, T_resp).

    Sequences are right-padded prompt + response; the logits at position len(prompt) - 1 + t predict
    response token t.
    """
    import torch

    B = len(prompts)
    width = max(len(p) + len(r) for p, r in zip(prompts, responses))
    t_resp = max(len(r) for r in responses)
    ids_B_T = torch.full((B, width), pad_id, dtype=torch.long)
    mask_B_T = torch.zeros((B, width), dtype=torch.long)
    index_B_R = torch.zeros((B, t_resp), dtype=torch.long)
    rmask_B_R = torch.zeros((B, t_resp), dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        seq = p + r
        ids_B_T[i, : len(seq)] = torch.tensor(seq)
        mask_B_T[i, : len(seq)] = 1
        index_B_R[i, : len(r)] = torch.arange(len(p) - 1, len(p) - 1 + len(r))
        rmask_B_R[i, : len(r)] = True
    logits_B_T_V = model(input_ids=ids_B_T, attention_mask=mask_B_T).logits.float()
    V = logits_B_T_V.shape[-1]
    gathered = torch.gather(logits_B_T_V, 1, index_B_R[:, :, None].expand(B, t_resp, V))
    return torch.log_softmax(gathered, dim=-1), rmask_B_R


def reverse_kl_loss(student_logp_B_R_V, teacher_logp_B_R_V, mask_B_R):
    """Token mean of KL(p_S || p_T) over the full vocabulary (see module docstring)."""
    kl_B_R = (student_logp_B_R_V.exp() * (student_logp_B_R_V - teacher_logp_B_R_V)).sum(-1)
    return (kl_B_R * mask_B_R).sum() / mask_B_R.sum()


def grpo_loss(student_logp_B_R_V, responses_B_R, mask_B_R, rewards_B, group: int):
    """Token mean of -(r - mean_group(r)) log p(y_t): on-policy GRPO with mean-centred advantages."""
    rewards_G_K = rewards_B.view(-1, group)
    adv_B = (rewards_G_K - rewards_G_K.mean(1, keepdim=True)).reshape(-1)
    logp_B_R = student_logp_B_R_V.gather(-1, responses_B_R[:, :, None]).squeeze(-1)
    return -(adv_B[:, None] * logp_B_R * mask_B_R).sum() / mask_B_R.sum()


def post_train(
    base_dir,
    method: str,
    context: str | None,
    train_set,
    steps: int,
    seed: int,
    eval_fn=None,
    log=print,
    max_new: int = MAX_NEW_ID,
):
    """Train a copy of the base for `steps` on-policy steps; returns (model, per-step records)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    student = AutoModelForCausalLM.from_pretrained(base_dir)
    teacher = AutoModelForCausalLM.from_pretrained(base_dir).eval() if method == "sd" else None
    tok = load_tokenizer(base_dir)
    opt = torch.optim.AdamW(student.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    rng = random.Random(f"toy-experiment/{method}/{context}/{seed}")
    gen = torch.Generator().manual_seed(seed)
    records, t0 = [], time.time()
    for step in range(steps):
        chosen = [train_set[rng.randrange(len(train_set))] for _ in range(PROMPTS_PER_STEP)]
        batch = [p for p in chosen for _ in range(ROLLOUTS_PER_PROMPT)]
        prompts = encode_prompts(tok, [render(tok, p.prompt) for p in batch])
        student.eval()
        responses = sample(student, tok, prompts, max_new, TEMPERATURE, gen)
        responses = [r if r else [tok.eos_token_id] for r in responses]
        texts = [decode_response(tok, r) for r in responses]
        rewards = [float(world.grade_toy(t, p.answer).correct) for t, p in zip(texts, batch)]
        student.train()
        s_logp, mask = response_logprobs(student, prompts, responses, tok.pad_token_id)
        if method == "sd":
            t_prompts = encode_prompts(tok, [render(tok, teacher_user_turn(p, context)) for p in batch])
            with torch.no_grad():
                t_logp, _ = response_logprobs(teacher, t_prompts, responses, tok.pad_token_id)
            loss = reverse_kl_loss(s_logp, t_logp, mask)
        elif method == "grpo":
            resp_B_R = torch.zeros(mask.shape, dtype=torch.long)
            for i, r in enumerate(responses):
                resp_B_R[i, : len(r)] = torch.tensor(r)
            loss = grpo_loss(s_logp, resp_B_R, mask, torch.tensor(rewards), ROLLOUTS_PER_PROMPT)
        else:
            raise ValueError(f"unknown method {method!r}: use sd or grpo")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), CLIP)
        opt.step()
        records.append(
            {
                "step": step + 1,
                "loss": round(loss.item(), 5),
                "train_reward": statistics.mean(rewards),
                "waits": statistics.mean(epistemic_count(t) for t in texts),
                "length": statistics.mean(response_length(tok, r) for r in responses),
                "elapsed_s": round(time.time() - t0, 2),
            }
        )
        if eval_fn is not None:
            records[-1].update(eval_fn(student, step + 1) or {})
    log(
        f"  {method}/{context}: {steps} steps in {time.time() - t0:.1f}s, last train reward "
        f"{records[-1]['train_reward']:.2f}"
    )
    return student, records


def load_tokenizer(base_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_dir)


def load_model(base_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base_dir)


# ---- the experiment -------------------------------------------------------------------------------------


def eval_both(model, tok, seed: int) -> dict:
    return {
        "id": evaluate(model, tok, world.toy_problems("id"), MAX_NEW_ID, seed).__dict__,
        "ood": evaluate(model, tok, world.toy_problems("ood"), MAX_NEW_OOD, seed + 1).__dict__,
    }


ALL_RUNS = ("base", *RUNS, "sd_solution_D8", "grpo_D8")


def run_experiment(base_dir=BASE_DIR, steps: int = 60, seeds=(0,), runs=None, log=print) -> dict:
    """Base vs SD (each context) vs GRPO on broad coverage, and SD vs GRPO on |D| = 8; per seed.

    `runs` picks from ALL_RUNS (default: all), so the runs can be split over processes and the result
    files merged (`merge_results`). Every run starts from the base; evaluation seeds depend only on the
    seed, so the same base evaluation is reproduced in any process.
    """
    import torch

    tok = load_tokenizer(base_dir)
    runs = list(ALL_RUNS) if runs is None else list(runs)
    unknown = [r for r in runs if r not in ALL_RUNS]
    if unknown:
        raise ValueError(f"unknown run {unknown[0]!r}: choose from {', '.join(ALL_RUNS)}")
    result = {
        "base_dir": str(base_dir),
        "steps": steps,
        "seeds": list(seeds),
        "rows": [],
        "settings": {
            "lr": LR,
            "rollouts": PROMPTS_PER_STEP * ROLLOUTS_PER_PROMPT,
            "temperature": TEMPERATURE,
            "eval_samples": EVAL_SAMPLES,
            "threads": torch.get_num_threads(),
        },
    }
    t0 = time.time()
    eight = world.coverage_set(8, seed=0)
    for seed in seeds:
        broad = world.coverage_set("broad", seed=seed)
        for name in runs:
            t = time.time()
            row = {"run": name, "seed": seed}
            if name == "base":
                model = load_model(base_dir).eval()
            else:
                method, context = RUNS[name.removesuffix("_D8")]
                train_set = eight if name.endswith("_D8") else broad
                model, row["curve"] = post_train(base_dir, method, context, train_set, steps, seed, log=log)
                row["train_s"] = round(time.time() - t, 1)
            row.update(eval_both(model, tok, 1000 * seed))
            row["train8"] = evaluate(model, tok, eight, MAX_NEW_ID, 1000 * seed + 2, samples=16).__dict__
            row["wall_s"] = round(time.time() - t, 1)
            result["rows"].append(row)
            log(f"seed {seed} {name}: {_fmt(row)} train8 {row['train8']['acc']:.3f} ({row['wall_s']:.0f}s)")
    result["wall_s"] = round(time.time() - t0, 1)
    return result


def merge_results(paths) -> dict:
    """Concatenate the rows of several result files (runs split over processes)."""
    results = [json.loads(Path(p).read_text()) for p in paths]
    merged = dict(results[0])
    merged["rows"] = [row for r in results for row in r["rows"]]
    merged["seeds"] = sorted({row["seed"] for row in merged["rows"]})
    return merged


def _fmt(row) -> str:
    i, o = row["id"], row["ood"]

    def f(x):
        return "-" if x is None else f"{x:.3f}"

    return (
        f"ID acc {i['acc']:.3f} OOD acc {o['acc']:.3f} waits {i['waits']:.2f} len {i['length']:.1f} "
        f"| ID acc after a wait {f(i['acc_after_wait'])}, without {f(i['acc_without_wait'])}"
    )


def markdown_table(result: dict) -> str:
    """Per run, the range over seeds (min-max) of each column, as in issue 5's prototype table."""
    lines = [
        "| run (from the base) | ID acc | OOD acc | waits/response (ID) | length (ID) | acc, 8 train problems |",
        "|---|---|---|---|---|---|",
    ]
    order = []
    for r in result["rows"]:
        if r["run"] not in order:
            order.append(r["run"])

    def rng_of(values):
        values = [v for v in values if v is not None]
        if not values:
            return "-"
        lo, hi = min(values), max(values)
        return f"{lo:.2f}" if abs(hi - lo) < 5e-3 else f"{lo:.2f}-{hi:.2f}"

    for name in order:
        rows = [r for r in result["rows"] if r["run"] == name]
        lines.append(
            "| "
            + " | ".join(
                [
                    name,
                    rng_of([r["id"]["acc"] for r in rows]),
                    rng_of([r["ood"]["acc"] for r in rows]),
                    rng_of([r["id"]["waits"] for r in rows]),
                    rng_of([r["id"]["length"] for r in rows]),
                    rng_of([r.get("train8", {}).get("acc") for r in rows]),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def main(args) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    result = run_experiment(args.base, steps=args.steps, seeds=args.seeds, runs=args.runs)
    print(markdown_table(result))
    if args.out:
        atomic.write_json(args.out, result, indent=1)
    return 0
