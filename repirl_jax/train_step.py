"""The rePIRL dual step: PRM update then policy update, in ONE jitted function.

    state, metrics = step(state, batch)

Order (ALGORITHM.md section 5, step 4): PRM forward on positives and negatives -> importance
weights -> PRM loss and update (scan over minibatches, gradient accumulation over microbatches)
-> PRM forward with the updated params on all rollouts -> per-source baselined advantages ->
PPO-clipped policy loss over scanned minibatches against the sampler's log-probs -> policy update.
"""
from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import optax

from . import losses, prm
from .config import ConfigError, OptimConfig, PolicyConfig, PRMConfig
from .models import transformer
from .models.config import ModelConfig
from .sharding import Layout


@partial(jax.tree_util.register_dataclass, data_fields=[
    "prompt_GP", "prompt_mask_GP", "rollout_GKT", "rollout_mask_GKT", "sampler_logp_GKT", "outcome_GK",
    "format_GK", "expert_GET", "expert_mask_GET", "step_ok_GKT", "step_GKT"], meta_fields=[])
@dataclasses.dataclass
class Batch:
    """One iteration's data. G prompts, K rollouts and E expert solutions per prompt, P prompt
    tokens (left-padded), T response tokens (right-padded)."""

    prompt_GP: jax.Array  # int32 prompt tokens
    prompt_mask_GP: jax.Array  # bool, real prompt tokens
    rollout_GKT: jax.Array  # int32 policy responses
    rollout_mask_GKT: jax.Array  # bool, real response tokens (through EOS)
    sampler_logp_GKT: jax.Array  # float32 log pi_old(a_t | s_t) of the distribution sampled from (tempered)
    outcome_GK: jax.Array  # float32 verifier outcome r_o in {0, 1}
    format_GK: jax.Array  # float32 format reward added to the outcome source (0 when unused)
    expert_GET: jax.Array  # int32 expert responses
    expert_mask_GET: jax.Array  # bool; an all-false row is a missing expert
    step_ok_GKT: jax.Array | None = None  # float32 exact step labels per token, 1 / 0 / -1 (steps.labels; prm.loss=oracle | exact, policy.credit=exact_*)
    step_GKT: jax.Array | None = None  # int32 each response token's step index (steps.token_steps; policy.credit=prm_* | logprob_step)

    def axes(self) -> "Batch":
        """Logical axes of every field (the leading G dimension is the sharded batch)."""
        return Batch(*[None if x is None else ("batch",) + (None,) * (x.ndim - 1) for x in dataclasses.astuple(self)])


@partial(jax.tree_util.register_dataclass, data_fields=[
    "step", "policy", "prm", "prm_ref", "policy_ref", "policy_opt", "prm_opt", "rng"], meta_fields=[])
@dataclasses.dataclass
class TrainState:
    step: jax.Array  # int32 number of dual steps taken
    policy: dict  # policy LM params
    prm: dict  # PRM params (see prm.py for each form's tree)
    prm_ref: dict | None  # frozen initial PRM LM (implicit form) else None
    policy_ref: dict | None  # frozen initial policy (kl_coef > 0) else None
    policy_opt: optax.OptState
    prm_opt: optax.OptState
    rng: jax.Array  # uint32 raw key data (checkpointable); split once per step, for the host loop's sampling


@dataclasses.dataclass(frozen=True)
class StepConfig:
    policy_model: ModelConfig
    prm_model: ModelConfig  # the PRM trunk (for `shared`, the policy's config)
    prm: PRMConfig = PRMConfig()
    policy: PolicyConfig = PolicyConfig()
    temperature: float = 1.0  # the rollouts' sampling temperature: the policy's log-probs use logits / T


# XLA:CPU compiles the training steps with YNNPACK fusing the elementwise and reduction work
# (softmax, norms, SiLU and their gradients) into its kernels along with the matmuls: a policy
# gradient at SmolLM2-135M widths ran 12% faster (README.md, Benchmarks). Per compile, not a
# global XLA flag, because the same option slows the sampler's skinny decode matmuls by ~10%.
CPU_TRAINING_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                        "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_ELTWISE,LIBRARY_FUSION_TYPE_REDUCE"}


