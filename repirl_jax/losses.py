"""Pure math of the dual step (ALGORITHM.md sections 3-4). Each function states its formula.

Shapes: G prompts (groups), K rollouts per prompt, T response tokens, B sequences, V vocab.
Masks are bool; masked-out entries contribute exactly nothing.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

EPS = 1e-8


def masked_sum(x, mask, axis=None):
    return jnp.sum(jnp.where(mask, x, 0.0), axis=axis)


def masked_mean(x, mask, axis=None, denom=None):
    """sum(x * mask) / (denom or max(sum(mask), 1))."""
    d = jnp.maximum(jnp.sum(mask, axis=axis), 1) if denom is None else denom
    return masked_sum(x, mask, axis) / d


def masked_whiten(x, mask, eps: float = EPS):
    """(x - mean) / sqrt(var + eps) with statistics over the masked entries; 0 elsewhere."""
    mean = masked_mean(x, mask)
    var = masked_mean(jnp.square(x - mean), mask)
    return jnp.where(mask, (x - mean) * jax.lax.rsqrt(var + eps), 0.0)


# ------------------------------------------------------------------ log-probs and entropy
def _logp_entropy(h_BLD, w_VD, targets_BL):
    logits = jnp.einsum("bld,vd->blv", h_BLD, w_VD.astype(h_BLD.dtype), preferred_element_type=jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    logp = jnp.take_along_axis(logits, targets_BL[..., None], -1)[..., 0] - lse
    p = jnp.exp(logits - lse[..., None])
    return logp, lse - jnp.sum(p * logits, axis=-1)


def token_logprobs(h_BLD, w_VD, targets_BL, chunk: int = 0):
    """log softmax(h W^T)[target] and the entropy -sum p log p, per position, float32.

    With chunk > 0 the sequence is processed `chunk` positions at a time under jax.checkpoint, so
    at most one chunk's [B, chunk, V] float32 logits exist at once, in the forward and the backward.
    """
    B, L, D = h_BLD.shape
    if chunk <= 0 or chunk >= L:
        return _logp_entropy(h_BLD, w_VD, targets_BL)
    n = -(-L // chunk)
    pad = n * chunk - L
    h = jnp.pad(h_BLD, ((0, 0), (0, pad), (0, 0))).reshape(B, n, chunk, D).swapaxes(0, 1)
    t = jnp.pad(targets_BL, ((0, 0), (0, pad))).reshape(B, n, chunk).swapaxes(0, 1)
    f = jax.checkpoint(lambda hc, tc: _logp_entropy(hc, w_VD, tc))
    _, (lp, ent) = jax.lax.scan(lambda c, xs: (c, f(*xs)), None, (h, t))
    unchunk = lambda x: x.swapaxes(0, 1).reshape(B, n * chunk)[:, :L]
    return unchunk(lp), unchunk(ent)


# ------------------------------------------------------------------ importance weights
def importance_weights(log_w, mask):
    """Self-normalised weights w_hat_j = exp(log_w_j) / sum_{k in mask} exp(log_w_k) over the
    entries where mask is true (exactly 0 elsewhere), computed as a masked softmax in log space,
    so finite for any finite log_w. ess = 1 / sum_j w_hat_j^2 (0 when the mask is empty)."""
    lw = jnp.where(mask, log_w, -jnp.inf)
    m = jnp.max(lw)
    e = jnp.where(mask, jnp.exp(lw - jnp.where(jnp.isfinite(m), m, 0.0)), 0.0)
    total = jnp.sum(e)
    w_hat = jnp.where(total > 0, e / jnp.where(total > 0, total, 1.0), 0.0)
    sq = jnp.sum(w_hat ** 2)
    return w_hat, jnp.where(sq > 0, 1.0 / jnp.where(sq > 0, sq, 1.0), 0.0)


def shape_log_weights(log_w, lengths, mask, *, length_norm: bool, temperature: float, clip: float):
    """[ours] options on log w before normalising: / length, / temperature, and a cap at
    max(log w) - clip (clip > 0), which flattens the largest weights (truncated IS)."""
    if length_norm:
        log_w = log_w / jnp.maximum(lengths, 1)
    log_w = log_w / temperature
    if clip > 0:
        top = jnp.max(jnp.where(mask, log_w, -jnp.inf))
        log_w = jnp.minimum(log_w, top - clip)
    return log_w


# ------------------------------------------------------------------ advantages
def _loo_mean(x_GK):
    """mean_{j != i} x_j within each group (K >= 2)."""
    K = x_GK.shape[-1]
    return (jnp.sum(x_GK, -1, keepdims=True) - x_GK) / (K - 1)


def _baselined(x_GK, estimator: str):
    """Per-rollout scalar minus its group baseline: rloo (leave-one-out mean), grpo
    ((x - mean) / (std + eps)), reinforce (no baseline)."""
    if estimator == "rloo":
        return x_GK - _loo_mean(x_GK)
    if estimator == "grpo":
        mu = jnp.mean(x_GK, -1, keepdims=True)
        return (x_GK - mu) / (jnp.std(x_GK, -1, keepdims=True) + 1e-6)
    if estimator == "reinforce":
        return x_GK
    raise ValueError(f"estimator={estimator!r}")


def _process_baselined(process_GKT, mask_GKT, estimator: str):
    """r'_t(i) = r_t(i) - b_i with b_i from the other rollouts' mean token rewards m_j:
    rloo b_i = mean_{j != i} m_j; grpo (r_t - mean_j m_j) / (std_j m_j + eps); reinforce b = 0."""
    m_GK = masked_mean(process_GKT, mask_GKT, axis=-1)
    if estimator == "rloo":
        return process_GKT - _loo_mean(m_GK)[..., None]
    if estimator == "grpo":
        mu, sd = jnp.mean(m_GK, -1, keepdims=True), jnp.std(m_GK, -1, keepdims=True)
        return (process_GKT - mu[..., None]) / (sd[..., None] + 1e-6)
    return process_GKT


def _position_centred(process_GKT, mask_GKT):
    """r'_t(i) = r_t(i) - mean_{j != i, t < len_j} r_t(j): each token reward minus the other
    rollouts' rewards at the same position (0 where no other rollout reaches t)."""
    m = mask_GKT.astype(jnp.float32)
    x = jnp.where(mask_GKT, process_GKT, 0.0)
    n_others = jnp.sum(m, 1, keepdims=True) - m
    others = (jnp.sum(x, 1, keepdims=True) - x) / jnp.maximum(n_others, 1)
    return jnp.where(mask_GKT & (n_others > 0), process_GKT - others, 0.0)


