"""The dual step: sharded == single device, no retracing, it learns a toy task, `none` is RLOO."""
import dataclasses

import jax
import numpy as np
import pytest

from repirl_jax import models, prm, sampling
from repirl_jax import train_step as ts
from repirl_jax.config import ConfigError, MeshConfig, OptimConfig, PolicyConfig, PRMConfig
from repirl_jax.sharding import Layout
from tests.helpers import trees_equal

CFG = models.ModelConfig(family="llama", vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=2,
                         num_heads=4, num_kv_heads=2, head_dim=8)
TARGET = 5  # toy task: a response is correct when it contains this token


def fresh_params(seed):
    return models.init_params(CFG, jax.random.key(seed))


def synthetic_batch(rng, G=8, K=4, E=2, P=5, T=8):
    roll = rng.randint(0, 32, (G, K, T)).astype(np.int32)
    rmask = np.arange(T) < rng.randint(2, T + 1, (G, K))[..., None]
    outcome = ((roll == TARGET) & rmask).any(-1).astype(np.float32)
    expert = np.where(rng.rand(G, E, T) < 0.5, TARGET, rng.randint(0, 32, (G, E, T))).astype(np.int32)
    emask = np.arange(T) < rng.randint(3, T + 1, (G, E))[..., None]
    emask[0, 1] = False  # a missing expert
    return ts.Batch(prompt_GP=rng.randint(0, 32, (G, P)).astype(np.int32),
                    prompt_mask_GP=np.arange(P) >= rng.randint(0, 3, (G, 1)),
                    rollout_GKT=roll, rollout_mask_GKT=rmask,
                    sampler_logp_GKT=(-3.4 + 0.1 * rng.randn(G, K, T)).astype(np.float32),
                    outcome_GK=outcome, format_GK=np.zeros((G, K), np.float32), expert_GET=expert,
                    expert_mask_GET=emask)


def step_config(lr=1e-3, eps=1e-8, **prm_kw):
    prm_kw = dict(minibatches=2, microbatches=2, optim=OptimConfig(lr=10 * lr, grad_clip=10.0, eps=eps)) | prm_kw
    return ts.StepConfig(CFG, CFG, PRMConfig(**prm_kw),
                         PolicyConfig(minibatches=2, microbatches=2, optim=OptimConfig(lr=lr, eps=eps)))


def run_steps(cfg, layout, batches):
    step = ts.make_train_step(cfg, layout)
    pol, trunk = fresh_params(0), fresh_params(1)
    if layout is not None:
        put = lambda p: jax.device_put(p, layout.shardings(models.param_axes(CFG), p))
        pol, trunk = put(pol), put(trunk)
    state = ts.init_state(cfg, pol, trunk)
    if layout is not None:
        state = jax.device_put(state, step.state_shardings)
    metrics = []
    for b in batches:
        state, m = step(state, b)
        metrics.append(jax.device_get(m))
    return state, metrics, step


@pytest.mark.slow
@pytest.mark.parametrize("form,loss,score,trunk_loss", [("head", "repirl", "sum", "repirl"),
                                                        ("implicit", "prime", "mean", "repirl"),
                                                        ("head_logprob", "repirl", "sum", "sft")])