def compiler_options(layout: Layout | None = None) -> dict | None:
    """jax.jit compiler_options for a training step on the layout's devices (default backend)."""
    platform = layout.mesh.devices.flat[0].platform if layout is not None else jax.default_backend()
    return CPU_TRAINING_OPTIONS if platform == "cpu" else None


def make_optimizer(o: OptimConfig) -> optax.GradientTransformation:
    if o.schedule == "cosine":
        lr = optax.warmup_cosine_decay_schedule(0.0, o.lr, max(o.warmup_steps, 1), o.total_steps)
    elif o.warmup_steps:
        lr = optax.linear_schedule(0.0, o.lr, o.warmup_steps)
    else:
        lr = o.lr
    return optax.chain(optax.clip_by_global_norm(o.grad_clip),
                       optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay))


def init_state(cfg: StepConfig, policy_params: dict, prm_trunk_params: dict | None, seed: int = 0) -> TrainState:
    """prm_trunk_params: the PRM checkpoint's LM params (head / implicit); ignored for shared.
    The state takes ownership of the params (the step donates them)."""
    prm_params = prm.init_params(cfg.prm.form, cfg.prm_model, prm_trunk_params, cfg.prm.logprob_init)
    copy = lambda t: jax.tree.map(jnp.copy, t)
    return TrainState(
        step=jnp.zeros((), jnp.int32), policy=policy_params, prm=prm_params,
        prm_ref=copy(prm_trunk_params) if cfg.prm.form == "implicit" else None,
        policy_ref=copy(policy_params) if cfg.policy.kl_coef > 0 else None,
        policy_opt=make_optimizer(cfg.policy.optim).init(policy_params),
        prm_opt=make_optimizer(cfg.prm.optim).init(prm_params),
        rng=jax.random.key_data(jax.random.key(seed)))


def state_shardings(cfg: StepConfig, layout: Layout, abstract: TrainState) -> TrainState:
    """NamedShardings for every leaf: params by their logical axes, optimizer moments like their
    params, scalars replicated."""
    rep = layout.sharding(())
    shard = lambda axes, tree: jax.tree.map(lambda a, x: layout.sharding(a, x.shape), axes, tree,
                                           is_leaf=lambda v: isinstance(v, tuple))
    pol_axes = transformer.param_axes(cfg.policy_model)
    prm_axes = prm.param_axes(cfg.prm.form, cfg.prm_model)
    pol, pr = shard(pol_axes, abstract.policy), shard(prm_axes, abstract.prm)

    def opt(optim, state, param_shardings):
        return optax.tree_map_params(make_optimizer(optim), lambda _, s: s, state, param_shardings,
                                     transform_non_params=lambda _: rep)

    return TrainState(
        step=rep, policy=pol, prm=pr, rng=rep,
        prm_ref=None if abstract.prm_ref is None else shard(transformer.param_axes(cfg.prm_model), abstract.prm_ref),
        policy_ref=None if abstract.policy_ref is None else pol,
        policy_opt=opt(cfg.policy.optim, abstract.policy_opt, pol),
        prm_opt=opt(cfg.prm.optim, abstract.prm_opt, pr))


def split(x, n: int):
    """[G, ...] -> [n, G / n, ...], strided so every piece draws groups from every device."""
    return x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1)


