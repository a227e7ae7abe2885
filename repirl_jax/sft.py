"""Supervised fine-tuning (imitation) on expert solutions: the demo's warm-up, and a baseline.

Loss: L = - sum_{b,t} m_bt log pi(y_bt | y_b,<t) / sum_{b,t} m_bt, where m marks the response
tokens (the expert solution and its EOS), not the prompt. Sequences are prompt + response,
right-padded to a fixed bucket so one shape compiles.
"""
from __future__ import annotations

import functools
import logging

import jax
import numpy as np
import optax
from tqdm import tqdm

from . import losses
from .config import OptimConfig
from .models import ModelConfig, hidden_states
from .train_step import compiler_options, make_optimizer

log = logging.getLogger(__name__)


def sft_loss(cfg: ModelConfig, params, tokens_BL, mask_BL, chunk: int = 0):
    """Mean negative log-likelihood of the tokens where mask_BL (position t predicts token t)."""
    h_BLD, _ = hidden_states(cfg, params, tokens_BL[:, :-1])
    w_VD = params["embed"] if cfg.tie_word_embeddings else params["lm_head"]
    logp, _ = losses.token_logprobs(h_BLD, w_VD, tokens_BL[:, 1:], chunk)
    return -losses.masked_mean(logp, mask_BL[:, 1:])


def make_sft_step(cfg: ModelConfig, optim: OptimConfig, chunk: int = 0):
    """(init(params) -> opt_state, step(params, opt_state, tokens_BL, mask_BL) -> (params, opt_state, loss))."""
    opt = make_optimizer(optim)

    @functools.partial(jax.jit, donate_argnums=(0, 1), compiler_options=compiler_options())
    def step(params, opt_state, tokens_BL, mask_BL):
        loss, grads = jax.value_and_grad(lambda p: sft_loss(cfg, p, tokens_BL, mask_BL, chunk))(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return opt.init, step


def encode_pairs(prompt_ids: list[list[int]], responses: list[list[int]], length: int):
    """Right-padded prompt + response rows [N, length] and the response mask; rows longer than
    `length` are cut (and counted in the returned `cut`)."""
    n = len(prompt_ids)
    tokens, mask, cut = np.zeros((n, length), np.int32), np.zeros((n, length), bool), 0
    for i, (p, r) in enumerate(zip(prompt_ids, responses)):
        row = (p + r)[:length]
        cut += len(p) + len(r) > length
        tokens[i, :len(row)] = row
        mask[i, len(p):len(row)] = True
    return tokens, mask, cut


def train(cfg: ModelConfig, params, prompt_ids, responses, *, steps: int, batch: int, optim: OptimConfig,
          length: int, seed: int = 0, chunk: int = 0, desc: str = "sft"):
    """`steps` updates on random minibatches of (prompt, response) pairs. Returns (params, losses)."""
    tokens, mask, cut = encode_pairs(prompt_ids, responses, length)
    if cut:
        log.warning("sft: %d of %d examples longer than %d tokens were cut", cut, len(tokens), length)
    init, step = make_sft_step(cfg, optim, chunk)
    opt_state, rng, out = init(params), np.random.RandomState(seed), []
    bar = tqdm(range(steps), desc=desc, unit="step", dynamic_ncols=True)
    for i in bar:
        idx = rng.randint(0, len(tokens), batch)
        params, opt_state, loss = step(params, opt_state, tokens[idx], mask[idx])
        if i % 10 == 0 or i == steps - 1:
            out.append((i + 1, float(loss)))
            bar.set_postfix(loss=f"{out[-1][1]:.3f}")
    return params, out