def test_sharded_step_equals_single_device(form, loss, score, trunk_loss):
    """On the (2,2,2) and (1,2,4) meshes (one single-device reference for both), every step's losses
    and gradient norms agree to 1e-4; the params after 3 steps to 1e-5.

    Adam divides each gradient element by its own running RMS, so float-rounding noise in an
    element whose true gradient is ~0 becomes an update of up to one learning rate. With eps 1e-8
    that broke 1e-5 on 4 of 1024 policy elements and on the PRM head bias, whose gradient under
    the mean-score repirl loss is exactly 0 (sum_j w_j = 1 = mean_P 1), so this test uses the sum
    score, where that gradient is real (the bias is harmless there: a constant token reward cancels
    in the loss and in the process baseline). Adam's eps at 1e-6 damps
    updates of noise-sized gradients; lr 1e-4 (PRM 1e-3) bounds the rest (at lr 1e-3 one
    embedding element of a rare token still moved 1.4e-5). The paper's rates are 5e-7 / 3e-8."""
    rng = np.random.RandomState(0)
    batches = [synthetic_batch(rng) for _ in range(3)]
    cfg = step_config(lr=1e-4, eps=1e-6, form=form, loss=loss, score=score, trunk_loss=trunk_loss)
    want, want_m, _ = run_steps(cfg, None, batches)
    for shape in [(2, 2, 2)] + ([(1, 2, 4)] if trunk_loss == "repirl" else []):  # sft: the trunk's paths, one mesh
        layout = Layout.from_config(MeshConfig(shape=shape))
        got, got_m, step = run_steps(cfg, layout, batches)
        assert step.traces() == 1
        assert got.policy["layers"]["wq"].sharding.spec == layout.spec(("layers", "embed", "heads", "head_dim"),
                                                                       got.policy["layers"]["wq"].shape)
        for a, b in zip(jax.tree.leaves((got.policy, got.prm)), jax.tree.leaves((want.policy, want.prm))):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, err_msg=str(shape))
        for gm, wm in zip(got_m, want_m):
            for k in wm:
                np.testing.assert_allclose(gm[k], wm[k], atol=1e-4, rtol=1e-4, err_msg=f"{shape} {k}")


@pytest.mark.parametrize("form,loss,alpha_o", [("head", "repirl", 1.0), ("implicit", "repirl", 1.0),
                                               ("shared", "repirl", 1.0), ("head", "discriminator", 1.0),
                                               ("implicit", "prime", 1.0), ("head", "repirl", 0.0),
                                               ("head_logprob", "repirl", 1.0), ("head", "orm", 1.0),
                                               ("head", "oracle", 1.0)])
def test_every_variant_steps_without_nan_or_retrace(form, loss, alpha_o):
    """alpha_o = 0: PRM-only reward plus the format reward (test-time-training style). trunk_loss=sft:
    test_sharded_step_equals_single_device (3 steps, one trace each)."""
    rng = np.random.RandomState(1)
    cfg = step_config(form=form, loss=loss, is_scope="prompt", is_clip=2.0, reward_l2=0.01)
    cfg = dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, alpha_o=alpha_o, estimator="grpo"
                                                              if alpha_o == 0 else "rloo"))
    batches = [synthetic_batch(rng) for _ in range(3)]
    for b in batches:
        b.format_GK = -(rng.rand(*b.format_GK.shape) < 0.3).astype(np.float32)
        if loss == "oracle":  # exact step labels: right, then the first wrong step (0), then unlabelled (-1)
            t, k = np.arange(b.rollout_GKT.shape[-1]), rng.randint(0, 6, b.outcome_GK.shape)[..., None]
            b.step_ok_GKT = np.where(t < k, 1.0, np.where(t < k + 2, 0.0, -1.0)).astype(np.float32)
    state, metrics, step = run_steps(cfg, None, batches)
    assert step.traces() == 1 and int(state.step) == 3
    assert not np.array_equal(state.rng, ts.init_state(cfg, fresh_params(0), fresh_params(1)).rng)
    for m in metrics:
        for k, v in m.items():
            assert np.isfinite(v) or k.startswith("ranking"), (k, v)
    assert {"prm_loss", "ess", "ess_frac", "max_weight", "reward_gap", "ranking_acc", "clip_frac", "approx_kl",
            "entropy", "zero_adv_group_frac", "policy_grad_norm", "prm_grad_norm"} <= set(metrics[-1])