def process_rewards(process_GKT, mask_GKT, estimator: str = "rloo", mode: str = "token", score: str = "mean"):
    """The process source's per-token rewards p_t(i) before the return-to-go (policy.process_adv):

      token     p_t(i) = r_t(i) - b(m)_i            every token; m_j = mean token reward of rollout j
      position  p_t(i) = r_t(i) - mean_{j != i} r_t(j)   at the same position t (per-position centring)
      last      p_T(i) = s_i - b(s)_i on the last token only, s = the PRM's trajectory score
                (prm.score: mean or sum of token rewards, the energy the PRM was trained on)
    b is the estimator's baseline. A reward pattern that every rollout of the group shares (the
    same value at each position, or for the same token) moves `token` through the return-to-go
    (G_t sums it over the remaining positions) but cancels in `position` and, up to length
    differences, in `last`."""
    mask = mask_GKT.astype(bool)
    if mode == "token":
        return jnp.where(mask, _process_baselined(process_GKT, mask, estimator), 0.0)
    if mode == "position":
        return _position_centred(process_GKT, mask)
    if mode == "last":
        s_GK = trajectory_scores(process_GKT, mask, score)
        return _baselined(s_GK, estimator)[..., None] * _last_token(mask)
    raise ValueError(f"process_adv={mode!r}")


def _last_token(mask_GKT):
    T = mask_GKT.shape[-1]
    return (jnp.arange(T) == (jnp.sum(mask_GKT, -1) - 1)[..., None]) & mask_GKT


def reward_to_go(c_GKT, mask_GKT):
    """G_t = sum_{s >= t} c_s (gamma = 1), 0 where mask is false."""
    return jnp.where(mask_GKT, jnp.flip(jnp.cumsum(jnp.flip(c_GKT, -1), -1), -1), 0.0)


def advantages(outcome_GK, process_GKT, mask_GKT, alpha_o, alpha_p, whiten=False, estimator="rloo",
               process_adv="token", score="mean", credit_GKT=None):
    """Token advantages [G, K, T] (ALGORITHM.md section 4):

        A_o(i)  = r_o(i) - b(r_o)                      on every response token of rollout i (the
                                                       return-to-go of an outcome on its last token),
                                                       or on `credit_GKT`'s tokens (error_credit)
        p_t(i)  = process_rewards(r_phi, mode=process_adv)   (r_t(i) - b(m) for `token`)
        G_t     = alpha_o * A_o(i) [t in credit(i)] + sum_{s >= t} alpha_p * p_s(i)    (gamma = 1)
    0 where mask is false, then whitened over all masked tokens of the batch when `whiten`. b is the
    estimator's baseline.
    """
    mask = mask_GKT.astype(bool)
    span = mask if credit_GKT is None else credit_GKT & mask
    ret = reward_to_go(alpha_p * process_rewards(process_GKT, mask, estimator, process_adv, score), mask)
    ret = ret + jnp.where(span, alpha_o * _baselined(outcome_GK, estimator)[..., None], 0.0)
    return masked_whiten(ret, mask) if whiten else ret


