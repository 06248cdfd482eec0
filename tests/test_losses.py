"""The SD and GRPO losses against dense references computed by hand (sd_bench/train/losses.py)."""

from __future__ import annotations

import math

import pytest
import torch

from sd_bench.train import losses as L

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _logits(n: int, v: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g) * scale


def _dense_kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row from log-probs, written independently of losses.py."""
    p = p_log.exp()
    return (p * (p_log - q_log)).sum(-1)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_topk_with_k_equal_vocab_is_the_full_vocabulary_jsd(alpha):
    s = _logits(6, 40, 0).requires_grad_(True)
    t = _logits(6, 40, 1)
    ids = torch.randint(0, 40, (6,))
    mask = torch.ones(6)
    kw = {"alpha": alpha, "is_clip": None}
    full, _ = L.sd_loss_from_logits(s, t, ids, mask, top_k=None, **kw)
    (g_full,) = torch.autograd.grad(full, s)
    topk, stats = L.sd_loss_from_logits(s, t, ids, mask, top_k=40, **kw)
    (g_topk,) = torch.autograd.grad(topk, s)
    assert full.item() > 0
    assert topk.item() == pytest.approx(full.item(), abs=1e-6)
    torch.testing.assert_close(g_topk, g_full, atol=1e-5, rtol=0)
    assert stats["sd/student_topk_mass"] == pytest.approx(1.0, abs=1e-5)


def test_alpha_endpoints_are_forward_and_reverse_kl_and_midpoint_is_jsd():
    s, t = _logits(5, 30, 2), _logits(5, 30, 3)
    ls, lt = s.log_softmax(-1), t.log_softmax(-1)
    ids, mask = torch.zeros(5, dtype=torch.long), torch.ones(5)
    fwd, _ = L.sd_loss_from_logits(s, t, ids, mask, alpha=0.0, top_k=None, is_clip=None)
    rev, _ = L.sd_loss_from_logits(s, t, ids, mask, alpha=1.0, top_k=None, is_clip=None)
    mid, _ = L.sd_loss_from_logits(s, t, ids, mask, alpha=0.5, top_k=None, is_clip=None)
    assert fwd.item() == pytest.approx(_dense_kl(lt, ls).mean().item(), rel=1e-5)
    assert rev.item() == pytest.approx(_dense_kl(ls, lt).mean().item(), rel=1e-5)
    m_log = (0.5 * ls.exp() + 0.5 * lt.exp()).log()
    jsd = 0.5 * _dense_kl(lt, m_log) + 0.5 * _dense_kl(ls, m_log)
    assert mid.item() == pytest.approx(jsd.mean().item(), rel=1e-5)
    assert fwd.item() != pytest.approx(rev.item(), rel=1e-2)  # the two directions really differ here


def test_topk_plus_tail_bucket_by_hand():
    s = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5]])
    t = torch.tensor([[0.0, 2.0, 1.0, 0.0, -2.0]])
    ps, pt = s.softmax(-1)[0], t.softmax(-1)[0]
    top = [0, 1]  # the student's top-2 ids
    bs = torch.stack([ps[0], ps[1], 1 - ps[top].sum()])
    bt = torch.stack([pt[0], pt[1], 1 - pt[top].sum()])
    want = (bs * (bs / bt).log()).sum()  # reverse KL over the 3 buckets
    got, stats = L.sd_loss_from_logits(
        s, t, torch.tensor([0]), torch.ones(1), alpha=1.0, top_k=2, is_clip=None
    )
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert stats["sd/teacher_topk_mass"] == pytest.approx(pt[top].sum().item(), rel=1e-5)


CASES = [
    {"alpha": 0.5, "top_k": 10, "is_clip": 2.0, "mode": "jsd", "temperature": 1.0},
    {"alpha": 0.0, "top_k": None, "is_clip": None, "mode": "jsd", "temperature": 1.0},
    {"alpha": 1.0, "top_k": 7, "is_clip": 1.5, "mode": "jsd", "temperature": 0.7},
    {"alpha": 0.5, "top_k": None, "is_clip": 2.0, "mode": "jsd", "temperature": 1.0},
    {"alpha": 1.0, "top_k": None, "is_clip": 2.0, "mode": "sampled_token", "temperature": 1.0},
]


@pytest.mark.parametrize("shared_weight", [True, False])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['mode']}-a{c['alpha']}-k{c['top_k']}")
def test_chunked_equals_dense_in_values_and_gradients(case, shared_weight):
    n, h, v = 37, 16, 300
    g = torch.Generator().manual_seed(4)
    hs = torch.randn(n, h, generator=g).requires_grad_(True)
    ht = torch.randn(n, h, generator=g)
    ws = (torch.randn(v, h, generator=g) * 0.5).requires_grad_(True)
    wt = ws if shared_weight else torch.randn(v, h, generator=g) * 0.5
    ids = torch.randint(0, v, (n,), generator=g)
    mask = (torch.rand(n, generator=g) > 0.2).float()
    mask[8:16] = 0  # one fully masked chunk
    with torch.no_grad():
        old = (hs @ ws.T / case["temperature"]).log_softmax(-1).gather(-1, ids[:, None]).squeeze(-1)
        old = old + torch.randn(n, generator=g)  # ratios spread on both sides of the clip

    dense, dstats = L.sd_loss_from_logits(hs @ ws.T, ht @ wt.T, ids, mask, old, **case)
    dgh, dgw = torch.autograd.grad(dense, (hs, ws))
    chunked, cstats = L.sd_loss_from_hidden(hs, ws, ht, wt, ids, mask, old, chunk_size=8, **case)
    cgh, cgw = torch.autograd.grad(chunked, (hs, ws))

    assert chunked.item() == pytest.approx(dense.item(), abs=1e-5)
    torch.testing.assert_close(cgh, dgh, atol=1e-5, rtol=0)
    torch.testing.assert_close(cgw, dgw, atol=1e-5, rtol=0)
    assert cgh[8:16].abs().max() == 0  # masked tokens get no gradient
    assert cstats.keys() == dstats.keys()
    for k in dstats:
        assert cstats[k] == pytest.approx(dstats[k], rel=1e-5, abs=1e-4), k


def test_gradients_reach_only_the_student():
    n, h, v = 12, 8, 50
    hs = torch.randn(n, h, requires_grad=True)
    ht = torch.randn(n, h, requires_grad=True)
    ws = torch.randn(v, h, requires_grad=True)
    wt = torch.randn(v, h, requires_grad=True)
    ids, mask = torch.randint(0, v, (n,)), torch.ones(n)
    loss, _ = L.sd_loss_from_hidden(hs, ws, ht, wt, ids, mask, is_clip=None, chunk_size=5)
    loss.backward()
    assert hs.grad is not None and hs.grad.abs().sum() > 0
    assert ws.grad is not None and ws.grad.abs().sum() > 0
    assert ht.grad is None and wt.grad is None

    # Shared lm_head (self-distillation): the weight's gradient is the student side's alone.
    ws.grad = None
    loss, _ = L.sd_loss_from_hidden(hs, ws, ht, ws, ids, mask, is_clip=None, chunk_size=5)
    (g_shared,) = torch.autograd.grad(loss, ws)
    loss2, _ = L.sd_loss_from_hidden(hs, ws, ht, ws.detach().clone(), ids, mask, is_clip=None, chunk_size=5)
    (g_copy,) = torch.autograd.grad(loss2, ws)
    torch.testing.assert_close(g_shared, g_copy)

    # Dense API: teacher logits are detached even if they carry a graph.
    s, t = torch.randn(n, v, requires_grad=True), torch.randn(n, v, requires_grad=True)
    L.sd_loss_from_logits(s, t, ids, mask, is_clip=None)[0].backward()
    assert s.grad is not None and t.grad is None


def test_zero_mask_or_sample_weight_gives_zero_loss_and_gradient():
    b, tlen, v = 3, 5, 20
    s = torch.randn(b, tlen, v, requires_grad=True)
    t = torch.randn(b, tlen, v)
    ids = torch.randint(0, v, (b, tlen))
    mask = torch.ones(b, tlen)
    loss, stats = L.sd_loss_from_logits(s, t, ids, mask * 0, is_clip=None)
    (g,) = torch.autograd.grad(loss, s)
    assert loss.item() == 0 and g.abs().max() == 0 and stats["sd/tokens"] == 0

    # A sample with no successful sibling (weight 0) adds neither loss nor tokens nor gradient.
    w = torch.tensor([1.0, 0.0, 1.0])
    loss, stats = L.sd_loss_from_logits(s, t, ids, mask, sample_weight=w, is_clip=None)
    (g,) = torch.autograd.grad(loss, s)
    keep = [0, 2]
    ref, _ = L.sd_loss_from_logits(s[keep], t[keep], ids[keep], mask[keep], is_clip=None)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    assert g[1].abs().max() == 0 and g[0].abs().max() > 0
    assert stats["sd/tokens"] == 2 * tlen

    hs, ws = torch.randn(6, 4, requires_grad=True), torch.randn(v, 4, requires_grad=True)
    loss, _ = L.sd_loss_from_hidden(
        hs, ws, torch.randn(6, 4), ws, ids[0, :6].repeat(2)[:6], torch.zeros(6), is_clip=None
    )
    gh, gw = torch.autograd.grad(loss, (hs, ws))
    assert loss.item() == 0 and gh.abs().max() == 0 and gw.abs().max() == 0


def test_num_tokens_sets_the_token_mean_denominator():
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    ids, mask = torch.randint(0, 10, (4,)), torch.ones(4)
    local, _ = L.sd_loss_from_logits(s, t, ids, mask, is_clip=None)
    glob, _ = L.sd_loss_from_logits(s, t, ids, mask, is_clip=None, num_tokens=8)
    assert glob.item() == pytest.approx(local.item() / 2, rel=1e-6)


def test_importance_ratio_is_clipped_above_only_and_detached():
    s = torch.randn(4, 25, requires_grad=True)
    t = torch.randn(4, 25)
    ids, mask = torch.randint(0, 25, (4,)), torch.ones(4)
    tok = s.detach().log_softmax(-1).gather(-1, ids[:, None]).squeeze(-1)
    base, _ = L.sd_loss_from_logits(s, t, ids, mask, is_clip=None)
    (g_base,) = torch.autograd.grad(base, s)

    high, stats = L.sd_loss_from_logits(s, t, ids, mask, tok - math.log(5.0), is_clip=2.0)  # ratio 5 -> 2
    (g_high,) = torch.autograd.grad(high, s)
    assert high.item() == pytest.approx(2 * base.item(), rel=1e-5)
    torch.testing.assert_close(g_high, 2 * g_base)  # the ratio is a constant weight, not differentiated
    assert stats["sd/is_clip_frac"] == 1.0 and stats["sd/is_ratio"] == pytest.approx(2.0)
    assert stats["sd/logp_gap"] == pytest.approx(math.log(5.0), rel=1e-5)

    low, stats = L.sd_loss_from_logits(s, t, ids, mask, tok + math.log(2.0), is_clip=2.0)  # ratio 0.5, kept
    assert low.item() == pytest.approx(0.5 * base.item(), rel=1e-5)
    assert stats["sd/is_clip_frac"] == 0.0

    huge, _ = L.sd_loss_from_logits(s, t, ids, mask, tok - 1000.0, is_clip=2.0)  # log-ratio clamp: finite
    assert math.isfinite(huge.item())
    with pytest.raises(ValueError, match="logp_old"):
        L.sd_loss_from_logits(s, t, ids, mask, None, is_clip=2.0)


def test_sampled_token_surrogate_is_the_reverse_kl_policy_gradient():
    s = torch.randn(6, 15, requires_grad=True)
    t = torch.randn(6, 15)
    ids, mask = torch.randint(0, 15, (6,)), torch.ones(6)
    loss, stats = L.sd_loss_from_logits(s, t, ids, mask, alpha=1.0, mode="sampled_token", is_clip=None)
    (g,) = torch.autograd.grad(loss, s)
    ls = s.log_softmax(-1).gather(-1, ids[:, None]).squeeze(-1)
    lt = t.log_softmax(-1).gather(-1, ids[:, None]).squeeze(-1)
    adv = (lt - ls).detach()
    (g_ref,) = torch.autograd.grad((-adv * ls).mean(), s)  # -(A.detach()) * log S, A = log T - log S
    torch.testing.assert_close(g, g_ref)
    assert loss.item() == pytest.approx((ls - lt).mean().item(), rel=1e-5, abs=1e-6)  # value: k1 estimate
    assert stats["sd/kl_k1"] == pytest.approx(loss.item(), rel=1e-5, abs=1e-6)
    with pytest.raises(ValueError, match="alpha=1.0"):
        L.sd_loss_from_logits(s, t, ids, mask, alpha=0.5, mode="sampled_token", is_clip=None)


def test_token_logprobs_from_hidden_matches_dense():
    hs = torch.randn(19, 8, requires_grad=True)
    w = torch.randn(60, 8, requires_grad=True)
    ids = torch.randint(0, 60, (19,))
    got = L.token_logprobs_from_hidden(hs, w, ids, chunk_size=4, temperature=0.8)
    want = (hs @ w.T / 0.8).log_softmax(-1).gather(-1, ids[:, None]).squeeze(-1)
    torch.testing.assert_close(got, want)
    gx = torch.randn(19)
    torch.testing.assert_close(
        torch.autograd.grad((got * gx).sum(), (hs, w)), torch.autograd.grad((want * gx).sum(), (hs, w))
    )


def test_grpo_clip_higher_on_hand_made_numbers():
    ratio = torch.tensor([1.5, 0.5, 1.1, 0.7, 1.25, 0.75])
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0, -1.0])
    logp_new = ratio.log().requires_grad_(True)
    loss, stats = L.grpo_loss(logp_new, torch.zeros(6), adv, torch.ones(6))
    # per token: max(-A r, -A clip(r, 0.8, 1.28))
    #   1.5,+1 -> -1.28 (clipped) | 0.5,-1 -> 0.8 (clipped) | 1.1,-1 -> 1.1 | 0.7,+1 -> -0.7
    #   1.25,+1 -> -1.25 (inside clip-higher 1.28) | 0.75,-1 -> 0.8 (clipped at 1 - 0.2)
    want = [-1.28, 0.8, 1.1, -0.7, -1.25, 0.8]
    assert loss.item() == pytest.approx(sum(want) / 6, abs=1e-6)
    (g,) = torch.autograd.grad(loss, logp_new)
    # d/dlogp (-A r) = -A r where the unclipped branch is active, 0 where clipped.
    torch.testing.assert_close(g, torch.tensor([0.0, 0.0, 1.1, -0.7, -1.25, 0.0]) / 6)
    assert stats["grpo/clip_frac"] == pytest.approx(3 / 6)

    # Per-sequence advantages broadcast over [B, T]; masked tokens count in neither sum.
    lp = torch.zeros(2, 3, requires_grad=True)
    loss, _ = L.grpo_loss(
        lp, torch.zeros(2, 3), torch.tensor([2.0, -1.0]), torch.tensor([[1, 1, 0], [1, 0, 0.0]])
    )
    assert loss.item() == pytest.approx((-2 - 2 + 1) / 3)


def test_grpo_advantages_are_mean_centred_without_std():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    torch.testing.assert_close(L.grpo_advantages(r, 4), torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="groups of 3"):
        L.grpo_advantages(r, 3)


def test_bad_options_name_the_field():
    s = torch.randn(2, 5)
    with pytest.raises(ValueError, match="alpha"):
        L.sd_loss_from_logits(s, s, torch.zeros(2, dtype=torch.long), torch.ones(2), alpha=1.5)
    with pytest.raises(ValueError, match="teacher_hidden"):
        L.sd_loss_from_hidden(
            torch.randn(3, 4),
            torch.randn(5, 4),
            torch.randn(2, 4),
            torch.randn(5, 4),
            torch.zeros(3, dtype=torch.long),
            torch.ones(3),
            is_clip=None,
        )


def test_bf16_chunked_path_tracks_fp32():
    n, h, v = 20, 16, 200
    hs = torch.randn(n, h)
    ws = torch.randn(v, h) * 0.3
    ht = torch.randn(n, h)
    ids, mask = torch.randint(0, v, (n,)), torch.ones(n)
    out = {}
    for dt in (torch.float32, torch.bfloat16):
        a, b = hs.to(dt).requires_grad_(True), ws.to(dt).requires_grad_(True)
        loss, _ = L.sd_loss_from_hidden(a, b, ht.to(dt), b, ids, mask, is_clip=None, chunk_size=6)
        ga, gb = torch.autograd.grad(loss, (a, b))
        assert ga.dtype == dt and gb.dtype == dt
        out[dt] = (loss.item(), ga.float())
    assert out[torch.bfloat16][0] == pytest.approx(out[torch.float32][0], rel=5e-2)
    cos = torch.nn.functional.cosine_similarity(
        out[torch.bfloat16][1].flatten(), out[torch.float32][1].flatten(), 0
    )
    assert cos > 0.99


def test_bench_loss_script_runs_and_agrees_at_small_size():
    """benchmarks/bench_loss.py end to end (two fresh worker processes) at a toy size: the JSON contract."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_loss.py"
    cmd = [sys.executable, str(script), "--json", "--tokens", "48", "--hidden", "16", "--vocab", "700"]
    out = subprocess.run(cmd + ["--chunk", "16"], check=True, capture_output=True, text=True, timeout=120)
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"ours_peak_mib", "naive_peak_mib", "max_abs_diff", "ours_s", "naive_s"} <= summary.keys()
    assert summary["max_abs_diff"] < 1e-4