def test_none_is_plain_outcome_rloo():
    """loss=none updates the policy exactly as rePIRL with alpha_p = 0 does, and never the PRM."""
    rng = np.random.RandomState(2)
    batch = synthetic_batch(rng)
    none_state, m, _ = run_steps(step_config(loss="none"), None, [batch])
    cfg = step_config()
    cfg = dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, alpha_p=0.0))
    ref_state, _, _ = run_steps(cfg, None, [batch])
    for a, b in zip(jax.tree.leaves(none_state.policy), jax.tree.leaves(ref_state.policy)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert not np.any(np.asarray(none_state.prm["head"]["w"])) and "prm_loss" not in m[0]


def test_frozen_prm_rewards_without_updating_it():
    """loss=frozen (test-time training): a given PRM shapes the policy's reward and is never updated."""
    rng = np.random.RandomState(3)
    batch = synthetic_batch(rng)
    results = {}
    for loss in ("frozen", "none"):
        cfg = step_config(loss=loss)
        cfg = dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, alpha_o=0.0, alpha_p=1.0))
        step = ts.make_train_step(cfg)
        state = ts.init_state(cfg, fresh_params(0), fresh_params(1))
        head = {"w": jax.numpy.asarray(rng.randn(CFG.hidden_size), jax.numpy.float32), "b": jax.numpy.float32(0.3)}
        state = dataclasses.replace(state, prm={**state.prm, "head": head})
        before = jax.tree.map(np.asarray, state.prm)
        state, m = step(state, batch)
        results[loss] = (state, jax.device_get(m), before)
    state, m, before = results["frozen"]
    assert trees_equal(before, state.prm) and "prm_loss" not in m and abs(m["process_reward_mean"]) > 0
    none_policy = results["none"][0].policy  # no outcome weight and no PRM: only the entropy bonus moves it
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(state.policy), jax.tree.leaves(none_policy)))


def test_fifty_steps_learn_the_toy_task():
    """Real rollouts from the sampler; the PRM learns that the target token marks success."""
    G, K, E, P, T = 8, 4, 2, 4, 8
    cfg = ts.StepConfig(CFG, CFG, PRMConfig(optim=OptimConfig(lr=3e-3, grad_clip=10.0)),
                        PolicyConfig(alpha_p=0.1, optim=OptimConfig(lr=3e-4)))
    step = ts.make_train_step(cfg)
    state = ts.init_state(cfg, fresh_params(0), fresh_params(1))
    rng = np.random.RandomState(3)
    hist = []
    for i in range(50):
        prompts = rng.randint(0, 32, (G, P)).astype(np.int32)
        out = sampling.generate(CFG, state.policy, prompts.tolist(), max_new_tokens=T, temperature=1.0,
                                num_samples=K, seed=i)
        roll = out.tokens.reshape(G, K, T)
        mask = out.mask.reshape(G, K, T)
        expert = np.where(rng.rand(G, E, T) < 0.4, TARGET, rng.randint(0, 32, (G, E, T))).astype(np.int32)
        batch = ts.Batch(prompt_GP=prompts, prompt_mask_GP=np.ones((G, P), bool), rollout_GKT=roll,
                         rollout_mask_GKT=mask, sampler_logp_GKT=out.logprobs.reshape(G, K, T),
                         outcome_GK=((roll == TARGET) & mask).any(-1).astype(np.float32),
                         format_GK=np.zeros((G, K), np.float32), expert_GET=expert,
                         expert_mask_GET=np.ones((G, E, T), bool))
        state, m = step(state, batch)
        hist.append(jax.device_get(m))
    assert step.traces() == 1
    series = lambda k: np.array([h[k] for h in hist])
    for k in ("prm_loss", "reward_gap", "policy_loss", "ess"):
        assert np.isfinite(series(k)).all(), k
    first, last = slice(0, 5), slice(-10, None)
    assert series("prm_loss")[last].mean() < series("prm_loss")[first].mean() - 0.1
    assert series("reward_gap")[last].mean() > series("reward_gap")[first].mean() + 0.1
    assert np.nanmean(series("ranking_acc")[last]) > max(0.75, np.nanmean(series("ranking_acc")[first]) + 0.1)
    # the approx. KL between the policy and its sampler stays small: the PPO ratio is sane
    assert series("approx_kl").max() < 0.05