def error_credit(error_GKT, outcome_GK, mask_GKT, only_step=False):
    """[G, K, T] bool: the tokens that carry a rollout's outcome advantage (policy.credit). A failed
    rollout whose error step is located (error_GKT: that step's tokens): the tokens up to the end of
    that step and none after, or with `only_step` that step's tokens alone; every other rollout: all
    its tokens. When the answer is settled by the first wrong step (the chain task: every step a
    bijection, `lucky_rate` ~0.1%), later tokens cannot change the outcome, their policy-gradient
    term has mean zero, and dropping it removes variance without bias. `only_step` also drops the
    blame of the right steps before it: their choice was the right one, so a negative advantage there
    is variance too, but removing it is not unbiased (a right step's own advantage is positive, not
    zero): the ceiling asks whether blaming only the slip helps RL."""
    mask = mask_GKT.astype(bool)
    err = error_GKT & mask
    T = mask.shape[-1]
    last_err = T - 1 - jnp.argmax(jnp.flip(err, -1), -1)
    located = jnp.any(err, -1) & (outcome_GK < 0.5)
    span = err if only_step else jnp.arange(T) <= last_err[..., None]
    return jnp.where(located[..., None], span, mask) & mask


def _step_means(r_GKT, step_GKT, mask_GKT):
    """([G * K, T] mean token reward of each rollout's step s at column s, [G * K, T] bool: step s has tokens)."""
    G, K, T = r_GKT.shape
    seg = (jnp.arange(G * K)[:, None] * T + jnp.clip(step_GKT.reshape(G * K, T), 0, T - 1)).reshape(-1)
    m = mask_GKT.astype(bool).reshape(-1).astype(jnp.float32)
    sums = jax.ops.segment_sum(r_GKT.reshape(-1) * m, seg, G * K * T).reshape(G * K, T)
    counts = jax.ops.segment_sum(m, seg, G * K * T).reshape(G * K, T)
    return sums / jnp.maximum(counts, 1), counts > 0


def _step_tokens(step_GKT, mask_GKT, chosen):
    """[G, K, T] the tokens of each rollout's chosen step (chosen: [G * K] step index)."""
    return (step_GKT == chosen.reshape(step_GKT.shape[:2])[..., None]) & mask_GKT.astype(bool)


def lowest_step(r_GKT, step_GKT, mask_GKT):
    """[G, K, T] the tokens of each rollout's step with the lowest mean token reward (a PRM's guess
    of the failing step; step_GKT: each token's step index, steps.token_steps)."""
    means, has = _step_means(r_GKT, step_GKT, mask_GKT)
    return _step_tokens(step_GKT, mask_GKT, jnp.argmin(jnp.where(has, means, jnp.inf), -1))


def first_low_step(r_GKT, step_GKT, mask_GKT):
    """[G, K, T] the tokens of each rollout's first step whose mean token reward is below the mean of
    its steps' means (the lowest step when none is): the onset of a drop. When the scores of the steps
    after a slip stay low (a PRM that carries "a slip happened" forward), the lowest step is often a
    later one; the first low one is the slip more often (benchmarks/locators.py)."""
    means, has = _step_means(r_GKT, step_GKT, mask_GKT)
    avg = jnp.sum(jnp.where(has, means, 0.0), -1, keepdims=True) / jnp.maximum(jnp.sum(has, -1, keepdims=True), 1)
    below = has & (means < avg)
    lowest = jnp.argmin(jnp.where(has, means, jnp.inf), -1)
    return _step_tokens(step_GKT, mask_GKT, jnp.where(below.any(-1), jnp.argmax(below, -1), lowest))


def random_step(key, step_GKT, mask_GKT):
    """[G, K, T] the tokens of one step of each rollout drawn uniformly among its steps that have
    tokens: the zero-information locator, the null of a PRM's (policy.credit=random_step)."""
    _, has = _step_means(jnp.zeros(step_GKT.shape, jnp.float32), step_GKT, mask_GKT)
    u = jax.random.uniform(key, has.shape)
    return _step_tokens(step_GKT, mask_GKT, jnp.argmax(jnp.where(has, u, -1.0), -1))


