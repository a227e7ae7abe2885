"""Supervised fine-tuning (imitation) on expert solutions: the demo's warm-up, and a baseline.

Loss: L = - sum_{b,t} m_bt log pi(y_bt | y_b,<t) / sum_{b,t} m_bt, where m marks the response
tokens (the expert solution and its EOS), not the prompt. Sequences are prompt + response.
Training packs each minibatch's sequences into rows of the bucket length (first fit, longest
first), each attending only to itself with positions restarting: the same loss as one padded
row per sequence, on the demo's chains (mean 65 of 104 tokens) in about 2/3 of the rows.
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


def sft_loss(cfg: ModelConfig, params, tokens_BL, mask_BL, chunk: int = 0, positions_BL=None, segments_BL=None):
    """Mean negative log-likelihood of the tokens where mask_BL (position t predicts token t).
    Packed rows (`pack`): positions_BL restart and segments_BL separate the sequences of a row."""
    cut = lambda x: None if x is None else x[:, :-1]
    h_BLD, _ = hidden_states(cfg, params, tokens_BL[:, :-1], positions_BL=cut(positions_BL),
                             segments_BL=cut(segments_BL))
    w_VD = params["embed"] if cfg.tie_word_embeddings else params["lm_head"]
    logp, _ = losses.token_logprobs(h_BLD, w_VD, tokens_BL[:, 1:], chunk)
    return -losses.masked_mean(logp, mask_BL[:, 1:])


def make_sft_step(cfg: ModelConfig, optim: OptimConfig, chunk: int = 0):
    """(init(params) -> opt_state, step(params, opt_state, tokens_BL, mask_BL, positions_BL, segments_BL)
    -> (params, opt_state, loss)); positions and segments as `pack` returns them."""
    opt = make_optimizer(optim)

    @functools.partial(jax.jit, donate_argnums=(0, 1), compiler_options=compiler_options())
    def step(params, opt_state, tokens_BL, mask_BL, positions_BL, segments_BL):
        loss, grads = jax.value_and_grad(
            lambda p: sft_loss(cfg, p, tokens_BL, mask_BL, chunk, positions_BL, segments_BL))(params)
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


def pack(tokens, mask, lengths, length: int, row_multiple: int = 8):
    """Packs sequences (tokens[i, :lengths[i]], right-padded rows of encode_pairs) into rows of
    `length`, first fit in order of decreasing length; the row count is rounded up to a multiple
    of row_multiple so that few shapes compile. Returns tokens_RL, mask_RL, positions_RL (from 0
    in each sequence) and segments_RL (1, 2, ... per sequence in a row, 0 = padding)."""
    free, rows = [], []  # free tokens per row, the sequences in it
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = next((r for r, f in enumerate(free) if f >= lengths[i]), None)
        if r is None:
            free.append(length)
            rows.append([])
            r = len(rows) - 1
        free[r] -= lengths[i]
        rows[r].append(i)
    R = -(-len(rows) // row_multiple) * row_multiple
    out = [np.zeros((R, length), d) for d in (np.int32, bool, np.int32, np.int32)]
    for r, members in enumerate(rows):
        at = 0
        for seg, i in enumerate(members, 1):
            n = lengths[i]
            for a, v in zip(out, (tokens[i, :n], mask[i, :n], np.arange(n), seg)):
                a[r, at:at + n] = v
            at += n
    return tuple(out)


def train(cfg: ModelConfig, params, prompt_ids, responses, *, steps: int, batch: int, optim: OptimConfig,
          length: int, seed: int = 0, chunk: int = 0, desc: str = "sft"):
    """`steps` updates on random minibatches of (prompt, response) pairs, packed. Returns (params, losses)."""
    if any(len(p) == 0 for p in prompt_ids):  # a packed row's next sequence must not be predicted from the last
        raise ValueError("sft.train: an empty prompt (each sequence's first token must be a prompt token)")
    tokens, mask, cut = encode_pairs(prompt_ids, responses, length)
    if cut:
        log.warning("sft: %d of %d examples longer than %d tokens were cut", cut, len(tokens), length)
    lengths = np.minimum([len(p) + len(r) for p, r in zip(prompt_ids, responses)], length)
    init, step = make_sft_step(cfg, optim, chunk)
    opt_state, rng, out = init(params), np.random.RandomState(seed), []
    bar = tqdm(range(steps), desc=desc, unit="step", dynamic_ncols=True)
    for i in bar:
        idx = rng.randint(0, len(tokens), batch)
        params, opt_state, loss = step(params, opt_state, *pack(tokens[idx], mask[idx], lengths[idx], length))
        if i % 10 == 0 or i == steps - 1:
            out.append((i + 1, float(loss)))
            bar.set_postfix(loss=f"{out[-1][1]:.3f}")
    return params, out
