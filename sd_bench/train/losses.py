"""Losses for on-policy self-distillation (SDPO) and GRPO: pure functions, chunked over tokens.

Paper: arXiv:2603.24472, PAPER.md "Training recipes". SDPO distils the same model under a richer context
(the teacher, T) into the model under the plain prompt (the student, S) on the student's own sampled tokens:
generalized JSD with alpha = 0.5 over the student's top-100 tokens plus one tail bucket, times an importance
ratio clipped at 2 and the rollout correction min(pi_old / pi_rollout, 2); per mini-batch, the mean over all
rollouts of each sequence's token-mean (samples without a successful sibling count 0).
GRPO (the paper's baseline): mean-centred advantages (no std), clip 0.2 / 0.28, dual clip 3, no KL, the same
rollout correction and aggregation.

Conventions follow lasgroup/SDPO (verl `compute_self_distillation_loss`) and TRL's
`trl.experimental.sdpo.loss_utils`, which agree with each other:
  * mixture M = alpha * T + (1 - alpha) * S and JSD_alpha = alpha * KL(T||M) + (1 - alpha) * KL(S||M);
    alpha = 0 and alpha = 1 are special-cased to forward KL(T||S) and reverse KL(S||T) (the JSD itself
    goes to 0 at both ends, so without the special case the endpoints would not be the KLs).
  * top-k: both distributions are evaluated on the STUDENT's top-k token ids, plus one tail bucket
    log(1 - sum_topk p), with log-sum clamped to <= -1e-7 so the tail stays finite.
  * importance ratio: rho_t = min(exp(clamp(log S(y_t) - log pi_old(y_t), -20, 20)), is_clip), detached,
    multiplies the per-token divergence (a correction, not a PPO clip: there is no min with an unclipped
    term and no lower bound). `logp_old` is the log-prob under the policy that sampled y_t: verl recomputes
    it with the trainer before the first mini-batch; passing the rollout engine's log-probs instead also
    absorbs the rollout-vs-trainer numerical gap into the same clipped correction.
  * aggregation: L = sum_t m_t w_t l_t with m_t the token mask (response mask x per-sample weight x the
    remedies' mask) and w_t the per-token weight. Default w_t = 1 / sum_t m_t (a token-mean); the trainer
    passes `aggregation_weights(...)` (the paper's mean over ALL rollouts of each sequence's token-mean, or
    the global token-mean) times `rollout_correction_weights(...)` (the paper's truncated IS min(pi_old /
    pi_rollout, 2), verl rollout_corr_helper.py `compute_rollout_correction_weights`, rollout_is: token).

Memory. At Qwen3's vocabulary (151,936) one sequence of 4,096 tokens has 0.6e9 logits (2.5 GB in fp32);
`sd_loss_from_hidden` never materialises logits for more than one chunk of tokens. Per chunk it computes
student and teacher logits (fp32), the log-sum-exps, the loss, and the gradient of the chunk's loss w.r.t.
the chunk's student logits (autograd on the gathered top-k / sampled-token log-probs, the [chunk, V] part
assembled in place), which it turns at once into gradients for the hidden states and the lm_head weight;
backward only scales them by the incoming gradient. This is a departure from the issue's
suggestion of `torch.utils.checkpoint`: both bound memory by one chunk, but checkpointing recomputes the
student and teacher logits in backward (6 vocab-sized matmuls per token) where this does the 4 a dense
implementation does (student and teacher logits, two gradient matmuls), so it is no slower than dense.
`token_logprobs_from_hidden` (for GRPO and log-prob gaps) does use checkpointing, where recomputing one
matmul is the price of a gradient w.r.t. per-token outputs.
"""

from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint

MODES = ("jsd", "sampled_token")
# Elements of one chunk's [tokens, vocab] fp32 buffer: 20 Mi floats = 80 MiB, 138 tokens at vocab 151,936.
# Two such buffers live in the top-k path (student and teacher logits, reused across chunks), so the loss's
# working memory is ~160 MiB whatever the batch. Smaller chunks cost CPU matmul efficiency (measured: 55-token
# chunks ran 25% slower than 128-token ones at hidden 1,024).
DEFAULT_CHUNK_ELEMS = 20 << 20
# On CUDA: 256 Mi floats = 1 GiB per buffer, ~1,766 tokens at vocab 151,936 (2-3 GiB for the loss: small
# next to an 80 GB GPU, and the per-chunk lm_head matmuls stay large enough to run near peak).
CUDA_CHUNK_ELEMS = 1 << 28
_LOG_RATIO_BOUND = 20.0  # SDPO/verl clamp on log(S/old) before exp, so a stale token cannot overflow
_TAIL_LOG_MAX = -1e-7  # SDPO/verl: keep log(sum p_topk) < 0 so log(1 - sum p_topk) is finite


