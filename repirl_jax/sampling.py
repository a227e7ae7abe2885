"""Batched generation: one jitted prefill, then one `lax.while_loop` decode over a preallocated
KV cache. Prompts are left-padded to a bucketed length so few shapes ever compile; the K samples
of a prompt share its prefill (the cache rows are repeated after it).

State of the decode loop (all device arrays, N = prompts * num_samples, M = max_new_tokens):
  step        int32 []          next output index to write
  cache       {k, v}            [layers, N, P + M, kv_heads, head_dim]
  last        int32 [N]         token fed at this step
  done        bool  [N]         row has emitted EOS (its later tokens are masked out)
  tokens      int32 [N, M]      completion tokens (pad after EOS)
  logprobs    f32   [N, M]      log pi(token) under the untempered model (the trainer's pi_old)
  sample_lp   f32   [N, M]      log-prob under the distribution actually sampled from
  key                           PRNG key
"""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .models import transformer
from .models.config import ModelConfig
from .sharding import Layout


@dataclasses.dataclass
class GenerateOutput:
    tokens: np.ndarray  # int32 [N, S] completion tokens, rows grouped by prompt (K per prompt)
    mask: np.ndarray  # bool [N, S] real tokens up to and including EOS
    logprobs: np.ndarray  # float32 [N, S] untempered model log-probs of the chosen tokens
    sample_logprobs: np.ndarray  # float32 [N, S] log-probs under the sampling distribution used

    @property
    def lengths(self) -> np.ndarray:
        return self.mask.sum(-1)