def merge(x):
    """Inverse of split."""
    return x.swapaxes(0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def _accumulate(loss_fn, params, pieces, n):
    """Sum of loss and gradient over `n` microbatches (a scan), plus the summed aux."""
    def body(acc, piece):
        (l, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(params, piece)
        return jax.tree.map(jnp.add, acc, (l, g, aux)), None

    first = jax.tree.map(lambda x: x[0], pieces)
    zero = jax.tree.map(jnp.zeros_like, jax.eval_shape(lambda: jax.value_and_grad(loss_fn, has_aux=True)(params, first)))
    (l, aux), g = zero
    (l, g, aux), _ = jax.lax.scan(body, (l, g, aux), pieces)
    return l, g, aux


def trajectory_loss_terms(pc: PRMConfig, mb: Batch, s_roll):
    """The PRM loss as a sum of per-trajectory terms l(s_b, R_b, r_bT, m_bT, c_b, y_bT) over the
    [rollouts | experts] of each group, with constants c fixed from the pre-update scores
    (ALGORITHM.md section 3):

      repirl         c_j s_j, c from losses.repirl_coefficients: per-prompt (default) IS weights
                     with log w_j = E(tau_j) - log pi_old(tau_j), E = s (the loss's own score);
                     prm.is_base=policy drops the - log pi_old (the base measure is pi_old itself)
      prime          BCE(sigmoid(R_j), r_o(j)) / #rollouts over rollouts (R = sum of token rewards)
      orm            BCE(sigmoid(s_j), r_o(j)) / #rollouts (outcome-supervised, mean score)
      discriminator  BCE(sigmoid(s_j), [j is expert]) / #trajectories
      oracle         sum_t BCE(sigmoid(r_t), y_t) / #labelled tokens, y = exact step labels (experts: 1),
                     through the first wrong step (y = -1 after it: not trained on, steps.labels)
    Returns (l, constants [g, K + E, ...], the sets and weights for the metrics)."""
    g, K = mb.outcome_GK.shape
    E = mb.expert_GET.shape[1]
    rolled = mb.rollout_mask_GKT.any(-1)
    expert = mb.expert_mask_GET.any(-1)
    correct = (mb.outcome_GK > 0.5) & rolled
    pos_roll = correct if pc.pseudo_experts else jnp.zeros_like(correct)
    neg = (~correct & rolled) if pc.negatives == "failed" else rolled

    log_w = s_roll if pc.is_base == "policy" else s_roll - losses.masked_sum(mb.sampler_logp_GKT, mb.rollout_mask_GKT, axis=-1)
    log_w = losses.shape_log_weights(log_w, jnp.sum(mb.rollout_mask_GKT, -1), neg, length_norm=pc.is_length_norm,
                                     temperature=pc.is_temperature, clip=pc.is_clip)
    c_rep, w_hat, ess, ess_frac = losses.repirl_coefficients(log_w, jnp.concatenate([pos_roll, expert], 1), neg,
                                                   scope=pc.is_scope, weighted=pc.importance_weights)
    per_roll = lambda: jnp.concatenate([rolled / jnp.maximum(jnp.sum(rolled), 1), jnp.zeros((g, E))], axis=1)
    y_out = jnp.concatenate([mb.outcome_GK, jnp.zeros((g, E))], axis=1)
    match pc.loss:
        case "repirl":
            consts = c_rep
            traj_loss = lambda s, R, r, m, c, y: c * s
        case "prime" | "orm":
            consts = jnp.stack([per_roll(), y_out], axis=-1)
            use_sum = pc.loss == "prime"
            traj_loss = lambda s, R, r, m, c, y: c[..., 0] * losses.bce_with_logits(R if use_sum else s, c[..., 1])
        case "discriminator":  # experts 1, policy samples 0
            y = jnp.concatenate([jnp.zeros((g, K)), jnp.ones((g, E))], axis=1)
            wt = jnp.concatenate([rolled, expert], axis=1) / jnp.maximum(jnp.sum(rolled) + jnp.sum(expert), 1)
            consts = jnp.stack([wt, y], axis=-1)
            traj_loss = lambda s, R, r, m, c, y: c[..., 0] * losses.bce_with_logits(s, c[..., 1])
        case "oracle":
            n_tok = jnp.sum(mb.rollout_mask_GKT & (mb.step_ok_GKT >= 0)) + jnp.sum(mb.expert_mask_GET)
            consts = jnp.ones((g, K + E)) / jnp.maximum(n_tok, 1)
            traj_loss = lambda s, R, r, m, c, y: c * losses.masked_sum(losses.bce_with_logits(r, y), m & (y >= 0), axis=-1)
    return traj_loss, consts, dict(pos_roll=pos_roll, neg=neg, expert=expert, w_hat=w_hat, ess=ess, ess_frac=ess_frac)


def map_pieces(fn, arrays, n: int):
    """fn over n microbatches of the leading (group) axis via lax.map; results re-merged, so at
    most one microbatch's activations are live."""
    return jax.tree.map(merge, jax.lax.map(fn, tuple(split(x, n) for x in arrays)))


def make_train_step(cfg: StepConfig, layout: Layout | None = None):
    """Returns step(state, batch) -> (state, metrics): one jax.jit, state donated, shardings
    declared when a layout is given."""
    pc, qc = cfg.prm, cfg.policy
    pol_cfg, prm_cfg = cfg.policy_model, cfg.prm_model
    if pc.form != "shared":
        prm.check_compatible(pol_cfg, prm_cfg)
    n_frozen = 0
    if pc.trunk_train_layers:
        if pc.trunk_train_layers > prm_cfg.num_layers:
            raise ConfigError(f"prm.trunk_train_layers={pc.trunk_train_layers}: the PRM trunk has "
                              f"{prm_cfg.num_layers} layers")
        n_frozen = prm_cfg.num_layers - pc.trunk_train_layers
        prm_cfg = prm_cfg.replace(frozen_layers=n_frozen)
    pol_opt, prm_opt = make_optimizer(qc.optim), make_optimizer(pc.optim)

    def rewards(prm_params, policy_params, ref, seqs):
        return prm.token_rewards(pc.form, pc.beta, prm_cfg, pol_cfg, prm_params, policy_params, ref, seqs,
                                 layout, qc.logit_chunk, pc.head_scale)

    # ---------------------------------------------------------------- PRM
    def prm_minibatch(carry, mb):
        """One PRM update on a minibatch of groups: pass 1 (no grad) scores every trajectory and
        fixes the per-trajectory loss coefficients (IS weights); pass 2 accumulates gradients."""
        prm_params, opt_state, policy_params, ref = carry
        g, K, T = mb.rollout_GKT.shape
        E = mb.expert_GET.shape[1]
        resp = jnp.concatenate([mb.rollout_GKT, mb.expert_GET], axis=1)  # [g, K + E, T]
        resp_mask = jnp.concatenate([mb.rollout_mask_GKT, mb.expert_mask_GET], axis=1)
        n_micro = pc.microbatches
        arrays = (mb.prompt_GP, mb.prompt_mask_GP, resp, resp_mask)

        # trunk_lr_scale 0 (a probe on a frozen trunk): the trunk enters the loss stop-gradiented, so the
        # backward pass never goes through it (2-3x less PRM compute, no trunk activations kept) and the
        # SFT term, whose gradient only the trunk would take, is not computed
        frozen_trunk = "trunk" in prm_params and pc.trunk_lr_scale == 0
        sft_trunk = pc.trunk_loss == "sft" and not frozen_trunk

        def score(params, piece, sft=False):
            """token rewards [B, T], the trunk's token log-probs when sft (trunk_loss=sft; else None),
            scores s and returns R [groups, K + E] of one microbatch."""
            seqs = prm.build_seqs(*piece)
            if sft:
                r_BT, lp_BT = prm.head_rewards_split(prm_cfg, params, seqs, layout, qc.logit_chunk, pc.head_scale)
            else:
                r_BT, lp_BT = rewards(params, policy_params, ref, seqs), None
            m = piece[3].reshape(-1, T)
            s = losses.trajectory_scores(r_BT, m, pc.score).reshape(-1, K + E)
            return r_BT, lp_BT, s, losses.masked_sum(r_BT, m, axis=-1).reshape(-1, K + E)

        s_GN, R_GN = map_pieces(lambda piece: score(prm_params, piece)[2:], arrays, n_micro)
        s_roll = s_GN[:, :K]
        traj_loss, consts, sets = trajectory_loss_terms(pc, mb, s_roll)
        n_tokens = jnp.maximum(jnp.sum(resp_mask), 1)
        labels = (jnp.concatenate([mb.step_ok_GKT, jnp.ones(mb.expert_GET.shape)], 1) if pc.loss == "oracle"
                  else jnp.zeros(resp_mask.shape[:2]))  # a placeholder the other losses ignore

        # trunk_loss=sft: L = L_prm(r with the trunk's outputs stop-gradiented) + L_trunk,
        #   L_trunk = - sum_{b in P} sum_t m_bt log p_trunk(a_bt | s_bt) / sum_{b in P} sum_t m_bt,
        # P = the positive set (experts, and the correct rollouts when they are pseudo-experts), the
        # token count taken over the whole minibatch so that microbatches add up to it
        pos_rows = jnp.concatenate([sets["pos_roll"], sets["expert"]], axis=1).astype(jnp.float32)
        n_pos_tokens = jnp.maximum(jnp.sum(resp_mask * pos_rows[..., None]), 1)

        def loss_fn(params, piece):
            *seq_piece, c, y, pos = piece
            if frozen_trunk:
                params = {**params, "trunk": jax.lax.stop_gradient(params["trunk"])}
            r_BT, lp_BT, s, R = score(params, seq_piece, sft=sft_trunk)
            m = seq_piece[3].reshape(-1, T).astype(bool)
            B = m.shape[0]
            y = y.reshape(B, T) if pc.loss == "oracle" else y.reshape(B)
            l = jnp.sum(traj_loss(s.reshape(B), R.reshape(B), r_BT, m, c.reshape(B, *c.shape[2:]), y))
            l2 = pc.reward_l2 * losses.masked_sum(jnp.square(r_BT), m) / n_tokens
            if lp_BT is not None:
                l = l - losses.masked_sum(lp_BT * pos.reshape(B, 1), m) / n_pos_tokens
            return l + l2, ()

        pieces = tuple(split(x, n_micro) for x in (*arrays, consts, labels, pos_rows))
        loss, grads, _ = _accumulate(loss_fn, prm_params, pieces, n_micro)
        updates, opt_state = prm_opt.update(grads, opt_state, prm_params)
        if "trunk" in updates and pc.trunk_lr_scale != 1.0:  # Adam is gradient-scale invariant: scale the update
            updates = {**updates, "trunk": jax.tree.map(lambda u: pc.trunk_lr_scale * u, updates["trunk"])}
        if "trunk" in updates and n_frozen:  # zero gradients already; this also keeps weight decay off them
            frozen = jax.tree.map(lambda u: u.at[:n_frozen].set(0), updates["trunk"]["layers"])
            updates = {**updates, "trunk": {**updates["trunk"], "layers": frozen}}
        prm_params = optax.apply_updates(prm_params, updates)
        is_pos = jnp.concatenate([sets["pos_roll"], sets["expert"]], axis=1)
        is_neg = jnp.concatenate([sets["neg"], jnp.zeros_like(sets["expert"])], axis=1)
        m = dict(prm_loss=loss, prm_grad_norm=optax.global_norm(grads), ess=sets["ess"],
                 ess_frac=sets["ess_frac"], max_weight=jnp.max(sets["w_hat"]),
                 reward_gap=losses.masked_mean(s_GN, is_pos) - losses.masked_mean(s_GN, is_neg),
                 ranking_acc=losses.ranking_accuracy(s_roll, mb.outcome_GK, mb.rollout_mask_GKT.any(-1)))
        return (prm_params, opt_state, policy_params, ref), m

    # ---------------------------------------------------------------- policy
    def policy_minibatch(carry, mb):
        params, opt_state = carry
        prompt, pmask, roll, rmask, old_lp, adv = mb
        n_micro = qc.microbatches
        denom = jnp.maximum(jnp.sum(rmask), 1)

        def loss_fn(p, piece):
            pp, pm, r, rm, olp, a, ref_lp = piece
            seqs = prm.build_seqs(pp, pm, r, rm)
            lp, ent = prm.response_logprobs(pol_cfg, p, seqs, layout, qc.logit_chunk, cfg.temperature)
            T = r.shape[-1]
            flat = lambda x: x.reshape(-1, T)
            return losses.policy_loss(lp, flat(olp), flat(a), flat(rm), ent, clip_low=qc.clip_low,
                                      clip_high=qc.clip_high, entropy_coef=qc.entropy_coef,
                                      ref_logp=None if ref_lp is None else flat(ref_lp), kl_coef=qc.kl_coef,
                                      denom=denom)

        ref_lp = mb[6] if len(mb) > 6 else None
        pieces = tuple(split(x, n_micro) for x in (prompt, pmask, roll, rmask, old_lp, adv)) + (
            None if ref_lp is None else split(ref_lp, n_micro),)
        loss, grads, aux = _accumulate(loss_fn, params, pieces, n_micro)
        updates, opt_state = pol_opt.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, opt_state), dict(policy_loss=loss, policy_grad_norm=optax.global_norm(grads), **aux)

    # ---------------------------------------------------------------- the step
    def step(state: TrainState, batch: Batch):
        G, K, T = batch.rollout_GKT.shape
        for name, c in (("prm", pc), ("policy", qc)):
            if G % (c.minibatches * c.microbatches):
                raise ValueError(f"batch of {G} prompts: not divisible by {name}.minibatches x {name}.microbatches "
                                 f"= {c.minibatches} x {c.microbatches}")
        if K < 2 and qc.estimator != "reinforce":
            raise ValueError(f"{K} rollout(s) per prompt: policy.estimator={qc.estimator!r} needs K >= 2")
        n_pieces = qc.minibatches * qc.microbatches  # forward-only passes over the whole batch
        metrics = {}
        prm_params, prm_opt_state = state.prm, state.prm_opt
        mask = batch.rollout_mask_GKT
        if pc.loss not in ("none", "frozen", "exact"):
            mbs = jax.tree.map(lambda x: split(x, pc.minibatches), batch)
            (prm_params, prm_opt_state, _, _), pm = jax.lax.scan(
                prm_minibatch, (prm_params, prm_opt_state, state.policy, state.prm_ref), mbs)
            metrics |= {k: jnp.nanmean(v) if k == "ranking_acc" else jnp.mean(v) for k, v in pm.items()}
            metrics["max_weight"] = jnp.max(pm["max_weight"])
        if pc.loss == "exact":  # the perfect PRM: 1 on tokens of the correct path, 0 from the first wrong step on
            r_GKT = jnp.where(mask, (batch.step_ok_GKT > 0.5).astype(jnp.float32), 0.0)
            metrics["process_reward_mean"] = losses.masked_mean(r_GKT, mask)
        elif pc.loss != "none":
            # process rewards of every rollout from the updated PRM
            r_GKT = jax.lax.stop_gradient(map_pieces(
                lambda a: rewards(prm_params, state.policy, state.prm_ref, prm.build_seqs(*a)).reshape(-1, K, T),
                (batch.prompt_GP, batch.prompt_mask_GP, batch.rollout_GKT, mask), n_pieces))
            metrics["process_reward_mean"] = losses.masked_mean(r_GKT, mask)
            metrics["ranking_acc_after"] = losses.ranking_accuracy(
                losses.trajectory_scores(r_GKT, mask, pc.score), batch.outcome_GK, mask.any(-1))
        else:
            r_GKT = jnp.zeros(mask.shape, jnp.float32)
        exact_err = None if batch.step_ok_GKT is None else batch.step_ok_GKT == 0  # the first wrong step's tokens
        # what the locators of policy.credit=<name>_step / <name>_first score steps by: the PRM's rewards,
        # their excess over the sampler log-probs (prm_ratio), or the sampler log-probs alone (the null)
        locator_scores = {"logprob": batch.sampler_logp_GKT} | (
            {"prm": r_GKT, "prm_ratio": r_GKT - batch.sampler_logp_GKT} if pc.loss not in ("none", "exact") else {})
        if exact_err is not None and batch.step_GKT is not None:
            # how often each locator finds a failed rollout's exact first wrong step on this batch, by each rule
            for rule, fn in (("", losses.lowest_step), ("first_", losses.first_low_step)):
                for name, v in locator_scores.items():
                    metrics[f"{name}_{rule}locate_acc"] = losses.locate_accuracy(
                        fn(v, batch.step_GKT, mask), exact_err, batch.outcome_GK, mask)
        outcome = qc.alpha_o * batch.outcome_GK + batch.format_GK
        alpha_p = qc.alpha_p if pc.loss != "none" else 0.0
        credit = None
        if qc.credit != "last":  # the outcome advantage of a failed rollout stops at its (located) error step
            if qc.credit.startswith("exact_"):
                err = exact_err
            elif qc.credit == "random_step":  # a key of its own, from the state's: the same draws on resume
                err = losses.random_step(jax.random.fold_in(jax.random.wrap_key_data(state.rng), 1), batch.step_GKT, mask)
            else:  # the located step: the lowest, or the first below the rollout's mean step score (*_first)
                locate = losses.first_low_step if qc.credit.endswith("_first") else losses.lowest_step
                err = locate(locator_scores[qc.credit.rsplit("_", 1)[0]], batch.step_GKT, mask)
            credit = losses.error_credit(err, batch.outcome_GK, mask, only_step=qc.credit.endswith(("_step", "_first")))
            # response tokens that carry no outcome advantage
            metrics["credit_dropped_frac"] = jnp.sum(mask & ~credit) / jnp.maximum(jnp.sum(mask), 1)
        adv = losses.advantages(outcome, r_GKT, mask, 1.0, alpha_p, qc.whiten, qc.estimator, qc.process_adv, pc.score,
                                credit)
        if pc.loss != "none":  # how much of the process advantage only rewards positions (same for all samples)
            g_p = losses.reward_to_go(alpha_p * losses.process_rewards(r_GKT, mask, qc.estimator, qc.process_adv,
                                                                       pc.score), mask)
            g_o = losses.advantages(outcome, r_GKT, mask, 1.0, 0.0, False, qc.estimator)
            (metrics["process_adv_shared_rms"], metrics["process_adv_sample_rms"]) = losses.shared_and_sample_rms(g_p, mask)
            metrics["outcome_adv_rms"] = jnp.sqrt(losses.masked_mean(jnp.square(g_o), mask))
        pol_mb = [batch.prompt_GP, batch.prompt_mask_GP, batch.rollout_GKT, mask, batch.sampler_logp_GKT, adv]
        if state.policy_ref is not None:
            ref_lp = map_pieces(lambda a: prm.response_logprobs(pol_cfg, state.policy_ref, prm.build_seqs(*a), layout,
                                                                qc.logit_chunk, cfg.temperature)[0].reshape(-1, K, T),
                                (batch.prompt_GP, batch.prompt_mask_GP, batch.rollout_GKT, mask), n_pieces)
            pol_mb.append(jax.lax.stop_gradient(ref_lp))
        (policy, policy_opt), qm = jax.lax.scan(policy_minibatch, (state.policy, state.policy_opt),
                                                tuple(split(x, qc.minibatches) for x in pol_mb))
        metrics |= {k: jnp.mean(v) for k, v in qm.items()}
        same = jnp.all(outcome == outcome[:, :1], axis=-1)
        metrics |= dict(zero_adv_group_frac=jnp.mean(same.astype(jnp.float32)),
                        outcome_mean=losses.masked_mean(batch.outcome_GK, mask.any(-1)),
                        rollout_tokens=jnp.sum(mask), expert_tokens=jnp.sum(batch.expert_mask_GET),
                        response_len_mean=jnp.mean(jnp.sum(mask, -1).astype(jnp.float32)))
        new = TrainState(step=state.step + 1, policy=policy, prm=prm_params, prm_ref=state.prm_ref,
                         policy_ref=state.policy_ref, policy_opt=policy_opt, prm_opt=prm_opt_state,
                         rng=jax.random.key_data(jax.random.split(jax.random.wrap_key_data(state.rng))[0]))
        # A non-finite loss, gradient norm or parameter rejects the whole step: the state comes back
        # unchanged (inside the jit, since the input state is donated) and `step_ok` says so.
        finite = [jnp.isfinite(metrics[k]) for k in ("policy_loss", "policy_grad_norm", "prm_loss", "prm_grad_norm")
                  if k in metrics]
        finite += [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves((new.policy, new.prm))]
        ok = jnp.all(jnp.stack(finite))
        new = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, state)
        metrics["step_ok"] = ok.astype(jnp.float32)
        return new, metrics

    traces = [0]  # how often the step was traced: once per batch shape (asserted by the tests)

    def counted(state, batch):
        traces[0] += 1
        return step(state, batch)

    state_sh = None
    if layout is not None:
        abs_pol = transformer.abstract_params(cfg.policy_model)
        abs_prm = None if cfg.prm.form == "shared" else transformer.abstract_params(cfg.prm_model)
        state_sh = state_shardings(cfg, layout, jax.eval_shape(lambda a, b: init_state(cfg, a, b), abs_pol, abs_prm))
    compiled = {}

    def jit_for(batch: Batch):
        """One jit per batch shape: the batch shardings depend on it (divisibility by the mesh)."""
        key = tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(batch))
        if key not in compiled:
            kw = {}
            if layout is not None:
                batch_sh = jax.tree.map(lambda a, x: layout.sharding(a, x.shape), batch.axes(), batch,
                                        is_leaf=lambda v: isinstance(v, tuple))
                kw = dict(in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, layout.sharding(())))
            compiled[key] = jax.jit(counted, donate_argnums=0, compiler_options=compiler_options(layout), **kw)
        return compiled[key]

    def run(state: TrainState, batch: Batch):
        return jit_for(batch)(state, batch)

    run.traces = lambda: traces[0]
    run.state_shardings = state_sh
    run.lower = lambda state, batch: jit_for(batch).lower(state, batch)
    return run