def test_bad_batch_shapes_are_one_clear_line():
    rng = np.random.RandomState(4)
    step = ts.make_train_step(step_config(minibatches=4, microbatches=1))
    state = ts.init_state(step_config(), fresh_params(0), fresh_params(1))
    with pytest.raises(ValueError, match="6 prompts: not divisible by prm.minibatches x prm.microbatches = 4 x 1"):
        step(state, synthetic_batch(rng, G=6))
    step = ts.make_train_step(step_config())
    with pytest.raises(ValueError, match="1 rollout.*needs K >= 2"):
        step(state, synthetic_batch(rng, K=1))


def test_config_validation_names_field_and_value():
    with pytest.raises(ValueError, match=r"PRMConfig.form='hea': expected one of"):
        PRMConfig(form="hea")
    with pytest.raises(ValueError, match=r"PolicyConfig.clip_low=1.5"):
        PolicyConfig(clip_low=1.5)
    with pytest.raises(ValueError, match=r"OptimConfig.total_steps=0: cosine needs"):
        OptimConfig(schedule="cosine")


def test_non_finite_step_is_rejected_and_state_kept():
    rng = np.random.RandomState(5)
    step = ts.make_train_step(step_config())
    state = ts.init_state(step_config(), fresh_params(0), fresh_params(1))
    state, m = step(state, synthetic_batch(rng))
    assert float(m["step_ok"]) == 1.0
    before = jax.tree.map(np.asarray, state)
    bad = synthetic_batch(rng)
    bad.sampler_logp_GKT[0, 0, 0] = np.nan  # poisons the PPO ratio (and the IS weight of a negative)
    state, m = step(state, bad)
    assert float(m["step_ok"]) == 0.0 and not np.isfinite(float(m["policy_loss"]))
    from tests.helpers import trees_equal

    assert trees_equal(jax.tree.map(np.asarray, state), before)  # step counter and rng too
    state, m = step(state, synthetic_batch(rng))
    assert float(m["step_ok"]) == 1.0 and int(state.step) == 2 and step.traces() == 1


def test_head_logprob_form_adds_the_trunk_log_prob():
    """head_logprob: r_t = w . h_t + b + c log p_trunk(a_t | s_t); with w = b = 0, c = 1 it is the
    trunk's own token log-prob (prm.response_logprobs), which logprob_init=1 starts from; at the
    default init it is 0 like the plain head; head_scale scales w . h + b, not c log p."""
    rng = np.random.RandomState(5)
    b = synthetic_batch(rng)
    trunk = fresh_params(1)
    params = prm.init_params("head_logprob", CFG, trunk)
    seqs = prm.build_seqs(b.prompt_GP, b.prompt_mask_GP, b.rollout_GKT, b.rollout_mask_GKT)
    r0 = prm.token_rewards("head_logprob", 0.05, CFG, CFG, params, None, None, seqs)
    assert not np.any(np.asarray(r0))
    params = prm.init_params("head_logprob", CFG, trunk, logprob_init=1.0)
    r1 = prm.token_rewards("head_logprob", 0.05, CFG, CFG, params, None, None, seqs)
    lp, _ = prm.response_logprobs(CFG, trunk, seqs)
    np.testing.assert_allclose(np.asarray(r1), np.asarray(lp), atol=1e-5)
    params["head"]["b"] = jax.numpy.float32(0.5)
    r2 = prm.token_rewards("head_logprob", 0.05, CFG, CFG, params, None, None, seqs, head_scale=2.0)
    np.testing.assert_allclose(np.asarray(r2), np.asarray(lp) + 1.0, atol=1e-5)  # 2 * (w . h + b) + c log p


