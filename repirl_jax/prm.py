"""Process reward model forms (ALGORITHM.md section 2): one scalar reward per response token.

  head      r_t = w . h_t + b, h_t = last hidden state of a separate trunk at the position whose
            input token is a_t; trunk from a checkpoint, head zero-initialised (params: trunk, head)
  implicit  r_t = beta * (log pi_phi(a_t | s_t) - log pi_ref(a_t | s_t)), pi_ref a frozen copy of
            the initial PRM LM (params: lm; the reference lives in TrainState.prm_ref)
  shared    r_t = w . h_t + b on the policy's own trunk, gradients to the head only (params: head)
  head_logprob [ours]  r_t = w . h_t + b + c log p_trunk(a_t | s_t): the head form plus the trunk's own
            LM log-prob of the token as a feature, c initialised to prm.logprob_init. A slipped
            token is one the trunk did not predict; the plain head must grow a circuit comparing a_t
            with the prediction made one position earlier, this form reads it off the LM head
            (params: trunk, head with w, b, c). With c = 1 and a zero head the energy starts as the
            trunk's log-likelihood, R_0(tau) = log pi_trunk(tau | x): the EBM starts at the
            imitation-trained model, and with the policy initialised from the same checkpoint the IS
            weights R - log pi_old start uniform (score=sum) instead of all on the least likely
            failure; training learns the correction w . h + b and the scale c. (head_scale scales
            w . h + b only: c starts at its value, not at zero.)
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from .losses import token_logprobs
from .models import transformer
from .models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Seqs:
    """Prompt + response sequences: tokens / valid / positions [B, L]; the response is [P, L)."""

    tokens: jax.Array
    valid: jax.Array
    positions: jax.Array
    P: int


def build_seqs(prompt_GP, prompt_mask_GP, resp_GNT, resp_mask_GNT) -> Seqs:
    """[G, P] left-padded prompts and [G, N, T] right-padded responses -> G*N sequences."""
    G, N, T = resp_GNT.shape
    P = prompt_GP.shape[1]
    rep = lambda x: jnp.broadcast_to(x[:, None], (G, N, P)).reshape(G * N, P)
    tokens = jnp.concatenate([rep(prompt_GP), resp_GNT.reshape(G * N, T)], axis=1)
    valid = jnp.concatenate([rep(prompt_mask_GP), resp_mask_GNT.reshape(G * N, T)], axis=1)
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0).astype(jnp.int32)
    return Seqs(tokens.astype(jnp.int32), valid.astype(bool), positions, P)


def head_init(d_model: int) -> dict:
    return {"w": jnp.zeros((d_model,), jnp.float32), "b": jnp.zeros((), jnp.float32)}


def head_axes(form: str = "head") -> dict:
    return {"w": ("embed",), "b": ()} | ({"c": ()} if form == "head_logprob" else {})


def init_params(form: str, prm_cfg: ModelConfig, trunk_params: dict | None, logprob_init: float = 0.0) -> dict:
    """PRM params: the trunk (a checkpoint's LM params) for head / implicit, plus a zero head
    (head_logprob: c = logprob_init)."""
    if form in ("head", "head_logprob"):
        head = head_init(prm_cfg.hidden_size)
        c = {"c": jnp.full((), logprob_init, jnp.float32)} if form == "head_logprob" else {}
        return {"trunk": trunk_params, "head": head | c}
    if form == "implicit":
        return {"lm": trunk_params}
    if form == "shared":
        return {"head": head_init(prm_cfg.hidden_size)}
    raise ValueError(f"prm.form={form!r}")


def param_axes(form: str, prm_cfg: ModelConfig) -> dict:
    lm = transformer.param_axes(prm_cfg)
    return {"head": {"trunk": lm, "head": head_axes()}, "head_logprob": {"trunk": lm, "head": head_axes(form)},
            "implicit": {"lm": lm}, "shared": {"head": head_axes()}}[form]


def response_logprobs(cfg: ModelConfig, params: dict, seqs: Seqs, layout=None, chunk: int = 0,
                      temperature: float = 1.0):
    """(log pi_T(a_t | s_t), entropy_t) for the response tokens, [B, T] each, pi_T = softmax(logits / T):
    the distribution the sampler drew from at temperature T (logits are linear in h, so h / T)."""
    h_BLD, _ = transformer.hidden_states(cfg, params, seqs.tokens, positions_BL=seqs.positions,
                                         valid_BS=seqs.valid, layout=layout)
    w = params["embed"] if cfg.tie_word_embeddings else params["lm_head"]
    L = seqs.tokens.shape[1]
    h = h_BLD[:, seqs.P - 1:L - 1]
    return token_logprobs(h if temperature == 1.0 else h / temperature, w, seqs.tokens[:, seqs.P:], chunk)


def _head_parts(cfg, trunk, head, seqs, layout, chunk: int = 0):
    """The trunk's response hidden states h [B, T, D] and (head_logprob) token log-probs log p_trunk [B, T]."""
    h_BLD, _ = transformer.hidden_states(cfg, trunk, seqs.tokens, positions_BL=seqs.positions,
                                         valid_BS=seqs.valid, layout=layout)
    lp = None
    if "c" in head:  # log p_trunk(a_t | s_t), from the position before a_t
        w = trunk["embed"] if cfg.tie_word_embeddings else trunk["lm_head"]
        lp, _ = token_logprobs(h_BLD[:, seqs.P - 1:-1], w, seqs.tokens[:, seqs.P:], chunk)
    return h_BLD[:, seqs.P:], lp


def _head_combine(head, h_BTD, lp_BT, scale: float = 1.0):
    """r_t = scale (w . h_t + b) (+ c log p_trunk(a_t | s_t) for head_logprob)."""
    r = jnp.einsum("btd,d->bt", h_BTD.astype(jnp.float32), head["w"]) + head["b"]
    r = r if scale == 1.0 else scale * r
    return r if lp_BT is None else r + head["c"] * lp_BT


def _head_rewards(cfg, trunk, head, seqs, layout, chunk: int = 0, scale: float = 1.0):
    return _head_combine(head, *_head_parts(cfg, trunk, head, seqs, layout, chunk), scale)


def head_rewards_split(prm_cfg: ModelConfig, prm_params: dict, seqs: Seqs, layout=None, chunk: int = 0,
                       head_scale: float = 1.0):
    """head_logprob for prm.trunk_loss=sft, from one trunk forward: (r [B, T], the same token rewards
    with the trunk's outputs stop-gradiented, so a loss on r trains the head (w, b, c) alone; lp [B, T],
    log p_trunk(a_t | s_t) with its gradient, for the trunk's own likelihood loss)."""
    h, lp = _head_parts(prm_cfg, prm_params["trunk"], prm_params["head"], seqs, layout, chunk)
    sg = jax.lax.stop_gradient
    return _head_combine(prm_params["head"], sg(h), sg(lp), head_scale), lp


def token_rewards(form: str, beta: float, prm_cfg: ModelConfig, policy_cfg: ModelConfig, prm_params: dict,
                  policy_params: dict, ref_params: dict | None, seqs: Seqs, layout=None, chunk: int = 0,
                  head_scale: float = 1.0):
    """r_phi(s_t, a_t) for every response token, float32 [B, T] (mask it with the response mask).
    head_scale multiplies a head form's w . h + b: with Adam every parameter moves ~lr per step, so a
    zero-initialised head's rewards grow head_scale times faster (a head learning-rate multiplier)."""
    if form in ("head", "head_logprob"):
        return _head_rewards(prm_cfg, prm_params["trunk"], prm_params["head"], seqs, layout, chunk, head_scale)
    if form == "shared":
        trunk = jax.lax.stop_gradient(policy_params)
        return _head_rewards(policy_cfg, trunk, prm_params["head"], seqs, layout, 0, head_scale)
    if form == "implicit":
        lp, _ = response_logprobs(prm_cfg, prm_params["lm"], seqs, layout, chunk)
        lp_ref, _ = response_logprobs(prm_cfg, jax.lax.stop_gradient(ref_params), seqs, layout, chunk)
        return beta * (lp - lp_ref)
    raise ValueError(f"prm.form={form!r}")


def check_compatible(policy_cfg: ModelConfig, prm_cfg: ModelConfig, policy_tok=None, prm_tok=None,
                     where: str = "prm") -> None:
    """The PRM may be smaller than the policy but must read the same token ids."""
    if policy_cfg.vocab_size != prm_cfg.vocab_size:
        raise ValueError(f"{where}: vocab_size {prm_cfg.vocab_size} differs from the policy's "
                         f"{policy_cfg.vocab_size}; the PRM must share the policy's tokenizer")
    if policy_tok is not None and prm_tok is not None and policy_tok.get_vocab() != prm_tok.get_vocab():
        raise ValueError(f"{where}: tokenizer vocabulary differs from the policy's; the PRM must share it")