def _check_options(alpha: float, top_k: int | None, is_clip: float | None, mode: str, temperature: float):
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"losses: alpha must be in [0, 1] (0 forward KL, 1 reverse KL), got {alpha}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"losses: top_k must be >= 1 or None (full vocabulary), got {top_k}")
    if is_clip is not None and is_clip <= 0:
        raise ValueError(f"losses: is_clip must be > 0 or None (no importance ratio), got {is_clip}")
    if mode not in MODES:
        raise ValueError(f"losses: mode must be one of {MODES}, got {mode!r}")
    if mode == "sampled_token" and alpha != 1.0:
        raise ValueError(
            f"losses: mode='sampled_token' is the reverse-KL surrogate and needs alpha=1.0, got {alpha}"
        )
    if temperature <= 0:
        raise ValueError(f"losses: temperature must be > 0, got {temperature}")


def generalized_jsd(logp_s: torch.Tensor, logp_t: torch.Tensor, alpha: float) -> torch.Tensor:
    """Generalized Jensen-Shannon divergence over the last dimension (log-probabilities in, [...] out).

        M        = alpha * T + (1 - alpha) * S
        JSD_a    = alpha * KL(T || M) + (1 - alpha) * KL(S || M)          0 < alpha < 1
        alpha=0  : KL(T || S) = sum_v T_v (log T_v - log S_v)              (forward KL)
        alpha=1  : KL(S || T) = sum_v S_v (log S_v - log T_v)              (reverse KL)

    Same definition as TRL's `generalized_jsd_loss` (beta = alpha) and SDPO's
    `compute_self_distillation_loss`.
    """
    if alpha == 0.0:
        return (logp_t.exp() * (logp_t - logp_s)).sum(-1)
    if alpha == 1.0:
        return (logp_s.exp() * (logp_s - logp_t)).sum(-1)
    log_m = torch.logaddexp(logp_s + math.log(1.0 - alpha), logp_t + math.log(alpha))
    kl_t = (logp_t.exp() * (logp_t - log_m)).sum(-1)
    kl_s = (logp_s.exp() * (logp_s - log_m)).sum(-1)
    return alpha * kl_t + (1.0 - alpha) * kl_s


def add_tail_bucket(logp_k: torch.Tensor) -> torch.Tensor:
    """Append log(1 - sum_i p_i) to top-k log-probs [..., k] -> [..., k + 1], a distribution summing to 1."""
    log_mass = torch.logsumexp(logp_k, dim=-1, keepdim=True).clamp(max=_TAIL_LOG_MAX)
    return torch.cat([logp_k, torch.log(-torch.expm1(log_mass))], dim=-1)


def clipped_importance_ratio(
    logp_current: torch.Tensor, logp_old: torch.Tensor | None, is_clip: float | None
) -> torch.Tensor:
    """rho_t = min(exp(clamp(log S(y_t) - log pi_old(y_t), -20, 20)), is_clip), detached (SDPO / verl)."""
    if is_clip is None:
        return torch.ones_like(logp_current).detach()
    if logp_old is None:
        raise ValueError(
            "losses: is_clip is set but logp_old is None; pass the rollout log-probs or is_clip=None"
        )
    log_ratio = (logp_current.detach() - logp_old.to(logp_current.dtype)).clamp(
        -_LOG_RATIO_BOUND, _LOG_RATIO_BOUND
    )
    return log_ratio.exp().clamp(max=is_clip)


def _terms_from_gathered(
    ls_k: torch.Tensor | None,
    tok_s: torch.Tensor,
    lt_k: torch.Tensor | None,
    tok_t: torch.Tensor,
    *,
    alpha: float,
    mode: str,
) -> dict[str, torch.Tensor]:
    """Per-token SD terms [n] from log-probs gathered at the student's top-k ids ([n, k]) and at y_t ([n])."""
    out = {"logp_s": tok_s, "logp_t": tok_t}
    if mode == "sampled_token":
        # Reverse-KL surrogate on the sampled token: gradient (log S - log T) * grad log S, i.e. a policy
        # gradient with advantage A_t = log T(y_t) - log S(y_t) (SDPO/TRL 'sampled_token'). Written so its
        # VALUE is the k1 estimate log S - log T of KL(S||T) rather than SDPO's (log S - log T) * log S.
        adv = (tok_t - tok_s).detach()
        out["per_token"] = -adv * (tok_s - tok_s.detach()) - adv
        return out
    out["per_token"] = generalized_jsd(add_tail_bucket(ls_k), add_tail_bucket(lt_k), alpha)
    out["mass_s"] = ls_k.detach().exp().sum(-1)
    out["mass_t"] = lt_k.detach().exp().sum(-1)
    return out