def bucket(n: int, minimum: int = 16) -> int:
    """Next power of two >= n (>= minimum): lengths that share a bucket share a compile."""
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def left_pad(prompts: Sequence[Sequence[int]], length: int, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.full((len(prompts), length), pad_id, np.int32)
    valid = np.zeros((len(prompts), length), bool)
    for i, p in enumerate(prompts):
        if len(p):
            tokens[i, -len(p):] = p
            valid[i, -len(p):] = True
    return tokens, valid


def sample_token(logits_NV: jax.Array, key: jax.Array, temperature, top_k: int, top_p,
                 greedy: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns (token [N], untempered log-prob [N], sampling-distribution log-prob [N])."""
    logp_NV = jax.nn.log_softmax(logits_NV, axis=-1)
    if greedy:
        tok = jnp.argmax(logits_NV, axis=-1)
        return tok, jnp.take_along_axis(logp_NV, tok[:, None], -1)[:, 0], jnp.zeros(tok.shape, jnp.float32)
    x = logits_NV / temperature
    if top_k > 0:
        kth = jax.lax.top_k(x, top_k)[0][:, -1:]
        x = jnp.where(x < kth, -jnp.inf, x)
    # nucleus: keep the smallest prefix of the sorted distribution whose mass reaches top_p
    srt = jnp.sort(x, axis=-1)[:, ::-1]
    cum = jnp.cumsum(jax.nn.softmax(srt, axis=-1), axis=-1)
    n_keep = jnp.sum(cum - jax.nn.softmax(srt, axis=-1) < top_p, axis=-1, keepdims=True)
    thresh = jnp.take_along_axis(srt, jnp.maximum(n_keep - 1, 0), -1)
    x = jnp.where(x < thresh, -jnp.inf, x)
    tok = jax.random.categorical(key, x, axis=-1)
    slp = jnp.take_along_axis(jax.nn.log_softmax(x, axis=-1), tok[:, None], -1)[:, 0]
    return tok, jnp.take_along_axis(logp_NV, tok[:, None], -1)[:, 0], slp


@partial(jax.jit, static_argnames=("cfg", "max_new", "num_samples", "top_k", "greedy", "eos_ids", "layout"))
def _generate(cfg: ModelConfig, params, tokens_BP, valid_BP, key, temperature, top_p, limit, *, max_new: int,
              num_samples: int, top_k: int, greedy: bool, eos_ids: tuple[int, ...], layout: Layout | None):
    B, P = tokens_BP.shape
    N, M = B * num_samples, max_new
    positions_BP = jnp.maximum(jnp.cumsum(valid_BP, axis=-1) - 1, 0).astype(jnp.int32)
    valid_BS = jnp.concatenate([valid_BP, jnp.ones((B, M), bool)], axis=1)
    cache = transformer.init_cache(cfg, B, P + M, layout)
    h_BPD, cache = transformer.hidden_states(cfg, params, tokens_BP, positions_BL=positions_BP,
                                             valid_BS=valid_BS, cache=cache, cache_index=0, layout=layout)
    logits_BV = transformer.unembed(cfg, params, h_BPD[:, -1:], layout)[:, 0]
    # The K samples of a prompt share its prefill: repeat rows, prompt-major.
    rep = lambda x, axis=0: jnp.repeat(x, num_samples, axis=axis)
    cache = jax.tree.map(lambda c: rep(c, 1), cache)
    logits_NV, valid_NS = rep(logits_BV), rep(valid_BS)
    next_pos_N = rep(positions_BP[:, -1] + 1)
    eos = jnp.asarray(eos_ids or (-1,), jnp.int32)

    key, sub = jax.random.split(key)
    tok, lp, slp = sample_token(logits_NV, sub, temperature, top_k, top_p, greedy)
    state = dict(step=jnp.int32(1), cache=cache, last=tok, done=jnp.isin(tok, eos),
                 tokens=jnp.zeros((N, M), jnp.int32).at[:, 0].set(tok),
                 logprobs=jnp.zeros((N, M), jnp.float32).at[:, 0].set(lp),
                 sample_lp=jnp.zeros((N, M), jnp.float32).at[:, 0].set(slp),
                 mask=jnp.zeros((N, M), bool).at[:, 0].set(True), key=key)

    def cond(s):
        return (s["step"] < limit) & ~jnp.all(s["done"])

    def body(s):
        step = s["step"]
        h, cache = transformer.hidden_states(
            cfg, params, s["last"][:, None], positions_BL=(next_pos_N + step - 1)[:, None], valid_BS=valid_NS,
            cache=s["cache"], cache_index=P + step - 1, layout=layout)
        key, sub = jax.random.split(s["key"])
        tok, lp, slp = sample_token(transformer.unembed(cfg, params, h, layout)[:, 0], sub, temperature, top_k,
                                    top_p, greedy)
        live = ~s["done"]
        tok = jnp.where(live, tok, 0)
        put = lambda buf, v: jax.lax.dynamic_update_slice(buf, v[:, None].astype(buf.dtype), (0, step))
        return dict(step=step + 1, cache=cache, last=tok, done=s["done"] | jnp.isin(tok, eos) & live,
                    tokens=put(s["tokens"], tok), logprobs=put(s["logprobs"], jnp.where(live, lp, 0.0)),
                    sample_lp=put(s["sample_lp"], jnp.where(live, slp, 0.0)), mask=put(s["mask"], live), key=key)

    s = jax.lax.while_loop(cond, body, state)
    return s["tokens"], s["mask"], s["logprobs"], s["sample_lp"]


def generate(cfg: ModelConfig, params, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, num_samples: int = 1,
             eos_id: int | Sequence[int] | None = None, seed: int = 0, pad_id: int = 0,
             layout: Layout | None = None) -> GenerateOutput:
    """Samples `num_samples` completions per prompt (token-id lists of any lengths).

    temperature 0 is greedy. eos_id None generates exactly max_new_tokens. Output rows are
    prompt-major: row i * num_samples + k is sample k of prompt i.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}: must be >= 1")
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise ValueError(f"temperature={temperature}, top_p={top_p}, top_k={top_k}: need t >= 0, 0 < top_p <= 1, top_k >= 0")
    eos = () if eos_id is None else (eos_id,) if isinstance(eos_id, int) else tuple(eos_id)
    tokens, valid = left_pad(prompts, bucket(max(len(p) for p in prompts)), pad_id)
    out = _generate(cfg, params, tokens, valid, jax.random.key(seed), jnp.float32(max(temperature, 1e-6)),
                    jnp.float32(top_p), jnp.int32(max_new_tokens), max_new=bucket(max_new_tokens), num_samples=num_samples, top_k=top_k,
                    greedy=temperature == 0, eos_ids=eos, layout=layout)
    toks, mask, lp, slp = (np.asarray(x)[:, :max_new_tokens] for x in out)
    return GenerateOutput(tokens=np.where(mask, toks, pad_id).astype(np.int32), mask=mask, logprobs=lp,
                          sample_logprobs=slp)