def locate_accuracy(located_GKT, error_GKT, outcome_GK, mask_GKT):
    """Over the failed rollouts with an exact error step (error_GKT: its tokens), the fraction whose
    located step (located_GKT: its tokens, e.g. lowest_step) is that step; nan when there is none.
    Steps are disjoint token sets, so "same step" is "any token in common"."""
    mask = mask_GKT.astype(bool)
    err = error_GKT & mask
    scored = jnp.any(err, -1) & (outcome_GK < 0.5)
    hit = jnp.any(located_GKT & err, -1) & scored
    n = jnp.sum(scored)
    return jnp.where(n > 0, jnp.sum(hit) / jnp.maximum(n, 1), jnp.nan)


def shared_and_sample_rms(x_GKT, mask_GKT):
    """(rms of the part of x shared by a group's rollouts at each position, rms of the rest) over
    the masked tokens: shared_t = mean_i x_t(i) over the rollouts that reach t. A process advantage
    whose shared part dominates rewards positions, not the differences between samples."""
    m = mask_GKT.astype(jnp.float32)
    shared = jnp.sum(x_GKT * m, 1, keepdims=True) / jnp.maximum(jnp.sum(m, 1, keepdims=True), 1)
    rms = lambda v: jnp.sqrt(masked_mean(jnp.square(v), mask_GKT))
    return rms(jnp.broadcast_to(shared, x_GKT.shape)), rms(x_GKT - shared)


def rloo_advantages(outcome_GK, process_GKT, mask_GKT, alpha_o, alpha_p, whiten=False):
    """RLOO with a separate leave-one-out baseline per source; see `advantages`."""
    return advantages(outcome_GK, process_GKT, mask_GKT, alpha_o, alpha_p, whiten, "rloo")


# ------------------------------------------------------------------ policy loss
def policy_loss(logp, old_logp, adv, mask, entropy, *, clip_low, clip_high, entropy_coef,
                ref_logp=None, kl_coef=0.0, denom=None):
    """PPO clipped surrogate, token-averaged (sum over masked tokens / denom):

        rho = exp(logp - old_logp)
        L = mean_t max(-A rho, -A clip(rho, 1 - clip_low, 1 + clip_high))
            - entropy_coef * mean_t H_t + kl_coef * mean_t k3(ref || pi)
        k3 = exp(ref_logp - logp) - (ref_logp - logp) - 1
    Returns (loss, metrics): clip fraction, k3 KL of pi to the sampler, entropy."""
    ratio = jnp.exp(logp - old_logp)
    pg1 = -adv * ratio
    pg2 = -adv * jnp.clip(ratio, 1 - clip_low, 1 + clip_high)
    loss = masked_mean(jnp.maximum(pg1, pg2), mask, denom=denom)
    # Without an entropy bonus the entropy is a metric only: no gradient through it (a zero
    # coefficient does not stop XLA from running its backward over [B, T, V]).
    ent = masked_mean(entropy if entropy_coef else jax.lax.stop_gradient(entropy), mask, denom=denom)
    loss = loss - entropy_coef * ent
    log_r = old_logp - logp
    metrics = {"clip_frac": masked_mean((pg2 > pg1).astype(jnp.float32), mask, denom=denom),
               "approx_kl": masked_mean(jnp.exp(log_r) - log_r - 1, mask, denom=denom), "entropy": ent}
    if ref_logp is not None and kl_coef:
        d = ref_logp - logp
        kl = masked_mean(jnp.exp(d) - d - 1, mask, denom=denom)
        loss = loss + kl_coef * kl
        metrics["kl_ref"] = kl
    return loss, metrics


# ------------------------------------------------------------------ PRM losses
def trajectory_scores(r_BT, mask_BT, kind: str = "mean"):
    """s(tau) = mean (or sum) of the token rewards over response tokens."""
    return masked_mean(r_BT, mask_BT, axis=-1) if kind == "mean" else masked_sum(r_BT, mask_BT, axis=-1)


def repirl_loss(s_pos, pos_mask, s_neg, w_hat_neg):
    """L_prm = sum_j w_hat_j s(tau_j) - mean_{tau in P} s(tau),  w_hat = stop_gradient(weights).

    Its gradient is the self-normalised IS estimate of the max-likelihood EBM gradient:
    sum_j w_hat_j grad s(tau_j) - mean_P grad s(tau)."""
    return jnp.sum(jax.lax.stop_gradient(w_hat_neg) * s_neg) - masked_mean(s_pos, pos_mask)