def test_oracle_loss_trains_through_the_first_wrong_step_only():
    """Tokens labelled -1 (after the first wrong step) get no gradient; the others the BCE's."""
    rng = np.random.RandomState(5)
    b = synthetic_batch(rng, G=2, K=2, E=2, T=6)
    b.expert_GET, b.expert_mask_GET = b.expert_GET[:, :1], np.ones((2, 1, 6), bool)
    b.step_ok_GKT = np.array([[[1, 1, 0, -1, -1, -1], [1, 1, 1, 1, 1, 1]]] * 2, np.float32)
    b.rollout_mask_GKT = np.ones_like(b.rollout_mask_GKT)
    pc = PRMConfig(loss="oracle")
    traj_loss, consts, _ = ts.trajectory_loss_terms(pc, b, np.zeros((2, 2), np.float32))
    y = np.concatenate([b.step_ok_GKT, np.ones((2, 1, 6), np.float32)], 1)
    m = np.concatenate([b.rollout_mask_GKT, b.expert_mask_GET], 1)
    r = rng.randn(2, 3, 6).astype(np.float32)
    g = jax.grad(lambda r: jax.numpy.sum(traj_loss(None, None, r, m, consts, y)))(r)
    assert np.all(g[:, 0, 3:] == 0) and np.all(g[:, 0, :3] != 0)
    n = (m & (y >= 0)).sum()
    np.testing.assert_allclose(g[m & (y >= 0)], (jax.nn.sigmoid(r) - y)[m & (y >= 0)] / n, rtol=1e-5)


def test_exact_loss_rewards_the_correct_path_and_trains_no_prm():
    """prm.loss=exact (the perfect-PRM ceiling): the process reward is 1 on tokens of the correct
    path, 0 from the first wrong step on; the PRM is not updated. With `last` and a mean score,
    a rollout that slipped at its third token gets the fraction 2/6 against the group's others."""
    rng = np.random.RandomState(5)
    b = synthetic_batch(rng, G=2, K=2, E=2, T=6)
    b.rollout_mask_GKT = np.ones_like(b.rollout_mask_GKT)
    b.step_ok_GKT = np.array([[[1, 1, 0, -1, -1, -1], [1, 1, 1, 1, 1, 1]]] * 2, np.float32)
    b.outcome_GK = np.zeros((2, 2), np.float32)  # equal outcomes: the advantage is the process part only
    cfg = ts.StepConfig(CFG, CFG, PRMConfig(form="head", loss="exact", score="mean"),
                        PolicyConfig(alpha_p=1.0, process_adv="last"))
    state = ts.init_state(cfg, fresh_params(0), fresh_params(1))
    prm_before = jax.tree.map(np.asarray, state.prm)
    state, m = ts.make_train_step(cfg)(state, b)
    assert trees_equal(jax.tree.map(np.asarray, state.prm), prm_before) and float(m["step_ok"]) == 1.0
    assert float(m["process_reward_mean"]) == pytest.approx(8 / 12)
    # rms over all 24 tokens of the reward-to-go: +-(1 - 2/6) on every token of each group
    assert float(m["process_adv_sample_rms"]) == pytest.approx(2 / 3, rel=1e-5)


@pytest.mark.parametrize("credit,loss,dropped", [("exact_error", "exact", 3), ("prm_error", "frozen", 4),
                                                  ("exact_step", "exact", 5), ("logprob_step", "none", 4),
                                                  ("prm_first", "frozen", 4), ("logprob_first", "none", 4),
                                                  ("prm_ratio_step", "frozen", 4), ("random_step", "none", 4)])