def _per_token_sd(
    logits_s: torch.Tensor,
    logits_t: torch.Tensor,
    token_ids: torch.Tensor,
    *,
    alpha: float,
    top_k: int | None,
    mode: str,
) -> dict[str, torch.Tensor]:
    """Per-token SD loss terms from fp32 logits [n, V] (student with grad, teacher without) -> dict of [n]."""
    lse_s = torch.logsumexp(logits_s, dim=-1, keepdim=True)
    lse_t = torch.logsumexp(logits_t, dim=-1, keepdim=True)
    ids = token_ids.unsqueeze(-1)
    tok_s = (logits_s.gather(-1, ids) - lse_s).squeeze(-1)
    tok_t = (logits_t.gather(-1, ids) - lse_t).squeeze(-1)
    if mode == "jsd" and top_k is None:
        per_token = generalized_jsd(logits_s - lse_s, logits_t - lse_t, alpha)
        return {"logp_s": tok_s, "logp_t": tok_t, "per_token": per_token}
    ls_k = lt_k = None
    if mode == "jsd":
        idx = logits_s.detach().topk(min(top_k, logits_s.shape[-1]), dim=-1).indices
        ls_k = logits_s.gather(-1, idx) - lse_s
        lt_k = logits_t.gather(-1, idx) - lse_t
    return _terms_from_gathered(ls_k, tok_s, lt_k, tok_t, alpha=alpha, mode=mode)


_STAT_KEYS = (
    "divergence",  # per-token JSD / KL before the importance ratio (surrogate mode: k1 estimate)
    "kl_k1",  # mean log S(y) - log T(y): sampled-token estimate of KL(S||T)
    "kl_k3",  # mean exp(log T - log S) - 1 - (log T - log S): low-variance KL(S||T) estimate
    "is_ratio",  # mean clipped importance ratio
    "is_clip_frac",  # fraction of tokens whose ratio hit is_clip
    "logp_gap",  # mean log S_current(y) - log pi_old(y): trainer-vs-rollout log-prob gap
    "logp_gap_abs",
    "student_topk_mass",
    "teacher_topk_mass",
)


def _stat_sums(terms: dict, ratio: torch.Tensor, logp_old, is_clip, w: torch.Tensor) -> torch.Tensor:
    """Weighted sums (weights w = mask) of per-token statistics, in _STAT_KEYS order; no grad."""
    with torch.no_grad():
        ls, lt = terms["logp_s"].detach(), terms["logp_t"].detach()
        d = lt - ls
        gap = ls - logp_old if logp_old is not None else torch.zeros_like(ls)
        clipped = (ratio >= is_clip).float() if is_clip is not None else torch.zeros_like(ls)
        zeros = torch.zeros_like(ls)
        cols = [
            terms["per_token"].detach(),
            -d,
            d.exp() - 1 - d,
            ratio,
            clipped,
            gap,
            gap.abs(),
            terms.get("mass_s", zeros),
            terms.get("mass_t", zeros),
        ]
        return torch.stack([(c.float() * w).sum() for c in cols])


def _finish_stats(sums: torch.Tensor, weight_total: torch.Tensor, top_k, logp_old, mode) -> dict[str, float]:
    vals = (sums / weight_total.clamp(min=1e-12)).tolist()
    stats = {f"sd/{k}": v for k, v in zip(_STAT_KEYS, vals)}
    if top_k is None or mode == "sampled_token":
        stats.pop("sd/student_topk_mass")
        stats.pop("sd/teacher_topk_mass")
    if logp_old is None:
        stats.pop("sd/logp_gap")
        stats.pop("sd/logp_gap_abs")
    stats["sd/tokens"] = float(weight_total)
    return stats


def token_mean_denominator(mask: torch.Tensor, num_tokens: float | torch.Tensor | None) -> torch.Tensor:
    """sum_t m_t (at least 1), or the caller's global count (data parallel: all ranks' tokens)."""
    if num_tokens is not None:
        return torch.as_tensor(num_tokens, dtype=torch.float32, device=mask.device).clamp(min=1.0)
    return mask.float().sum().clamp(min=1.0)


def _loss_weights(mask: torch.Tensor, weight: torch.Tensor | None, num_tokens) -> torch.Tensor:
    """m_t * w_t per token [N]: the caller's weights, or the token-mean's 1 / denominator."""
    if weight is None:
        return mask / token_mean_denominator(mask, num_tokens)
    return mask * weight.detach().float().reshape(mask.shape)


AGGREGATIONS = ("seq_mean_token_mean", "token_mean")


