"""The paper's training rules (docs/PARITY.md "Training: loss, reward, teacher, schedule"), each against a
reference computation written from the rule's definition in the paper's code (verl at beanie00/
self-distillation-analysis 5c51051): loss aggregation over a mini-batch with masked samples, the rollout
correction min(pi_old / pi_rollout, 2) and GRPO's dual clip, the EMA teacher once per training step, one
optimizer step per mini-batch (also one without any loss), and the warning of a run that cannot learn."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from sd_bench.train import losses as L

torch.set_num_threads(1)


def _verl_agg_loss_token_mean(loss_mat: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """verl core_algos.py `agg_loss(loss_agg_mode="token-mean")` as the SDPO loss calls it:
    masked_sum / loss_mask.sum().clamp(min=1)."""
    return (loss_mat * loss_mask).sum() / loss_mask.sum().clamp(min=1.0)


def _verl_mini_batch_loss(per_token: list[torch.Tensor], sd_mask: list[float], world: int = 1) -> float:
    """verl dp_actor.py `update_policy` with ppo_micro_batch_size_per_gpu = 1: each sequence is a micro-batch,
    its loss agg_loss(token-mean) x loss_scale_factor = 1 / gradient_accumulation (the rank's mini-batch
    sequence count); each rank sums its micro-batch losses, FSDP averages the gradients over ranks."""
    per_rank = [list(range(r, len(per_token), world)) for r in range(world)]
    total = 0.0
    for idx in per_rank:
        grad_accum = len(idx)
        rank_loss = sum(
            float(_verl_agg_loss_token_mean(per_token[i], torch.full_like(per_token[i], sd_mask[i])))
            / grad_accum
            for i in idx
        )
        total += rank_loss / world  # FSDP: mean of the ranks' gradients
    return total


# ------------------------------------------------------------------------------ rule 2: aggregation

# a mini-batch of 4 rollouts of lengths 2, 3, 1, 2; rollout 2 has no successful sibling (no loss)
LENGTHS = [2, 3, 1, 2]
PER_TOKEN = [
    torch.tensor([1.0, 3.0]),
    torch.tensor([2.0, 2.0, 5.0]),
    torch.tensor([7.0]),
    torch.tensor([4.0, 0.0]),
]
HAS_LOSS = [1.0, 1.0, 0.0, 1.0]


def test_paper_aggregation_is_the_mean_over_all_rollouts_of_sequence_token_means():
    # by hand: (mean(1, 3) + mean(2, 2, 5) + 0 + mean(4, 0)) / 4 = (2 + 3 + 0 + 2) / 4
    by_hand = (2.0 + 3.0 + 0.0 + 2.0) / 4
    assert _verl_mini_batch_loss(PER_TOKEN, HAS_LOSS) == pytest.approx(by_hand)
    assert _verl_mini_batch_loss(PER_TOKEN, HAS_LOSS, world=2) == pytest.approx(by_hand)  # 2 ranks = 1
    # sd-bench: the items are the 3 rollouts with a loss; B counts all 4
    kept = [i for i, h in enumerate(HAS_LOSS) if h]
    w = L.aggregation_weights(
        [LENGTHS[i] for i in kept], "seq_mean_token_mean", num_sequences=4, num_tokens=float("nan")
    )
    l_t = torch.cat([PER_TOKEN[i] for i in kept])
    assert float((w * l_t).sum()) == pytest.approx(by_hand)


def test_token_mean_option_is_one_mean_over_the_mini_batch_tokens():
    kept = [i for i, h in enumerate(HAS_LOSS) if h]
    tokens = sum(LENGTHS[i] for i in kept)  # 7: the tokens of the rollouts with a loss
    w = L.aggregation_weights([LENGTHS[i] for i in kept], "token_mean", num_sequences=4, num_tokens=tokens)
    l_t = torch.cat([PER_TOKEN[i] for i in kept])
    by_hand = (1 + 3 + 2 + 2 + 5 + 4 + 0) / 7
    assert float((w * l_t).sum()) == pytest.approx(by_hand)
    assert by_hand != pytest.approx((2.0 + 3.0 + 0.0 + 2.0) / 4)  # the two rules really differ here
    with pytest.raises(ValueError, match="aggregation"):
        L.aggregation_weights([2], "seq_mean", num_sequences=1, num_tokens=2)


def test_aggregation_reaches_the_sd_and_grpo_losses_and_splits_over_micro_batches():
    """The SD loss with the paper's weights equals the verl procedure on the per-token JSDs (full
    vocabulary, no IS), and the sum over micro-batches (gradient accumulation) equals the whole."""
    v = 11
    g = torch.Generator().manual_seed(0)
    s = torch.randn(sum(LENGTHS), v, generator=g) * 2
    t = torch.randn(sum(LENGTHS), v, generator=g) * 2
    ids = torch.randint(0, v, (sum(LENGTHS),), generator=g)
    ls, lt = s.log_softmax(-1), t.log_softmax(-1)
    m_log = (0.5 * ls.exp() + 0.5 * lt.exp()).log()
    jsd = 0.5 * (lt.exp() * (lt - m_log)).sum(-1) + 0.5 * (ls.exp() * (ls - m_log)).sum(-1)
    want = _verl_mini_batch_loss(list(jsd.split(LENGTHS)), HAS_LOSS)
    kept = [i for i, h in enumerate(HAS_LOSS) if h]
    rows = torch.cat([torch.arange(sum(LENGTHS[:i]), sum(LENGTHS[: i + 1])) for i in kept])
    lengths = [LENGTHS[i] for i in kept]
    w = L.aggregation_weights(lengths, "seq_mean_token_mean", num_sequences=4, num_tokens=0)
    kw = {"alpha": 0.5, "top_k": None, "is_clip": None}
    got, _ = L.sd_loss_from_logits(s[rows], t[rows], ids[rows], torch.ones(len(rows)), weight=w, **kw)
    assert got.item() == pytest.approx(want, rel=1e-5)
    first = lengths[0]  # micro-batch 1: the first sequence; micro-batch 2: the rest
    a, _ = L.sd_loss_from_logits(
        s[rows[:first]], t[rows[:first]], ids[rows[:first]], torch.ones(first), weight=w[:first], **kw
    )
    b, _ = L.sd_loss_from_logits(
        s[rows[first:]],
        t[rows[first:]],
        ids[rows[first:]],
        torch.ones(len(rows) - first),
        weight=w[first:],
        **kw,
    )
    assert (a + b).item() == pytest.approx(got.item(), rel=1e-6)
    # the chunked trainer entry point agrees
    hs, ws = torch.randn(len(rows), 5, generator=g), torch.randn(v, 5, generator=g)
    ht = torch.randn(len(rows), 5, generator=g)
    dense, _ = L.sd_loss_from_logits(hs @ ws.T, ht @ ws.T, ids[rows], torch.ones(len(rows)), weight=w, **kw)
    chunked, _ = L.sd_loss_from_hidden(
        hs, ws, ht, ws, ids[rows], torch.ones(len(rows)), weight=w, chunk_size=2, **kw
    )
    assert chunked.item() == pytest.approx(dense.item(), rel=1e-5)

    # GRPO at ratio 1: l_t = -A_i; every rollout takes part (zero advantage = zero loss, still counted)
    adv = [1.0, -0.5, 0.0, 0.25]
    want = _verl_mini_batch_loss([torch.full((n,), -a) for n, a in zip(LENGTHS, adv)], [1.0] * 4)
    assert want == pytest.approx((-1.0 + 0.5 + 0.0 - 0.25) / 4)
    w = L.aggregation_weights(LENGTHS, "seq_mean_token_mean", num_sequences=4, num_tokens=0)
    a_t = torch.cat([torch.full((n,), a) for n, a in zip(LENGTHS, adv)])
    got, _ = L.grpo_loss(torch.zeros(8), torch.zeros(8), a_t, torch.ones(8), weight=w)
    assert got.item() == pytest.approx(want)


def test_remedy_mask_drops_tokens_without_reweighting_the_rest():
    w = L.aggregation_weights([2, 3], "seq_mean_token_mean", num_sequences=2, num_tokens=0)
    l_t = torch.tensor([1.0, 3.0, 2.0, 2.0, 5.0])
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0])  # token 2 of sequence 2 is a marker
    got, _ = L.grpo_loss(torch.zeros(5), torch.zeros(5), -l_t, mask, weight=w)
    assert got.item() == pytest.approx(((1 + 3) / 2 + (2 + 5) / 3) / 2)  # |y_2| stays 3


def test_the_two_remedies_reach_the_loss_through_one_mask_function():
    """onpolicy.LossMask: m_t = 0 on marker tokens (exclude_markers) and where the policy's marker mass is
    >= the threshold (marker_mass_threshold), their product with both on; None when no remedy is on (and
    always for grpo: the remedies are SD remedies)."""
    from transformers import AutoTokenizer

    from sd_bench.toy import BASE_DIR
    from sd_bench.train.config import load_config
    from sd_bench.train.onpolicy import LossMask

    tok = AutoTokenizer.from_pretrained(BASE_DIR)
    ids = tok("A:7 wait A:7", add_special_tokens=False)["input_ids"]
    texts = [tok.decode([i]) for i in ids]
    marker_at = [k for k, x in enumerate(texts) if "w" in x.lower()]
    assert marker_at  # the response holds the marker token(s)

    def mask(*overrides, algorithm="sdpo", mass=None):
        cfg = load_config(algorithm, scale="smoke", overrides=list(overrides))
        return LossMask(cfg, tok, "cpu")(ids, mass)

    assert mask() is None and mask("loss.exclude_markers=true", algorithm="grpo") is None
    by_token = mask("loss.exclude_markers=true")
    assert [k for k, m in enumerate(by_token) if m == 0.0] == marker_at
    mass = torch.zeros(len(ids))
    mass[0] = 0.9  # a live hedge at position 0 only
    by_mass = mask("loss.marker_mass_threshold=0.5", mass=mass)
    assert by_mass == [0.0] + [1.0] * (len(ids) - 1)
    both = mask("loss.exclude_markers=true", "loss.marker_mass_threshold=0.5", mass=mass)
    assert both == [a * b for a, b in zip(by_token, by_mass)]


# ---------------------------------------------------------------------- rule 6: TIS and dual clip


def test_rollout_correction_is_min_ratio_2_per_token_and_detached():
    old = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0], requires_grad=True)
    rollout = torch.tensor([math.log(2.0), math.log(1 / 1.5), math.log(1 / 3.0), 0.0, 1000.0])
    w = L.rollout_correction_weights(old, rollout, 2.0)
    # pi_old / pi_rollout = 0.5, 1.5, 3 -> 2 (truncated above only), 1, exp(-20) (log-ratio clamp)
    torch.testing.assert_close(w, torch.tensor([0.5, 1.5, 2.0, 1.0, math.exp(-20.0)]))
    assert not w.requires_grad
    torch.testing.assert_close(L.rollout_correction_weights(old, rollout, None), torch.ones(5))


def test_rollout_correction_multiplies_each_tokens_loss():
    v = 9
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(3, v, generator=g), torch.randn(3, v, generator=g)
    ids = torch.randint(0, v, (3,), generator=g)
    tis = torch.tensor([0.5, 2.0, 1.25])
    kw = {"alpha": 0.5, "top_k": None, "is_clip": None}
    per_token = [
        L.sd_loss_from_logits(s[i : i + 1], t[i : i + 1], ids[i : i + 1], torch.ones(1), **kw)[0]
        for i in range(3)
    ]
    base = L.aggregation_weights([3], "seq_mean_token_mean", num_sequences=1, num_tokens=0)
    got, _ = L.sd_loss_from_logits(s, t, ids, torch.ones(3), weight=base * tis, **kw)
    want = sum(float(p) * float(r) for p, r in zip(per_token, tis)) / 3
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_grpo_dual_clip_caps_negative_advantage_tokens_at_3():
    ratio = torch.tensor([5.0, 2.0, 5.0, 0.5])
    adv = torch.tensor([-1.0, -1.0, 1.0, -2.0])
    logp = ratio.log().requires_grad_(True)
    loss, stats = L.grpo_loss(logp, torch.zeros(4), adv, torch.ones(4))
    # per token (verl compute_policy_loss_vanilla): l = max(-A r, -A clip(r, 0.8, 1.28)); A < 0: min(l, -A * 3)
    #   r 5, A -1 -> max(5, 1.28) = 5 -> min(5, 3) = 3 (dual clip, no gradient)
    #   r 2, A -1 -> 2 (below the cap) | r 5, A +1 -> -1.28 (clip-higher) | r 0.5, A -2 -> max(1, 1.6) = 1.6
    want = [3.0, 2.0, -1.28, 1.6]
    assert loss.item() == pytest.approx(sum(want) / 4, abs=1e-6)
    (grad,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(grad, torch.tensor([0.0, 2.0, 0.0, 0.0]) / 4)  # d(-A r)/dlog r = -A r
    assert stats["grpo/dual_clip_frac"] == pytest.approx(1 / 4)
    off, _ = L.grpo_loss(ratio.log(), torch.zeros(4), adv, torch.ones(4), clip_ratio_c=None)
    assert off.item() == pytest.approx((5.0 + 2.0 - 1.28 + 1.6) / 4, abs=1e-6)
    with pytest.raises(ValueError, match="clip_ratio_c"):
        L.grpo_loss(ratio.log(), torch.zeros(4), adv, torch.ones(4), clip_ratio_c=1.0)


# ----------------------------------------------- rules 5 and 7: EMA cadence and optimizer steps


def _trainer(tmp_path, *overrides):
    from sd_bench.train.config import load_config
    from sd_bench.train.onpolicy import setup

    cfg = load_config(
        "sdpo_ema",
        scale="smoke",
        overrides=["rollout.prompts_per_step=2", "optim.mini_batch_size=1", "optim.lr=1e-2", *overrides],
    )
    return setup(cfg, tmp_path, resume=False)


def _items(t, groups: list[int]):
    """Hand-made SDPO items (a response and a reference-solution teacher prompt) for prompt `groups`."""
    from sd_bench.prompts import render
    from sd_bench.train import teacher_context as tc
    from sd_bench.train.onpolicy import Item, old_logprobs
    from sd_bench.train.training_data import smoke_problems

    tok = t.tokenizer
    items = []
    for g in groups:
        problem = smoke_problems()[g]
        prompt = tok(render(tok, problem.prompt), add_special_tokens=False)["input_ids"]
        response = tok(f"<think>so</think> \\boxed{{{problem.answer}}}", add_special_tokens=False)[
            "input_ids"
        ]
        t_ids, _ = tc.teacher_prompt_ids(
            tok, problem.prompt, problem.solution, context="reference_solution", max_prompt_tokens=256
        )
        items.append(Item(prompt, response, [-1.0] * len(response), g, teacher_prompt_ids=t_ids))
    old_logprobs(t, items)
    return items


def _rollout(items):
    from sd_bench.train.onpolicy import Rollout

    return Rollout(samples=[], texts=[], rewards=[], items=items, truncated=[])


def test_ema_teacher_updates_once_per_step_after_all_mini_batches(tmp_path):
    """2 mini-batches, rate r: theta_T' = (1 - r) theta_T + r theta_S(after both optimizer steps), the closed
    form of ONE update (verl dp_actor.py update_policy -> _update_teacher after the loop)."""
    from sd_bench.train.onpolicy import update_phase

    t = _trainer(tmp_path)
    r = t.cfg.teacher.ema_rate
    teacher0 = {n: p.detach().clone() for n, p in t.teacher.copy.named_parameters()}
    after_step: list[dict] = []
    t.optimizer.register_step_post_hook(
        lambda *_: after_step.append({n: p.detach().clone() for n, p in t.model.named_parameters()})
    )
    update = update_phase(t, _rollout(_items(t, [0, 1])))
    assert len(update.grad_norms) == 2 and all(g > 0 for g in update.grad_norms)
    student = dict(t.model.named_parameters())
    half = after_step[0]
    per_update_form = 0.0  # what an update after every optimizer step would give instead
    for n, p in t.teacher.copy.named_parameters():
        want = (1 - r) * teacher0[n] + r * student[n].detach()
        torch.testing.assert_close(p.detach(), want, atol=1e-6, rtol=0)
        other = (1 - r) * ((1 - r) * teacher0[n] + r * half[n]) + r * student[n].detach()
        per_update_form = max(per_update_form, float((other - want).abs().max()))
    assert per_update_form > 1e-4  # the test tells the two cadences apart


def test_an_optimizer_step_for_every_mini_batch_even_without_a_loss(tmp_path):
    """Paper: update_policy steps the optimizer for each mini-batch; one whose samples all lack a
    demonstration has loss 0 and gradient 0 and is still stepped (AdamW moments, weight decay)."""
    from sd_bench.train.onpolicy import update_phase

    t = _trainer(tmp_path, "teacher.mode=frozen")
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    update = update_phase(t, _rollout([]))  # step 1: no sample has a loss in either mini-batch
    assert len(update.grad_norms) == 2 and update.grad_norms == [0.0, 0.0] and update.loss_sum == 0.0
    states = [t.optimizer.state[p] for p in t.params]
    assert all(int(s["step"]) == 2 for s in states)  # every parameter stepped twice
    decay = 1 - t.cfg.optim.lr * t.cfg.optim.weight_decay  # zero moments: only the decoupled weight decay
    for n, p in t.model.named_parameters():
        torch.testing.assert_close(p.detach(), before[n] * decay**2, atol=1e-9, rtol=1e-6)
    update = update_phase(t, _rollout(_items(t, [1])))  # step 2: only mini-batch 2 has a sample
    assert len(update.grad_norms) == 2 and update.grad_norms[0] == 0.0 and update.grad_norms[1] > 0
    assert all(int(s["step"]) == 4 for s in states)
    assert t.scheduler.last_epoch == 2  # the schedule steps once per training step


def test_a_non_finite_gradient_skips_that_mini_batchs_update(tmp_path):
    """Paper (dp_actor.py `_optimizer_step`): a non-finite gradient norm zeroes the gradient and skips the
    step; the other mini-batch still steps, and the EMA teacher updates since one update was applied."""
    from sd_bench.train.onpolicy import update_phase

    t = _trainer(tmp_path)
    items = _items(t, [0])
    items[0].old_logprobs = torch.full_like(items[0].old_logprobs, float("nan"))  # NaN IS ratio -> NaN loss
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    update = update_phase(t, _rollout(items))
    assert math.isnan(update.grad_norms[0]) and update.grad_norms[1] == 0.0 and update.optimizer_steps == 1
    assert all(int(t.optimizer.state[p]["step"]) == 1 for p in t.params)
    for n, p in t.model.named_parameters():
        assert torch.isfinite(p).all(), n
        torch.testing.assert_close(p.detach(), before[n] * (1 - t.cfg.optim.lr * t.cfg.optim.weight_decay))


# --------------------------------------------------------------------------- rule 3: training reward


def test_paper_recipes_reward_with_the_papers_training_rule_and_toy_problems_with_the_toy_grader():
    from sd_bench.problems import Problem
    from sd_bench.train.config import load_config
    from sd_bench.train.onpolicy import reward

    for recipe in ("sdpo", "grpo", "sdpo_ema", "sdpo_nothink", "sdpo_regenerated"):
        assert load_config(recipe).data.reward == "paper", recipe
    math = Problem("p", "q", "q", "7")
    late = "<think>3 + 4 = 7</think> The answer is \\boxed{7}."
    early = (
        late + " " + "Let me double-check that once more, carefully and at length. " * 2
    )  # box > 100 chars back
    assert len(early) - early.rindex("\\boxed{") > 100
    assert reward("paper", math, late) == 1.0
    assert reward("paper", math, early) == 0.0  # the paper's rule: the box must lie in the last 100 chars
    assert reward("grade", math, early) == 1.0  # sd-bench's evaluation checker accepts it (an option)
    assert reward("paper", math, "\\boxed{7.0}") == 1.0  # not equal as strings; math-verify says equal
    toy = Problem("t", "q", "q", "12", kind="toy")
    assert reward("paper", toy, "A:7 wait A:12") == 1.0 and reward("paper", toy, "A:12 wait A:7") == 0.0


def test_truncated_responses_and_those_the_reward_counts_correct_are_logged():
    from sd_bench.train.distributed import Dist
    from sd_bench.train.onpolicy import Rollout, StepMetrics, Update, is_truncated
    from sd_bench.train.rollout import Sample

    assert is_truncated([5, 6, 7], 3, {2}) and not is_truncated([5, 6, 2], 3, {2})
    assert not is_truncated([5, 6], 3, {2})  # shorter than the limit: not cut
    samples = [Sample([1], ids, [0.0] * len(ids)) for ids in ([5, 6, 7], [5, 6, 7], [5, 2], [5, 6, 7])]
    rewards = [1.0, 0.0, 1.0, 1.0]
    truncated = [is_truncated(x.response_ids, 3, {2}) for x in samples]
    rollout = Rollout(samples, ["a"] * 4, rewards, [], truncated)
    record = StepMetrics(1, rollout, Update(), 1.0, "sdpo").record(Dist())
    assert record["truncated"] == 3 / 4 and record["truncated_rewarded"] == 2


# ------------------------------------------------------------------ issue 8: a run that cannot learn


def test_loss_watch_warns_once_per_streak_and_summarises():
    from sd_bench.train.onpolicy import LossWatch

    watch = LossWatch(patience=3)
    lines = [watch.observe(s, n) for s, n in enumerate([0, 0, 0, 0, 4, 0, 0, 0], start=1)]
    assert [s for s, x in enumerate(lines, start=1) if x] == [3, 8]
    assert lines[2].startswith("warning: steps 1-3: no sample carried a loss")
    assert watch.summary() == "train: 1/8 steps had a sample with a loss"


def test_a_run_without_any_loss_warns_and_still_steps(tmp_path, capsys):
    """The math grader on the 8 smoke sums: a random tiny model never writes \\boxed{answer}, so no SDPO
    sample has a successful sibling; the run warns after NO_LOSS_PATIENCE steps, summarises, and AdamW
    still stepped every mini-batch (weight decay moved the weights)."""
    import json

    from sd_bench.cli import main
    from sd_bench.train.onpolicy import NO_LOSS_PATIENCE

    torch.set_num_threads(1)
    out = tmp_path / "run"
    steps = NO_LOSS_PATIENCE
    args = ["data.reward=grade", f"run.max_steps={steps}", f"run.save_every={steps}", "optim.lr=1e-2"]
    assert main(["train", "sdpo", "--scale", "smoke", "--output", str(out), *args]) == 0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["samples_with_loss"] for r in records] == [0] * steps
    assert all(r["optimizer_steps"] == 1 and r["loss"] == 0.0 for r in records)
    err = capsys.readouterr().err
    assert f"warning: steps 1-{steps}: no sample carried a loss" in err
    assert f"train: 0/{steps} steps had a sample with a loss" in err
    from transformers import AutoModelForCausalLM

    final = AutoModelForCausalLM.from_pretrained(out / "final")
    base = AutoModelForCausalLM.from_pretrained(out / "tiny-model")
    assert any(not torch.equal(p, q) for p, q in zip(final.parameters(), base.parameters()))