def test_error_credit_stops_a_failed_rollouts_outcome_credit_at_its_error_step(credit, loss, dropped):
    """policy.credit: the failed rollout's outcome advantage reaches the end of its error step, by
    the exact labels (first wrong step: token 2) or by the PRM (lowest mean reward: a zero head
    ties, so step 0, tokens 0-1); the tokens after it get no outcome credit (exact_step: nor the
    right tokens before it), counted per step; logprob_step (the null, no PRM): the step of lowest mean
    sampler log-prob alone (step 1, tokens 2-3); *_first: the first step below the rollout's mean step
    score (log-probs: step 1 again; the zero head: none below, so its lowest, step 0); prm_ratio_step: the
    lowest mean r - log-prob (the zero head: -log-prob, step 0 or 2); random_step: one of the three 2-token
    steps. Then the locate metrics with the first wrong step at step 2, whose log-prob is the highest: only
    the ratio finds it."""
    rng = np.random.RandomState(5)
    b = synthetic_batch(rng, G=2, K=2, E=2, T=6)
    b.rollout_mask_GKT = np.ones_like(b.rollout_mask_GKT)
    b.outcome_GK = np.array([[0.0, 1.0]] * 2, np.float32)
    b.step_ok_GKT = np.array([[[1, 1, 0, -1, -1, -1], [1, 1, 1, 1, 1, 1]]] * 2, np.float32)
    b.step_GKT = np.broadcast_to(np.array([0, 0, 1, 1, 2, 2], np.int32), (2, 2, 6)).copy()
    b.sampler_logp_GKT = np.where(b.step_GKT == 1, -3.0, -1.0).astype(np.float32)
    cfg = ts.StepConfig(CFG, CFG, PRMConfig(form="head", loss=loss),
                        PolicyConfig(alpha_p=0.0, credit=credit, whiten=False))
    state = ts.init_state(cfg, fresh_params(0), fresh_params(1))
    _, m = ts.make_train_step(cfg)(state, b)
    assert float(m["credit_dropped_frac"]) == pytest.approx(2 * dropped / 24) and float(m["step_ok"]) == 1.0
    # the in-loop locate metrics (labels given): the log-prob locator finds step 1, the zero head's tie step 0
    for rule in ("", "first_"):
        assert float(m[f"logprob_{rule}locate_acc"]) == 1.0
        assert (float(m[f"prm_{rule}locate_acc"]) == 0.0) if loss == "frozen" else (f"prm_{rule}locate_acc" not in m)
    if credit == "prm_ratio_step":
        b.step_ok_GKT = np.array([[[1, 1, 1, 1, 0, -1], [1, 1, 1, 1, 1, 1]]] * 2, np.float32)
        b.sampler_logp_GKT = np.select([b.step_GKT == 1, b.step_GKT == 2], [-3.0, -0.5], -1.0).astype(np.float32)
        _, m = ts.make_train_step(cfg)(ts.init_state(cfg, fresh_params(0), fresh_params(1)), b)  # the step donates
        assert [float(m[f"{n}_locate_acc"]) for n in ("prm_ratio", "prm", "logprob")] == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("base", ["uniform", "policy"])
def test_is_base_sets_the_log_weights(base):
    """prm.is_base: uniform base measure, log w_j = s_j - log pi_old(tau_j) (ALGORITHM.md section 3);
    policy base (the EBM p(tau | x) = pi_old(tau | x) exp(E) / Z(x)), log w_j = s_j: the weights
    then ignore how likely the sampler made each failure. Checked against softmax over each
    prompt's failed rollouts computed here in numpy."""
    rng = np.random.RandomState(3)
    b = synthetic_batch(rng, G=3, K=4, E=2, T=6)
    b.rollout_mask_GKT = np.ones_like(b.rollout_mask_GKT)
    b.outcome_GK = np.array([[1, 0, 0, 0], [0, 1, 0, 1], [1, 0, 1, 0]], np.float32)
    b.sampler_logp_GKT = rng.randn(3, 4, 6).astype(np.float32)
    s = rng.randn(3, 4).astype(np.float32)
    _, _, sets = ts.trajectory_loss_terms(PRMConfig(is_base=base), b, s)
    log_w = s - (b.sampler_logp_GKT.sum(-1) if base == "uniform" else 0.0)
    for g in range(3):
        neg = b.outcome_GK[g] < 0.5
        w = np.exp(log_w[g][neg] - log_w[g][neg].max())
        np.testing.assert_allclose(np.asarray(sets["w_hat"])[g][neg], w / w.sum(), rtol=1e-5)
        assert np.all(np.asarray(sets["w_hat"])[g][~neg] == 0)