def aggregation_weights(
    lengths: list[int], aggregation: str, *, num_sequences: int, num_tokens: float, device=None
) -> torch.Tensor:
    """Per-token weights w_t [sum(lengths)] that turn sum_t m_t w_t l_t into a mini-batch's loss.

    seq_mean_token_mean (the paper's effective rule): w_t = 1 / (|y_i| * B) for token t of sequence i, so
        L = 1/B sum_{i in mini-batch} (1/|y_i|) sum_{t in y_i} m_t l_t,
    B = `num_sequences`, EVERY rollout of the mini-batch on all processes, those without a loss (no
    successful sibling, zero advantage) included as zeros. Paper: verl dp_actor.py `update_policy` runs
    `ppo_micro_batch_size_per_gpu: 1` sequence per micro-batch, core_algos.py `agg_loss(token-mean)` over
    that one sequence, times loss_scale_factor = 1 / gradient_accumulation (the local mini-batch's
    sequence count), and FSDP averages over processes.
    token_mean (an option; sd-bench's earlier rule, verl's token-mean over a whole mini-batch): w_t =
        1 / `num_tokens`, the mini-batch's response tokens of the sequences that take part, all processes.
    |y_i| counts every response token, so a remedy mask (m_t = 0) removes tokens without reweighting the
    others, in both modes.
    """
    if aggregation == "seq_mean_token_mean":
        if num_sequences < 1:
            raise ValueError(f"aggregation_weights: num_sequences must be >= 1, got {num_sequences}")
        parts = [torch.full((n,), 1.0 / (n * num_sequences)) for n in lengths if n]
    elif aggregation == "token_mean":
        parts = [torch.full((n,), 1.0 / max(float(num_tokens), 1.0)) for n in lengths if n]
    else:
        raise ValueError(f"losses: aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    out = torch.cat(parts) if parts else torch.zeros(0)
    return out.to(device) if device is not None else out


def rollout_correction_weights(
    logp_old: torch.Tensor, logp_rollout: torch.Tensor, threshold: float | None = 2.0
) -> torch.Tensor:
    """Truncated importance weights min(pi_old(y_t) / pi_rollout(y_t), threshold) per token, detached.

    The paper's rollout correction (config/sdpo.yaml and baseline_grpo.yaml `rollout_correction.rollout_is:
    token`, `rollout_is_threshold: 2.0`; verl rollout_corr_helper.py `compute_rollout_correction_weights`):
    exp(clamp(log pi_old - log pi_rollout, -20, 20)), clipped above only, computed once per training step
    from the trainer's recomputed old log-probs and the sampler's log-probs, multiplied into every token's
    loss (SDPO and GRPO). threshold None: no correction (all ones).
    """
    if threshold is None:
        return torch.ones_like(logp_old, dtype=torch.float32)
    if threshold <= 0:
        raise ValueError(f"losses: rollout_is_threshold must be > 0 or None, got {threshold}")
    log_ratio = (logp_old.detach().float() - logp_rollout.detach().float().to(logp_old.device)).clamp(
        -_LOG_RATIO_BOUND, _LOG_RATIO_BOUND
    )
    return log_ratio.exp().clamp(max=threshold)


def sd_loss_from_logits(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    token_ids: torch.Tensor,
    mask: torch.Tensor,
    logp_old: torch.Tensor | None = None,
    *,
    alpha: float = 0.5,
    top_k: int | None = 100,
    is_clip: float | None = 2.0,
    mode: str = "jsd",
    temperature: float = 1.0,
    sample_weight: torch.Tensor | None = None,
    num_tokens: float | torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Dense self-distillation loss from logits [..., V] (small cases, tests, the reference).

        L = sum_t m_t * w_t * rho_t * D_t,    w_t = `weight` or 1 / sum_t m_t (token-mean)
        D_t = JSD_alpha(S_t, T_t) over the student's top-k + tail (or all of V when top_k is None),
              or, for mode="sampled_token", the surrogate whose gradient is
              (log S(y_t) - log T(y_t)) grad log S(y_t)
        rho_t = clipped_importance_ratio(log S(y_t), logp_old_t, is_clip)
        m_t = mask_t * sample_weight_b (samples with no successful sibling: weight 0)

    token_ids / mask / logp_old / weight have the logits' leading shape ([B, T] or [N]); sample_weight is
    [B]. `weight` (the caller's aggregation x rollout correction, a constant) replaces the token-mean
    denominator, so num_tokens is then unused. Log-softmax in fp32; the teacher is detached. Returns
    (loss, stats) with KL estimates (see _STAT_KEYS), means over the masked tokens.
    """
    _check_options(alpha, top_k, is_clip, mode, temperature)
    v = student_logits.shape[-1]
    m = mask.float()
    if sample_weight is not None:
        m = m * sample_weight.float().view(-1, *([1] * (m.dim() - 1)))
    m = m.reshape(-1)
    s = student_logits.reshape(-1, v).float() / temperature
    t = teacher_logits.detach().reshape(-1, v).float() / temperature
    old = logp_old.reshape(-1) if logp_old is not None else None
    terms = _per_token_sd(s, t, token_ids.reshape(-1), alpha=alpha, top_k=top_k, mode=mode)
    ratio = clipped_importance_ratio(terms["logp_s"], old, is_clip)
    loss = (terms["per_token"] * ratio * _loss_weights(m, weight, num_tokens)).sum()
    stats = _finish_stats(_stat_sums(terms, ratio, old, is_clip, m), m.sum(), top_k, old, mode)
    return loss, stats


def _fp32_logits(
    hidden: torch.Tensor, weight: torch.Tensor, temperature: float, out: torch.Tensor | None = None
) -> torch.Tensor:
    """hidden @ weight.T / tau in fp32, written into `out` (a reused [>= c, V] buffer) when given.

    Reusing one buffer per side matters on CPU, where every fresh multi-MiB tensor is a new mmap whose
    pages fault in on first touch; on CUDA the caching allocator makes it moot.
    """
    if out is not None:
        out = out[: hidden.shape[0]]
        if hidden.dtype == torch.float32 and weight.dtype == torch.float32:
            torch.mm(hidden, weight.T, out=out)
        else:
            out.copy_(hidden @ weight.T)
        logits = out
    else:
        logits = (hidden @ weight.T).float()
    return logits.div_(temperature) if temperature != 1.0 else logits


def _lse_inplace(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log-sum-exp of the rows of z [c, V], overwriting z with exp(z - rowmax) (no [c, V] temporary).

    Returns (lse [c], rowsum of the overwritten z [c]); softmax(z) is then z / rowsum.
    """
    row_max = z.amax(dim=-1, keepdim=True)
    z.sub_(row_max).exp_()
    total = z.sum(dim=-1)
    return row_max.squeeze(-1) + total.log(), total


def _chunk_gathered(hs, w_s, ht, w_t, ids, m, old, lw, opts, buf_s=None, buf_t=None):
    """One chunk, top-k or sampled-token mode: (loss, stat sums, d loss / d student logits [c, V] fp32).

    The loss depends on the student logits z only through lse(z), z[top-k ids] and z[y], so autograd runs
    on those small gathered tensors and the [c, V] gradient is assembled in place in z's own buffer:
        dL/dz = g_lse * softmax(z) + scatter(g_topk at top-k ids) + scatter(g_tok at y)
    Peak: two [c, V] fp32 buffers (student and teacher logits), reused across chunks when given.
    """
    alpha, top_k, is_clip, mode, temperature, _ = opts
    col = ids.unsqueeze(-1)
    z = _fp32_logits(hs, w_s, temperature, out=buf_s)
    idx = z.topk(min(top_k, z.shape[-1]), dim=-1, sorted=False).indices if mode == "jsd" else None
    z_tok = z.gather(-1, col).squeeze(-1)
    z_k = z.gather(-1, idx) if idx is not None else None
    lse_s, sum_s = _lse_inplace(z)  # z now holds exp(z - max)
    zt = _fp32_logits(ht, w_t, temperature, out=buf_t)
    tok_t_raw = zt.gather(-1, col).squeeze(-1)
    lt_k_raw = zt.gather(-1, idx) if idx is not None else None
    lse_t, _ = _lse_inplace(zt)
    del zt
    tok_t = tok_t_raw - lse_t
    lt_k = lt_k_raw - lse_t.unsqueeze(-1) if idx is not None else None
    with torch.enable_grad():
        lse_leaf = lse_s.clone().requires_grad_(True)
        tok_leaf = z_tok.requires_grad_(True)
        leaves = [lse_leaf, tok_leaf]
        ls_k = None
        if idx is not None:
            topk_leaf = z_k.requires_grad_(True)
            leaves.append(topk_leaf)
            ls_k = topk_leaf - lse_leaf.unsqueeze(-1)
        terms = _terms_from_gathered(ls_k, tok_leaf - lse_leaf, lt_k, tok_t, alpha=alpha, mode=mode)
        ratio = clipped_importance_ratio(terms["logp_s"], old, is_clip)
        chunk_loss = (terms["per_token"] * ratio * lw).sum()
        grads = torch.autograd.grad(chunk_loss, leaves, allow_unused=True)
    sums = _stat_sums(terms, ratio, old, is_clip, m)
    g_lse, g_tok = (x if x is not None else torch.zeros_like(lse_s) for x in grads[:2])
    z.mul_((g_lse / sum_s).unsqueeze(-1))  # z becomes g_lse * softmax(z), in place
    z.scatter_add_(-1, col, g_tok.unsqueeze(-1))
    if idx is not None and grads[2] is not None:
        z.scatter_add_(-1, idx, grads[2])
    return chunk_loss.detach(), sums, z


def _chunk_full_vocab(hs, w_s, ht, w_t, ids, m, old, lw, opts):
    """One chunk, full-vocabulary JSD: autograd through the [c, V] log-probs (more [c, V] temporaries)."""
    alpha, _, is_clip, mode, temperature, _ = opts
    zt = _fp32_logits(ht, w_t, temperature)
    with torch.enable_grad():
        z = _fp32_logits(hs, w_s, temperature).requires_grad_(True)
        terms = _per_token_sd(z, zt, ids, alpha=alpha, top_k=None, mode=mode)
        ratio = clipped_importance_ratio(terms["logp_s"], old, is_clip)
        chunk_loss = (terms["per_token"] * ratio * lw).sum()
        (g,) = torch.autograd.grad(chunk_loss, z)
    return chunk_loss.detach(), _stat_sums(terms, ratio, old, is_clip, m), g


class _FusedSDLoss(torch.autograd.Function):
    """Chunked SD loss; its gradients w.r.t. the student's hidden states and lm_head are formed in forward."""

    @staticmethod
    def forward(ctx, h_s, w_s, h_t, w_t, token_ids, mask, logp_old, loss_weight, opts):
        _, top_k, _, mode, temperature, chunk = opts
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.zeros_like(h_s) if need_h else None
        grad_w = torch.zeros(w_s.shape, dtype=torch.float32, device=w_s.device) if need_w else None
        loss = torch.zeros((), dtype=torch.float32, device=h_s.device)
        sums = torch.zeros(len(_STAT_KEYS), dtype=torch.float32, device=h_s.device)
        w_s_d, w_t_d = w_s.detach(), w_t.detach()
        gathered = not (top_k is None and mode == "jsd")
        c = min(chunk, h_s.shape[0])
        buf_s = torch.empty(c, w_s.shape[0], dtype=torch.float32, device=h_s.device) if gathered else None
        buf_t = torch.empty_like(buf_s) if gathered else None
        for start in range(0, h_s.shape[0], chunk):
            sl = slice(start, start + chunk)
            m, lw = mask[sl], loss_weight[sl]
            if not bool((m != 0).any()):
                continue  # fully masked chunk: no loss, no gradient, no matmuls
            hs = h_s[sl].detach()
            old = logp_old[sl] if logp_old is not None else None
            if not gathered:
                chunk_loss, sums_c, g = _chunk_full_vocab(
                    hs, w_s_d, h_t[sl].detach(), w_t_d, token_ids[sl], m, old, lw, opts
                )
            else:
                chunk_loss, sums_c, g = _chunk_gathered(
                    hs, w_s_d, h_t[sl].detach(), w_t_d, token_ids[sl], m, old, lw, opts, buf_s, buf_t
                )
            loss += chunk_loss
            sums += sums_c
            if not (need_h or need_w):
                continue
            if temperature != 1.0:
                g.div_(temperature)  # d logits_raw = d (logits_raw / tau) / tau
            g = g.to(w_s.dtype)
            if need_h:
                grad_h[sl] = (g @ w_s_d).to(h_s.dtype)
            if need_w:
                if g.dtype == torch.float32 and hs.dtype == torch.float32:
                    grad_w.addmm_(g.T, hs)
                else:  # low-precision matmul, fp32 accumulation across chunks (in-place add promotes)
                    grad_w.add_(g.T @ hs.to(g.dtype))
            del g
        ctx.save_for_backward(*(x for x in (grad_h, grad_w) if x is not None))
        ctx.flags = (need_h, need_w, h_s.dtype, w_s.dtype)
        ctx.mark_non_differentiable(sums)
        return loss, sums

    @staticmethod
    def backward(ctx, g_loss, _g_sums):
        need_h, need_w, h_dtype, w_dtype = ctx.flags
        saved = list(ctx.saved_tensors)
        # In place: the saved gradients are used once (no double backward, no second backward through the
        # same graph) and a [V, H] copy would double the lm_head's gradient memory.
        grad_h = saved.pop(0).mul_(g_loss.to(h_dtype)) if need_h else None
        grad_w = saved.pop(0).mul_(g_loss).to(w_dtype) if need_w else None
        return grad_h, grad_w, None, None, None, None, None, None, None


def default_chunk_size(vocab: int, device: torch.device | str = "cpu") -> int:
    """Tokens per chunk: one [chunk, vocab] fp32 buffer of DEFAULT_CHUNK_ELEMS floats on CPU (138 tokens at
    vocab 151,936), CUDA_CHUNK_ELEMS on CUDA (1,766), where large matmuls are what keeps the GPU busy."""
    elems = CUDA_CHUNK_ELEMS if torch.device(device).type == "cuda" else DEFAULT_CHUNK_ELEMS
    return max(16, elems // vocab)


def sd_loss_from_hidden(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    token_ids: torch.Tensor,
    mask: torch.Tensor,
    logp_old: torch.Tensor | None = None,
    *,
    alpha: float = 0.5,
    top_k: int | None = 100,
    is_clip: float | None = 2.0,
    mode: str = "jsd",
    temperature: float = 1.0,
    num_tokens: float | torch.Tensor | None = None,
    chunk_size: int | None = None,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The trainer's entry point: the SD loss of `sd_loss_from_logits`, chunked over tokens.

    student_hidden [N, H]: final hidden states (after the last norm) at the positions that PREDICT each
    response token, already gathered (row i predicts token_ids[i]); student_weight [V, H]: its lm_head.
    teacher_hidden [N, H], teacher_weight [V, H]: the same for the teacher's forward over its richer context
    (the weight may be the student's tensor itself; the teacher side never gets a gradient).
    token_ids [N] sampled tokens; mask [N] response mask times per-sample weight; logp_old [N] log-probs of
    the sampled tokens under the sampling policy (needed when is_clip is set). num_tokens: the token-mean
    denominator when it must span more than this call (gradient accumulation, data parallel); default
    sum(mask). weight [N]: per-token loss weights instead (`aggregation_weights` x
    `rollout_correction_weights`); L = sum_t mask_t weight_t rho_t D_t.

    Peak extra memory is two [chunk_size, V] fp32 buffers (top-k and sampled-token modes; the full-vocabulary
    JSD needs a few more) plus the gradients of the inputs; chunk_size defaults to
    default_chunk_size(V, device). Returns (loss, stats) with the stats of `sd_loss_from_logits`.
    """
    _check_options(alpha, top_k, is_clip, mode, temperature)
    n, hdim = student_hidden.shape
    v = student_weight.shape[0]
    for name, x, shape in (
        ("teacher_hidden", teacher_hidden, (n, hdim)),
        ("student_weight", student_weight, (v, hdim)),
        ("teacher_weight", teacher_weight, (v, hdim)),
        ("token_ids", token_ids, (n,)),
        ("mask", mask, (n,)),
        *([("weight", weight, (n,))] if weight is not None else []),
    ):
        if tuple(x.shape) != shape:
            raise ValueError(f"sd_loss_from_hidden: {name} has shape {tuple(x.shape)}, expected {shape}")
    if logp_old is not None and tuple(logp_old.shape) != (n,):
        raise ValueError(f"sd_loss_from_hidden: logp_old has shape {tuple(logp_old.shape)}, expected {(n,)}")
    chunk = chunk_size or default_chunk_size(v, student_hidden.device)
    m = mask.float()
    lw = _loss_weights(m, weight, num_tokens)
    old = logp_old.float() if logp_old is not None else None
    opts = (alpha, top_k, is_clip, mode, temperature, chunk)
    loss, sums = _FusedSDLoss.apply(
        student_hidden, student_weight, teacher_hidden, teacher_weight, token_ids, m, old, lw, opts
    )
    return loss, _finish_stats(sums, m.sum(), top_k, old, mode)


def _chunk_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, temperature: float):
    logits = (hidden @ weight.T).float() / temperature
    return logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def token_logprobs_from_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    token_ids: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """log softmax(hidden @ weight.T / tau)[token] per row, [N] fp32, differentiable, chunked.

    Each chunk runs under torch.utils.checkpoint, so backward recomputes its logits instead of keeping them:
    memory is one [chunk, V] buffer, at the cost of one extra matmul per chunk.
    """
    chunk = chunk_size or default_chunk_size(weight.shape[0], hidden.device)
    parts = []
    for start in range(0, hidden.shape[0], chunk):
        sl = slice(start, start + chunk)
        if hidden.requires_grad or weight.requires_grad:
            parts.append(
                checkpoint(
                    _chunk_token_logprobs, hidden[sl], weight, token_ids[sl], temperature, use_reentrant=False
                )
            )
        else:
            parts.append(_chunk_token_logprobs(hidden[sl], weight, token_ids[sl], temperature))
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


def grpo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """A_i = r_i - mean_{j in group(i)} r_j; rewards [B] in groups (paper: mean-centred, no std)."""
    if rewards.numel() % group_size:
        raise ValueError(
            f"grpo_advantages: {rewards.numel()} rewards do not split into groups of {group_size}"
        )
    r = rewards.float().view(-1, group_size)
    return (r - r.mean(dim=1, keepdim=True)).view(-1)


def grpo_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    clip_ratio_c: float | None = 3.0,
    num_tokens: float | torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-clip policy loss with clip-higher and dual clip, no KL (the paper's GRPO baseline).

        r_t = exp(clamp(log pi(y_t) - log pi_old(y_t), -20, 20))
        l_t = max(-A r_t, -A clip(r_t, 1 - clip_low, 1 + clip_high))
        l_t = min(l_t, -A c)  where A < 0       (dual clip, c = clip_ratio_c = 3: bounds the loss of a
                                                 negative-advantage token whose ratio ran away; None: off)
        L   = sum_t m_t w_t l_t,  w_t = `weight` or 1 / sum_t m_t (token-mean)

    Paper: verl core_algos.py `compute_policy_loss_vanilla` (clip_ratio_c 3.0 in actor.yaml), the rollout
    correction folded into `weight` as in SDPO. logp_new / logp_old / mask / weight: [B, T] or [N];
    advantages: per token (same shape) or per sequence ([B] with [B, T] inputs). Advantages, logp_old and
    weight are constants.
    """
    if clip_ratio_c is not None and clip_ratio_c <= 1.0:
        raise ValueError(f"losses: clip_ratio_c must be > 1 or None (dual clip off), got {clip_ratio_c}")
    adv = advantages.detach().float()
    if adv.dim() == logp_new.dim() - 1:
        adv = adv.unsqueeze(-1)
    log_ratio = (logp_new.float() - logp_old.detach().float()).clamp(-_LOG_RATIO_BOUND, _LOG_RATIO_BOUND)
    ratio = log_ratio.exp()
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    dual = torch.zeros_like(per_token, dtype=torch.bool)
    if clip_ratio_c is not None:
        bound = -adv * clip_ratio_c
        dual = (adv < 0) & (per_token > bound)
        per_token = torch.where(adv < 0, torch.minimum(per_token, bound), per_token)
    m = mask.float()
    loss = (per_token * _loss_weights(m, weight, num_tokens)).sum()
    with torch.no_grad():
        total = m.sum().clamp(min=1e-12)
        is_clipped = (clipped > unclipped).float()
        stats = {
            "grpo/clip_frac": float((is_clipped * m).sum() / total),
            "grpo/dual_clip_frac": float((dual.float() * m).sum() / total),
            "grpo/ratio": float((ratio * m).sum() / total),
            "grpo/kl_k1_old": float((-log_ratio * m).sum() / total),  # E[log pi_old - log pi] estimate
            "grpo/tokens": float(m.sum()),
        }
    return loss, stats


def marker_token_mask(token_texts: list[str], markers_: tuple[str, ...] | None = None) -> list[float]:
    """The remedy `loss.exclude_markers` (not in the paper): 0 for every response token whose text overlaps
    an occurrence of an epistemic marker (sd_bench.markers.MARKERS, case-insensitive, found in the
    concatenated token texts, so a marker split over several tokens masks all of them), 1 elsewhere.

    Multiplied into the SD loss's token mask, it leaves those tokens out of the distillation sum
        L = 1/|T| sum_t m_t * l_t,   m_t = 0 if token t is part of a marker,
    while |T| still counts every response token: the other tokens' contributions are unchanged. Why: the
    paper's degradation runs through the teacher suppressing "wait"-like tokens (Sec. 4-5); this asks
    whether SD without that pressure keeps the hedge and the accuracy.
    """
    from sd_bench.markers import MARKERS

    markers_ = MARKERS if markers_ is None else markers_
    starts, pos = [], 0
    for text in token_texts:
        starts.append(pos)
        pos += len(text)
    lowered = "".join(token_texts).lower()
    covered = [False] * len(lowered)
    for marker in markers_:
        at = lowered.find(marker)
        while at >= 0:
            covered[at : at + len(marker)] = [True] * len(marker)
            at = lowered.find(marker, at + len(marker))
    return [0.0 if any(covered[a : a + len(t)]) else 1.0 for a, t in zip(starts, token_texts)]


def marker_token_ids(token_texts: list[str], markers_: tuple[str, ...] | None = None) -> list[int]:
    """Vocabulary ids whose decoded text (token_texts[id]) contains an epistemic marker (case-insensitive)."""
    from sd_bench.markers import MARKERS

    markers_ = MARKERS if markers_ is None else markers_
    return [i for i, t in enumerate(token_texts) if any(m in t.lower() for m in markers_)]


@torch.no_grad()
def marker_mass_from_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    marker_ids: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """[N]: the policy's probability of emitting a marker token at each position,
        m_t = sum_{v in markers} softmax(W h_t / T)_v,
    for the remedy `loss.marker_mass_threshold` (positions where hedging is a live choice)."""
    out = []
    for start in range(0, hidden.shape[0], chunk_size):
        logp = torch.log_softmax(
            _fp32_logits(hidden[start : start + chunk_size], weight, temperature), dim=-1
        )
        out.append(logp[:, marker_ids].exp().sum(-1))
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)
