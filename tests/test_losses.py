"""Every loss against a slow numpy reference written here, on random inputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from repirl_jax import losses

rng = np.random.RandomState(0)


@pytest.fixture(autouse=True)
def _reseed():
    """Same random inputs for each test whatever order (or xdist worker) runs it."""
    rng.seed(0)


def ref_importance_weights(log_w, mask):
    lw = np.asarray(log_w, np.float64)[mask]
    w = np.zeros(np.shape(log_w))
    if lw.size:
        e = np.exp(lw - lw.max())
        w[mask] = e / e.sum()
    return w, (1 / np.sum(w ** 2) if lw.size else 0.0)


@pytest.mark.parametrize("scale", [1.0, 50.0, 1e3, 1e5])
def test_importance_weights_log_space_extremes(scale):
    log_w = (rng.randn(37) * scale).astype(np.float32)
    mask = rng.rand(37) < 0.6
    w, ess = losses.importance_weights(jnp.asarray(log_w), jnp.asarray(mask))
    w_ref, ess_ref = ref_importance_weights(log_w, mask)
    assert np.isfinite(w).all() and np.isfinite(ess)
    np.testing.assert_allclose(w, w_ref, atol=1e-6)
    assert np.all(np.asarray(w)[~mask] == 0.0)
    np.testing.assert_allclose(ess, ess_ref, rtol=1e-4)


def test_importance_weights_empty_mask_and_huge_equal_values():
    w, ess = losses.importance_weights(jnp.full((5,), 1e5), jnp.zeros(5, bool))
    assert np.all(np.asarray(w) == 0) and float(ess) == 0.0
    w, ess = losses.importance_weights(jnp.array([1e5, 1e5, -1e5, 3.0]), jnp.array([True, True, True, False]))
    np.testing.assert_allclose(w, [0.5, 0.5, 0.0, 0.0])
    assert float(ess) == pytest.approx(2.0)


def ref_advantages(outcome, process, mask, alpha_o, alpha_p, whiten, estimator):
    G, K, T = process.shape
    adv = np.zeros((G, K, T))
    m = np.array([[process[g, k][mask[g, k]].mean() if mask[g, k].any() else 0.0 for k in range(K)] for g in range(G)])
    for g in range(G):
        for i in range(K):
            others = [j for j in range(K) if j != i]
            if estimator == "rloo":
                a_o = outcome[g, i] - np.mean(outcome[g, others])
                b_p = np.mean(m[g, others])
                proc = process[g, i] - b_p
            elif estimator == "grpo":
                a_o = (outcome[g, i] - outcome[g].mean()) / (outcome[g].std() + 1e-6)
                proc = (process[g, i] - m[g].mean()) / (m[g].std() + 1e-6)
            else:
                a_o, proc = outcome[g, i], process[g, i]
            L = int(mask[g, i].sum())
            c = alpha_p * np.where(mask[g, i], proc, 0.0)
            if L:
                c[L - 1] += alpha_o * a_o
            for t in range(T):
                adv[g, i, t] = c[t:].sum() if mask[g, i, t] else 0.0
    if whiten:
        v = adv[mask]
        adv = np.where(mask, (adv - v.mean()) / np.sqrt(v.var() + 1e-8), 0.0)
    return adv


@pytest.mark.parametrize("estimator", ["rloo", "grpo", "reinforce"])
@pytest.mark.parametrize("whiten", [False, True])
def test_advantages_match_reference(estimator, whiten):
    G, K, T = 3, 4, 7
    outcome = (rng.rand(G, K) < 0.5).astype(np.float32)
    process = rng.randn(G, K, T).astype(np.float32)
    lens = rng.randint(1, T + 1, (G, K))
    mask = np.arange(T) < lens[..., None]
    got = losses.advantages(outcome, process, mask, 1.0, 0.1, whiten, estimator)
    np.testing.assert_allclose(got, ref_advantages(outcome, process, mask, 1.0, 0.1, whiten, estimator), atol=1e-5)
    if estimator == "rloo":
        np.testing.assert_allclose(losses.rloo_advantages(outcome, process, mask, 1.0, 0.1, whiten), got, atol=1e-6)


def test_rloo_outcome_only_is_leave_one_out():
    out = np.array([[1.0, 0.0, 0.0, 1.0]])
    mask = np.ones((1, 4, 3), bool)
    adv = np.asarray(losses.rloo_advantages(out, np.zeros((1, 4, 3)), mask, 1.0, 0.0))
    np.testing.assert_allclose(adv[0, :, 0], [1 - 1 / 3, -2 / 3, -2 / 3, 1 - 1 / 3], atol=1e-6)
    assert np.allclose(adv[0, :, 0], adv[0, :, 2])  # gamma = 1: the last-token reward reaches t = 0


def test_policy_loss_matches_reference():
    B, T = 4, 6
    logp, old = rng.randn(B, T) * 0.3 - 2, rng.randn(B, T) * 0.3 - 2
    adv, ent, ref = rng.randn(B, T), rng.rand(B, T) * 3, rng.randn(B, T) * 0.3 - 2
    mask = rng.rand(B, T) < 0.7
    loss, m = losses.policy_loss(logp, old, adv, mask, ent, clip_low=0.2, clip_high=0.28, entropy_coef=0.01,
                                 ref_logp=ref, kl_coef=0.1)
    r = np.exp(logp - old)
    pg = np.maximum(-adv * r, -adv * np.clip(r, 0.8, 1.28))
    d = ref - logp
    want = pg[mask].mean() - 0.01 * ent[mask].mean() + 0.1 * (np.exp(d) - d - 1)[mask].mean()
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(m["clip_frac"], (-adv * np.clip(r, 0.8, 1.28) > -adv * r)[mask].mean(), rtol=1e-6)


def test_repirl_gradient_is_self_normalised_estimator():
    """d/dphi of L_prm with s = phi . features equals sum_j w_j f_j - mean_P f (the EBM gradient)."""
    n_pos, n_neg, d = 5, 7, 3
    f_pos, f_neg = rng.randn(n_pos, d), rng.randn(n_neg, d)
    logpi = rng.randn(n_neg) * 3
    phi = jnp.asarray(rng.randn(d))
    mask_neg = np.ones(n_neg, bool)

    def loss(phi):
        s_pos, s_neg = f_pos @ phi, f_neg @ phi
        w, _ = losses.importance_weights(s_neg * 4 - logpi, mask_neg)  # R = sum of 4 equal token rewards
        return losses.repirl_loss(s_pos, np.ones(n_pos, bool), s_neg, w)

    g = jax.grad(loss)(phi)
    lw = 4 * (f_neg @ np.asarray(phi)) - logpi
    w = np.exp(lw - lw.max())
    w /= w.sum()
    np.testing.assert_allclose(g, w @ f_neg - f_pos.mean(0), rtol=1e-5, atol=1e-6)


def test_bce_losses_match_reference():
    z, y = rng.randn(9) * 5, (rng.rand(9) < 0.5).astype(np.float64)
    mask = rng.rand(9) < 0.8
    sig = 1 / (1 + np.exp(-z))
    bce = -(y * np.log(sig) + (1 - y) * np.log(1 - sig))
    np.testing.assert_allclose(losses.prime_loss(z, y, mask), bce[mask].mean(), rtol=1e-5)
    se, sp = rng.randn(4), rng.randn(6)
    me, mp = np.array([1, 1, 0, 1], bool), np.ones(6, bool)
    want = (np.sum(np.log1p(np.exp(-se))[me]) + np.sum(np.log1p(np.exp(sp)))) / (me.sum() + 6)
    np.testing.assert_allclose(losses.discriminator_loss(se, me, sp, mp), want, rtol=1e-5)


def test_bce_gradient_is_sigmoid_minus_label_even_at_zero():
    """The implicit PRM starts at r = 0 exactly (phi = ref): the gradient there must be right."""
    y = jnp.array([1.0, 0.0, 1.0, 0.0])
    for z in (jnp.zeros(4), jnp.array([3.0, -2.0, 1e-7, -40.0])):
        g = jax.grad(lambda z: jnp.sum(losses.bce_with_logits(z, y)))(z)
        np.testing.assert_allclose(g, jax.nn.sigmoid(z) - y, atol=1e-7)


def test_ranking_accuracy_with_ties():
    s = np.array([[3.0, 1.0, 1.0, 2.0], [0.0, 0.0, 5.0, 5.0]])
    out = np.array([[1, 0, 1, 0], [1, 0, 0, 0]], np.float32)
    valid = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], bool)
    # group 0: pos {3, 1}, neg {1, 2}: (3>1) 1, (3>2) 1, (1=1) .5, (1<2) 0 -> 2.5 / 4
    # group 1: pos {0}, neg {0, 5} (last invalid): (0=0) .5, (0<5) 0 -> .5 / 2
    np.testing.assert_allclose(losses.ranking_accuracy(s, out, valid), 3.0 / 6)
    assert np.isnan(losses.ranking_accuracy(s, np.ones_like(out), valid))


def test_trajectory_scores_and_whiten():
    r = rng.randn(3, 5)
    m = rng.rand(3, 5) < 0.7
    m[:, 0] = True
    np.testing.assert_allclose(losses.trajectory_scores(r, m, "mean"), [r[i][m[i]].mean() for i in range(3)],
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(losses.trajectory_scores(r, m, "sum"), [r[i][m[i]].sum() for i in range(3)],
                               rtol=1e-6, atol=1e-6)
    w = np.asarray(losses.masked_whiten(jnp.asarray(r), m))
    assert abs(w[m].mean()) < 1e-5 and abs(w[m].std() - 1) < 1e-3 and np.all(w[~m] == 0)


def test_shape_log_weights_options():
    lw, lens, mask = jnp.array([10.0, 4.0, -2.0]), jnp.array([5, 2, 1]), jnp.array([True, True, True])
    np.testing.assert_allclose(losses.shape_log_weights(lw, lens, mask, length_norm=True, temperature=1.0, clip=0),
                               [2.0, 2.0, -2.0])
    np.testing.assert_allclose(losses.shape_log_weights(lw, lens, mask, length_norm=False, temperature=2.0, clip=0),
                               [5.0, 2.0, -1.0])
    np.testing.assert_allclose(losses.shape_log_weights(lw, lens, mask, length_norm=False, temperature=1.0, clip=3),
                               [7.0, 4.0, -2.0])


@pytest.mark.parametrize("chunk", [0, 3, 4])
def test_chunked_token_logprobs_equal_reference_and_grads(chunk):
    B, L, D, V = 2, 10, 8, 23
    h, w = jnp.asarray(rng.randn(B, L, D), jnp.float32), jnp.asarray(rng.randn(V, D), jnp.float32)
    t = jnp.asarray(rng.randint(0, V, (B, L)))
    lp, ent = losses.token_logprobs(h, w, t, chunk)
    logits = np.asarray(h, np.float64) @ np.asarray(w, np.float64).T
    logp_all = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    np.testing.assert_allclose(lp, np.take_along_axis(logp_all, np.asarray(t)[..., None], -1)[..., 0], atol=1e-4)
    np.testing.assert_allclose(ent, -(np.exp(logp_all) * logp_all).sum(-1), atol=1e-4)
    f = lambda h, w, c: jnp.sum(losses.token_logprobs(h, w, t, c)[0]) + jnp.sum(losses.token_logprobs(h, w, t, c)[1])
    g0, g1 = jax.grad(f, argnums=(0, 1))(h, w, 0), jax.grad(f, argnums=(0, 1))(h, w, chunk)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), g0, g1)


def ref_repirl_loss(s, pos, neg, log_w, scope, weighted):
    """L of ALGORITHM.md section 3 by loops: per prompt (or one batch-wide) softmax over N, mean over P."""
    G, N = s.shape
    K = neg.shape[1]
    if scope == "batch":
        idx = [(g, j) for g in range(G) for j in range(K) if neg[g, j]]
        lw = np.array([log_w[g, j] for g, j in idx])
        w = np.exp(lw - lw.max()) / np.exp(lw - lw.max()).sum() if weighted else np.full(len(idx), 1 / len(idx))
        p = [s[g, j] for g in range(G) for j in range(N) if pos[g, j]]
        return sum(wi * s[g, j] for wi, (g, j) in zip(w, idx)) - np.mean(p)
    terms = []
    for g in range(G):
        nj = [j for j in range(K) if neg[g, j]]
        pj = [j for j in range(N) if pos[g, j]]
        if not nj or not pj:
            continue
        lw = log_w[g, nj]
        w = np.exp(lw - lw.max()) / np.exp(lw - lw.max()).sum() if weighted else np.full(len(nj), 1 / len(nj))
        terms.append(np.dot(w, s[g, nj]) - s[g, pj].mean())
    return np.mean(terms)


@pytest.mark.parametrize("scope", ["prompt", "batch"])
@pytest.mark.parametrize("weighted", [True, False])
def test_repirl_coefficients_match_reference(scope, weighted):
    G, K, E = 5, 4, 2
    s = rng.randn(G, K + E)
    log_w = rng.randn(G, K) * 3
    neg = rng.rand(G, K) < 0.5
    neg[0] = False  # a prompt without negatives is left out (prompt scope)
    pos = np.concatenate([~neg & (rng.rand(G, K) < 0.7), np.ones((G, E), bool)], 1)
    pos[1] = False  # nor one without positives
    neg[1, 0] = True
    c, w_hat, ess, frac = losses.repirl_coefficients(jnp.asarray(log_w), jnp.asarray(pos), jnp.asarray(neg),
                                                     scope=scope, weighted=weighted)
    np.testing.assert_allclose(float(jnp.sum(c * s)), ref_repirl_loss(s, pos, neg, log_w, scope, weighted),
                               rtol=1e-5, atol=1e-6)
    assert np.isfinite(ess) and 0 < float(frac) <= 1


def test_per_prompt_loss_ignores_a_constant_per_prompt():
    """Adding a constant to every score of one prompt changes neither the loss nor its gradient
    (the per-prompt partition function); the batch-wide ablation is moved by it."""
    G, K, E = 4, 4, 1
    s = jnp.asarray(rng.randn(G, K + E))
    lp = jnp.asarray(rng.randn(G, K) * 2 - 20)  # log pi_old of each rollout
    neg = jnp.asarray(rng.rand(G, K) < 0.6).at[:, 0].set(True)
    pos = jnp.concatenate([~neg, jnp.ones((G, E), bool)], 1)
    shift = jnp.zeros((G, 1)).at[2].set(5.0)

    def loss(scores, scope):
        c, *_ = losses.repirl_coefficients(scores[:, :K] - lp, pos, neg, scope=scope)  # log w = E - log pi_old
        return jnp.sum(jax.lax.stop_gradient(c) * scores)

    for scope, same in (("prompt", True), ("batch", False)):
        a, b = loss(s, scope), loss(s + shift, scope)
        ga, gb = jax.grad(loss)(s, scope), jax.grad(loss)(s + shift, scope)
        assert np.isclose(a, b, atol=1e-5) == same
        assert np.allclose(ga, gb, atol=1e-6) == same


def ref_process_rewards(process, mask, mode, score="mean"):
    G, K, T = process.shape
    out = np.zeros((G, K, T))
    m = np.array([[process[g, k][mask[g, k]].mean() for k in range(K)] for g in range(G)])
    s = np.array([[getattr(process[g, k][mask[g, k]], score)() for k in range(K)] for g in range(G)])
    for g in range(G):
        for i in range(K):
            others = [j for j in range(K) if j != i]
            L = int(mask[g, i].sum())
            for t in range(L):
                if mode == "token":
                    out[g, i, t] = process[g, i, t] - m[g, others].mean()
                elif mode == "position":
                    at = [process[g, j, t] for j in others if mask[g, j, t]]
                    out[g, i, t] = process[g, i, t] - np.mean(at) if at else 0.0
            if mode == "last":
                out[g, i, L - 1] = s[g, i] - s[g, others].mean()
    return out


@pytest.mark.parametrize("mode,score", [("token", "mean"), ("position", "mean"), ("last", "mean"), ("last", "sum")])
def test_process_rewards_match_reference(mode, score):
    """`last` baselines the PRM's own trajectory score (prm.score), the energy it was trained on."""
    G, K, T = 3, 4, 6
    process = rng.randn(G, K, T)
    mask = np.arange(T) < rng.randint(1, T + 1, (G, K))[..., None]
    got = losses.process_rewards(jnp.asarray(process), jnp.asarray(mask), "rloo", mode, score)
    np.testing.assert_allclose(got, ref_process_rewards(process, mask, mode, score), atol=1e-5)