def test_head_rewards_split_routes_gradients():
    """prm.head_rewards_split: the same token rewards as the head_logprob form, with no trunk
    gradient through them, and the trunk's token log-probs with no head gradient."""
    rng = np.random.RandomState(0)
    b = synthetic_batch(rng, G=2, K=2, E=2, T=6)
    seqs = prm.build_seqs(b.prompt_GP, b.prompt_mask_GP, b.rollout_GKT, b.rollout_mask_GKT)
    params = prm.init_params("head_logprob", CFG, fresh_params(1), logprob_init=1.0)
    params["head"]["w"] = jax.numpy.asarray(rng.randn(CFG.hidden_size).astype(np.float32))
    r, lp = prm.head_rewards_split(CFG, params, seqs)
    np.testing.assert_allclose(r, prm.token_rewards("head_logprob", 0.05, CFG, CFG, params, None, None, seqs), atol=1e-6)
    np.testing.assert_allclose(lp, prm.response_logprobs(CFG, params["trunk"], seqs)[0], atol=1e-6)
    g_r = jax.grad(lambda p: jax.numpy.sum(prm.head_rewards_split(CFG, p, seqs)[0]))(params)
    g_lp = jax.grad(lambda p: jax.numpy.sum(prm.head_rewards_split(CFG, p, seqs)[1]))(params)
    assert not any(np.any(np.asarray(x)) for x in jax.tree.leaves(g_r["trunk"]))
    assert all(np.any(np.asarray(x)) for x in jax.tree.leaves(g_r["head"]))
    assert not any(np.any(np.asarray(x)) for x in jax.tree.leaves(g_lp["head"]))
    assert np.any(np.asarray(g_lp["trunk"]["embed"]))


def test_trunk_loss_sft_trains_the_trunk_on_the_positives_and_the_head_on_the_prm_loss():
    """prm.trunk_loss=sft: the trunk's update is the SFT step on the positive set (experts and correct
    rollouts, mean token NLL), the head's the rePIRL loss's, as with trunk_loss=repirl. Adam with a huge
    eps makes the first update -lr g / eps, linear in the gradient, so updates compare as gradients."""
    rng = np.random.RandomState(2)
    b = synthetic_batch(rng, G=2, K=4, E=2, T=6)
    b.outcome_GK = np.array([[1, 0, 0, 1], [0, 1, 0, 0]], np.float32)
    lr, eps = 1e-3, 1e3
    opt = OptimConfig(lr=lr, eps=eps, grad_clip=1e12)
    states = {}
    for tl in ("repirl", "sft"):
        cfg = ts.StepConfig(CFG, CFG, PRMConfig(form="head_logprob", logprob_init=1.0, score="sum", trunk_loss=tl,
                                                minibatches=1, microbatches=2, optim=opt),
                            PolicyConfig(optim=OptimConfig(lr=0.0)))
        trunk0 = fresh_params(1)
        states[tl], _ = ts.make_train_step(cfg)(ts.init_state(cfg, fresh_params(0), trunk0), b)
    # the head: the same rePIRL gradient either way
    for k in ("w", "b", "c"):
        np.testing.assert_allclose(states["sft"].prm["head"][k], states["repirl"].prm["head"][k], rtol=1e-4, atol=1e-9)
    # the trunk: -lr * grad(SFT on the positives) / eps
    pos = np.concatenate([b.outcome_GK > 0.5, b.expert_mask_GET.any(-1)], 1)
    resp = np.concatenate([b.rollout_GKT, b.expert_GET], 1)
    rmask = np.concatenate([b.rollout_mask_GKT, b.expert_mask_GET], 1)
    seqs = prm.build_seqs(b.prompt_GP, b.prompt_mask_GP, resp, rmask)
    m = (rmask & pos[..., None]).reshape(-1, 6)

    def sft(trunk):
        lp, _ = prm.response_logprobs(CFG, trunk, seqs)
        return -jax.numpy.sum(lp * m) / m.sum()

    g = jax.grad(sft)(fresh_params(1))
    want = jax.tree.map(lambda p, gg: p - lr * gg / (np.abs(gg) + eps), fresh_params(1), g)
    for a, w in zip(jax.tree.leaves(states["sft"].prm["trunk"]), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, w, rtol=0, atol=1e-9)
    assert not trees_equal(states["sft"].prm["trunk"], states["repirl"].prm["trunk"])