def repirl_coefficients(log_w_GK, pos_GN, neg_GK, *, scope: str = "prompt", weighted: bool = True):
    """Per-trajectory coefficients c of the rePIRL loss L = sum_{g, j} c_gj s_gj over the columns
    [rollouts (K) | experts (N - K)] of every group, and the IS weights and ESS:

      prompt scope  L = (1 / |X|) sum_{x in X} [ sum_{j in N_x} w_hat_xj s_xj - mean_{P_x} s ],
                    w_hat_x = softmax(log w over N_x), X = the prompts with both sets
      batch scope   L = sum_{j in N} w_hat_j s_j - mean_P s   (one softmax over all prompts: ablation)
    weighted=False replaces w_hat by uniform weights over N_x (or N). A constant added to every
    score of one prompt leaves the prompt-scope loss unchanged (both sets of weights sum to 1).
    Returns (c [G, N], w_hat [G, K] (summing to 1 over each N_x, or over N), ess, ess / |N|):
    ess = 1 / sum w_hat^2, per prompt averaged over X (prompt scope) or of the batch."""
    K = neg_GK.shape[1]
    pos, neg = pos_GN.astype(jnp.float32), neg_GK.astype(bool)
    if scope == "batch":
        if weighted:
            w_hat, ess = importance_weights(log_w_GK, neg)
        else:
            w_hat = neg / jnp.maximum(jnp.sum(neg), 1)
            ess = jnp.sum(neg).astype(jnp.float32)
        c = -pos / jnp.maximum(jnp.sum(pos), 1)
        return c.at[:, :K].add(w_hat), w_hat, ess, ess / jnp.maximum(jnp.sum(neg), 1)
    if weighted:
        w_hat, ess_G = jax.vmap(importance_weights)(log_w_GK, neg)
    else:
        n = jnp.sum(neg, 1, keepdims=True)
        w_hat, ess_G = neg / jnp.maximum(n, 1), n[:, 0].astype(jnp.float32)
    n_pos = jnp.sum(pos, 1, keepdims=True)
    valid = (n_pos[:, 0] > 0) & neg.any(1)
    scale = jnp.where(valid, 1.0 / jnp.maximum(jnp.sum(valid), 1), 0.0)[:, None]
    c = (-pos / jnp.maximum(n_pos, 1)).at[:, :K].add(w_hat) * scale
    frac = ess_G / jnp.maximum(jnp.sum(neg, 1), 1)
    return c, w_hat, masked_mean(ess_G, valid), masked_mean(frac, valid)


def bce_with_logits(logit, label):
    """-[y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))] = softplus(z) - y z.

    softplus, not max(z, 0) + log1p(exp(-|z|)): that form's autodiff gradient at z = 0 is -y
    instead of sigmoid(0) - y, and z = 0 is exactly where the implicit PRM starts (phi = ref)."""
    return jax.nn.softplus(logit) - logit * label


def prime_loss(R_rollouts, outcome, mask):
    """PRIME: mean BCE(sigmoid(sum_t r_phi,t), r_o) over rollouts."""
    return masked_mean(bce_with_logits(R_rollouts, outcome), mask)


def discriminator_loss(s_expert, expert_mask, s_policy, policy_mask):
    """AIRL/GAIL-style: mean BCE(sigmoid(s), 1) over experts and BCE(sigmoid(s), 0) over policy
    samples, each trajectory weighted equally."""
    n = jnp.maximum(jnp.sum(expert_mask) + jnp.sum(policy_mask), 1)
    return (masked_sum(bce_with_logits(s_expert, 1.0), expert_mask)
            + masked_sum(bce_with_logits(s_policy, 0.0), policy_mask)) / n


def ranking_accuracy(s_GK, outcome_GK, valid_GK):
    """Fraction of (correct, wrong) rollout pairs of the same prompt with s(correct) > s(wrong)
    (ties count 1/2); nan when the batch has no such pair."""
    pos = (outcome_GK > 0.5) & valid_GK
    neg = (outcome_GK <= 0.5) & valid_GK
    pair = pos[:, :, None] & neg[:, None, :]
    d = s_GK[:, :, None] - s_GK[:, None, :]
    won = jnp.where(d > 0, 1.0, jnp.where(d == 0, 0.5, 0.0))
    n = jnp.sum(pair)
    return jnp.where(n > 0, masked_sum(won, pair) / jnp.maximum(n, 1), jnp.nan)