def test_a_shared_pattern_moves_only_the_token_mode():
    """A reward that depends only on the position (the same for every rollout) shifts the token
    mode's advantages; per-position centring and the last-token score do not see it."""
    G, K, T = 2, 4, 5
    process = rng.randn(G, K, T)
    mask = np.ones((G, K, T), bool)
    pattern = np.array([3.0, -3.0, 3.0, 3.0, -1.0])
    outcome = np.zeros((G, K))
    for mode, moved in (("token", True), ("position", False), ("last", False)):
        a = losses.advantages(outcome, process, mask, 1.0, 1.0, False, "rloo", mode)
        b = losses.advantages(outcome, process + pattern, mask, 1.0, 1.0, False, "rloo", mode)
        assert (not np.allclose(a, b, atol=1e-5)) == moved, mode
    shared, per = losses.shared_and_sample_rms(jnp.asarray(np.broadcast_to(pattern, (G, K, T))), jnp.asarray(mask))
    assert float(per) < 1e-6 and float(shared) == pytest.approx(np.sqrt(np.mean(pattern ** 2)), rel=1e-5)


def test_error_credit_and_lowest_step_match_reference():
    """A failed rollout's outcome credit covers the tokens up to the end of its located error step
    and none after (only_step: that step's tokens alone); correct rollouts, failed ones with no
    located step and the lowest-mean-reward step guess are checked against loops."""
    G, K, T = 3, 4, 9
    lens = rng.randint(1, T + 1, (G, K))
    mask = np.arange(T) < lens[..., None]
    step = np.cumsum(rng.rand(G, K, T) < 0.35, -1)  # each token's line index
    r = rng.randn(G, K, T).astype(np.float32)
    outcome = (rng.rand(G, K) < 0.4).astype(np.float32)
    low = np.asarray(losses.lowest_step(jnp.asarray(r), jnp.asarray(step), jnp.asarray(mask)))
    onset = np.asarray(losses.first_low_step(jnp.asarray(r), jnp.asarray(step), jnp.asarray(mask)))
    err = rng.rand(G, K, T) < 0.3
    credit, only = (np.asarray(losses.error_credit(jnp.asarray(err), jnp.asarray(outcome), jnp.asarray(mask), s))
                    for s in (False, True))
    for g in range(G):
        for k in range(K):
            L = lens[g, k]
            means = {s: r[g, k, :L][step[g, k, :L] == s].mean() for s in set(step[g, k, :L])}
            worst = min(means, key=means.get)
            np.testing.assert_array_equal(low[g, k], (step[g, k] == worst) & mask[g, k])
            avg = np.mean(list(means.values()))
            first = min((s for s in means if means[s] < avg), default=worst)
            np.testing.assert_array_equal(onset[g, k], (step[g, k] == first) & mask[g, k])
            e = np.flatnonzero(err[g, k, :L])
            located = outcome[g, k] == 0 and len(e)
            at = e[-1] if located else L - 1
            np.testing.assert_array_equal(credit[g, k], (np.arange(T) <= at) & mask[g, k])
            np.testing.assert_array_equal(only[g, k], err[g, k] & mask[g, k] if located else mask[g, k])
    # random_step: exactly one step that has tokens, each of them about equally often over keys
    counts = np.zeros((G, K, T))
    for i in range(200):
        pick = np.asarray(losses.random_step(jax.random.key(i), jnp.asarray(step), jnp.asarray(mask)))
        for g in range(G):
            for k in range(K):
                picked = set(step[g, k][pick[g, k]])
                assert len(picked) == 1 and np.array_equal(pick[g, k], (step[g, k] == picked.pop()) & mask[g, k])
        counts += pick
    for g in range(G):
        for k in range(K):
            present = sorted(set(step[g, k, :lens[g, k]]))
            freq = np.array([counts[g, k][(step[g, k] == s) & mask[g, k]][0] for s in present]) / 200
            assert np.all(np.abs(freq - 1 / len(present)) < 0.15), (freq, present)
    # locate_accuracy: over failed rollouts with an error token, the located step holds one of them
    scored = [(g, k) for g in range(G) for k in range(K) if outcome[g, k] == 0 and (err[g, k] & mask[g, k]).any()]
    want = np.mean([(low[g, k] & err[g, k]).any() for g, k in scored])
    got = losses.locate_accuracy(jnp.asarray(low), jnp.asarray(err), jnp.asarray(outcome), jnp.asarray(mask))
    assert float(got) == pytest.approx(want)
    assert np.isnan(float(losses.locate_accuracy(jnp.asarray(low), jnp.asarray(err), jnp.ones((G, K)), jnp.asarray(mask))))
    a_o = np.asarray(losses.advantages(outcome, np.zeros((G, K, T)), mask, 1.0, 0.0, False, "rloo"))[..., 0]
    for span in (credit, only):
        adv = np.asarray(losses.advantages(outcome, np.zeros((G, K, T)), mask, 1.0, 0.0, False, "rloo",
                                           credit_GKT=jnp.asarray(span)))
        np.testing.assert_allclose(adv, np.where(span, a_o[..., None], 0.0), atol=1e-6)