@pytest.mark.parametrize("trunk_loss", ["repirl", "sft"])
def test_frozen_trunk_trains_the_head_alone(trunk_loss):
    """prm.trunk_lr_scale=0 (a probe on a frozen trunk): the trunk stays bit-equal and, with clipping
    off, the head takes the same update as with a trained trunk (its gradient at the same point)."""
    b = synthetic_batch(np.random.RandomState(4), G=2, K=4, E=2, T=6)
    opt = OptimConfig(lr=1e-3, grad_clip=1e12)
    states, flops = {}, {}
    for scale in (0.0, 1.0):
        cfg = ts.StepConfig(CFG, CFG, PRMConfig(form="head_logprob", logprob_init=1.0, score="sum", trunk_loss=trunk_loss,
                                                trunk_lr_scale=scale, microbatches=2, optim=opt),
                            PolicyConfig(optim=OptimConfig(lr=0.0)))
        step, state = ts.make_train_step(cfg), ts.init_state(cfg, fresh_params(0), fresh_params(1))
        flops[scale] = step.lower(state, b).compile().cost_analysis()["flops"]
        states[scale], m = step(state, b)
        assert np.isfinite(m["prm_loss"])
    # no backward pass through the frozen trunk (the policy's own step is the same in both)
    assert flops[0.0] < 0.8 * flops[1.0], flops
    assert trees_equal(states[0.0].prm["trunk"], fresh_params(1))
    assert not trees_equal(states[1.0].prm["trunk"], fresh_params(1))
    for k in ("w", "b", "c"):
        np.testing.assert_allclose(states[0.0].prm["head"][k], states[1.0].prm["head"][k], rtol=1e-5, atol=1e-9)
    assert not np.allclose(states[0.0].prm["head"]["w"], 0.0)


def test_trunk_train_layers_trains_the_top_layers_alone(trunk_loss="sft"):
    """prm.trunk_train_layers=1 of 2: the lower layer stays bit-equal, the top layer, the final norm and
    the head take the same update as with every layer trained (their gradient does not depend on the
    layers below). (That the backward pass stops there: test_numerics.py::test_frozen_layers_cut_the_backward_pass.)"""
    b = synthetic_batch(np.random.RandomState(5), G=2, K=4, E=2, T=6)
    opt = OptimConfig(lr=1e-3, grad_clip=1e12)
    states = {}
    for k in (0, 1):
        cfg = ts.StepConfig(CFG, CFG, PRMConfig(form="head_logprob", logprob_init=1.0, score="sum", trunk_loss=trunk_loss,
                                                trunk_train_layers=k, optim=opt),
                            PolicyConfig(optim=OptimConfig(lr=0.0)))
        states[k], m = ts.make_train_step(cfg)(ts.init_state(cfg, fresh_params(0), fresh_params(1)), b)
        assert np.isfinite(m["prm_loss"])
    lower = lambda t: jax.tree.map(lambda a: a[:1], t["layers"])
    upper = lambda t: jax.tree.map(lambda a: a[1:], t["layers"])
    part, full, init = states[1].prm["trunk"], states[0].prm["trunk"], fresh_params(1)
    assert trees_equal(lower(part), lower(init))
    assert not trees_equal(upper(part), upper(init))
    for a, w in zip(jax.tree.leaves((upper(part), part["final_norm"], states[1].prm["head"])),
                    jax.tree.leaves((upper(full), full["final_norm"], states[0].prm["head"]))):
        np.testing.assert_allclose(a, w, rtol=1e-5, atol=1e-8)
    with pytest.raises(ConfigError, match="trunk_train_layers=3: the PRM trunk has 2 layers"):
        ts.make_train_step(ts.StepConfig(CFG, CFG, PRMConfig(form="head_logprob", trunk_train_layers=3)))
    with pytest.raises(ConfigError, match="trunk_train_layers=1: needs a trunk of its own"):
        PRMConfig(form="implicit", trunk_train_layers=1)


def test_trunk_loss_sft_needs_head_logprob():
    from repirl_jax.config import ConfigError
    with pytest.raises(ConfigError, match="trunk_loss.*head_logprob"):
        PRMConfig(form="head", trunk_loss="sft")
