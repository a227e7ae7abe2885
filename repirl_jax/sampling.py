"""Batched generation: one jitted prefill, then one `lax.while_loop` decode over a preallocated
KV cache. Prompts are left-padded to a bucketed length so few shapes ever compile; the K samples
of a prompt share its prefill and its keys (a prefix cache read by all K).

State of the decode loop (all device arrays, N = prompts * num_samples, M = max_new_tokens):
  step        int32 []          next output index to write
  cache       {k, v}            [layers, N, kv_heads, M, head_dim], the completions' keys and values
                                (the prompts' are a read-only prefix cache [layers, prompts, ...]);
                                on CPU both as one buffer per layer (transformer.decode_split)
  last        int32 [N]         token fed at this step
  done        bool  [N]         row has emitted EOS or a stop sequence (later tokens masked out)
  recent      int32 [N, W]      the row's last W tokens, W = longest stop sequence
  tokens      int32 [N, M]      completion tokens (pad after the end)
  mask        bool  [N, M]      real tokens, up to and including EOS / the stop sequence
  logprobs    f32   [N, M]      log pi(token) under the untempered model (the trainer's pi_old)
  sample_lp   f32   [N, M]      log-prob under the distribution actually sampled from
Randomness: the draw of row n at step t uses fold_in(fold_in(key(seed), n), t), so it does not
depend on the batch's other rows or on how the batch is sharded.

Continuous batching (generate(slots=S)): R = prompts * num_samples requests share S decode slots.
Per slot: req (its request, R = none), step (its own next output index), done (ended or empty:
free), last, recent, valid [S, P + M], pos (RoPE position of its first new token), and its row of
the cache [layers, S, kv_heads, P + M, head_dim], written at its own index P + step - 1. A free
slot takes the next waiting request (queue): its prompt's keys and values are copied into the
row's first P slots from a one-row staging cache (stage, staged = its prompt), where each prompt is
prefilled once for its K samples; every slot then decodes together. Outputs are written at (req, step) into [R, M] buffers, so row r
is request r: the static sampler's row r, drawn with the same keys.
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
from . import sharding
from .sharding import Layout


@dataclasses.dataclass
class GenerateOutput:
    tokens: np.ndarray  # int32 [N, S] completion tokens, rows grouped by prompt (K per prompt)
    mask: np.ndarray  # bool [N, S] real tokens up to and including EOS
    logprobs: np.ndarray  # float32 [N, S] untempered model log-probs of the chosen tokens
    sample_logprobs: np.ndarray  # float32 [N, S] log-probs under the sampling distribution used
    slot_steps: int = 0  # token positions computed, real or not (rows x steps): utilisation = mask.sum() / this
    kv_cache_bytes: int = 0  # the largest KV cache allocated at once

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


def pad_right(rows: Sequence[Sequence[int]], T: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded token rows [N, T] (rows cut at T) and their mask: responses and experts."""
    out, mask = np.zeros((len(rows), T), np.int32), np.zeros((len(rows), T), bool)
    for i, r in enumerate(rows):
        r = r[:T]
        out[i, :len(r)] = r
        mask[i, :len(r)] = True
    return out, mask


def truncate_logits(logits_NV: jax.Array, temperature, top_k: int, top_p, min_p, nucleus: bool) -> jax.Array:
    """logits / T with tokens outside top-k, the top-p nucleus or below min_p * p_max set to -inf.

    top_k is static (lax.top_k needs it); the nucleus needs a vocabulary sort, so it is only
    built when `nucleus` (top_p < 1) is set.
    """
    x = logits_NV / temperature
    if top_k > 0:
        kth = jax.lax.top_k(x, top_k)[0][:, -1:]
        x = jnp.where(x < kth, -jnp.inf, x)
    if nucleus:  # keep the smallest prefix of the sorted distribution whose mass reaches top_p
        srt = jnp.sort(x, axis=-1)[:, ::-1]
        p_srt = jax.nn.softmax(srt, axis=-1)
        n_keep = jnp.sum(jnp.cumsum(p_srt, axis=-1) - p_srt < top_p, axis=-1, keepdims=True)
        x = jnp.where(x < jnp.take_along_axis(srt, jnp.maximum(n_keep - 1, 0), -1), -jnp.inf, x)
    # min-p: p >= min_p * p_max  <=>  x >= x_max + log(min_p); min_p = 0 keeps everything.
    x_max = jnp.max(x, axis=-1, keepdims=True)
    return jnp.where(x < x_max + jnp.log(min_p), -jnp.inf, x)


def sample_token(logits_NV: jax.Array, keys_N: jax.Array, temperature, top_k: int, top_p, min_p,
                 nucleus: bool, draw: str) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns (token [N], untempered log-prob [N], sampling-distribution log-prob [N]).

    Each row draws with its own key, so a row's sample does not depend on the rest of the batch.
    draw: "greedy" (argmax), "icdf" or "gumbel" (both exact samples of the truncated softmax).
    "icdf" inverts the CDF with one uniform per row; "gumbel" takes argmax(log p + Gumbel noise),
    one Gumbel per vocabulary entry. Why both: the threefry bits for [N, V] Gumbels cost more than
    the rest of a small model's step on CPU (2.8 vs 10 ms for 8 x 49,152 here), but an inverse CDF
    is fragile under roundoff: logits that differ in the last bits (another batching, another
    process count) move every one of the V CDF boundaries, and over a flat distribution u falls
    between the two positions of one about once per 1,000 draws (test_sampling), while the Gumbel
    argmax only changes when its top two are within that roundoff (~1e-6 per draw).
    """
    logp_NV = jax.nn.log_softmax(logits_NV, axis=-1)
    if draw == "greedy":
        tok = jnp.argmax(logits_NV, axis=-1)
        return tok, jnp.take_along_axis(logp_NV, tok[:, None], -1)[:, 0], jnp.zeros(tok.shape, jnp.float32)
    x = truncate_logits(logits_NV, temperature, top_k, top_p, min_p, nucleus)
    slogp_NV = jax.nn.log_softmax(x, axis=-1)
    if draw == "gumbel":
        g_NV = jax.vmap(lambda k: jax.random.gumbel(k, logits_NV.shape[-1:]))(keys_N)
        tok = jnp.argmax(slogp_NV + g_NV, axis=-1)
    else:
        cdf_NV = jnp.cumsum(jnp.exp(slogp_NV), axis=-1)
        u_N = jax.vmap(lambda k: jax.random.uniform(k, minval=1e-7))(keys_N) * cdf_NV[:, -1]
        tok = jnp.minimum(jnp.sum(cdf_NV < u_N[:, None], axis=-1), logits_NV.shape[-1] - 1)
    slp = jnp.take_along_axis(slogp_NV, tok[:, None], -1)[:, 0]
    return tok, jnp.take_along_axis(logp_NV, tok[:, None], -1)[:, 0], slp


def _stop_hit(recent_NW: jax.Array, stop_JW: jax.Array) -> jax.Array:
    """Whether the last tokens of a row end with any stop sequence (right-aligned, -1 = padding)."""
    eq_NJW = (stop_JW[None] == -1) | (recent_NW[:, None, :] == stop_JW[None])
    return jnp.any(jnp.all(eq_NJW, axis=-1), axis=-1)


def _stop_rule(live_N, recent_NW, tok_N, eos_E, stop_JW):
    """The one end-of-row rule of both samplers: rows that emit now (`live`) keep their token and
    push it onto their recent tokens; a live row ends on an EOS id or a completed stop sequence.
    Returns (token, 0 where not live; recent; ended)."""
    tok = jnp.where(live_N, tok_N, 0)
    pushed = jnp.concatenate([recent_NW[:, 1:], tok[:, None]], axis=1)
    recent = jnp.where(live_N[:, None], pushed, recent_NW)
    return tok, recent, live_N & (jnp.isin(tok, eos_E) | _stop_hit(recent, stop_JW))


def _row_keys(key, rows_N, steps_N):
    """The key of row n's draw at step t: fold_in(fold_in(key, n), t), whatever the batch."""
    return jax.vmap(lambda n, t: jax.random.fold_in(jax.random.fold_in(key, n), t))(rows_N, steps_N)


@partial(jax.jit, static_argnames=("cfg", "max_new", "num_samples", "top_k", "nucleus", "draw", "layout"))
def _generate(cfg: ModelConfig, params, tokens_BP, valid_BP, key, row0, temperature, top_p, min_p, limit, eos_E,
              stop_JW, *, max_new: int, num_samples: int, top_k: int, nucleus: bool, draw: str,
              layout: Layout | None):
    B, P = tokens_BP.shape
    N, M, W = B * num_samples, max_new, stop_JW.shape[1]
    # The decode loop reads per-layer buffers on CPU (transformer.decode_split; the prefill runs once and
    # keeps the scan). Not `_run_slots`: split there too (commit ea95598), 8 prompts x 4 samples x 128 tokens
    # in 32 slots took 42.9 / 45.6 s against 41.0 / 43.5 s stacked (two alternated runs), its threads'
    # time 42 vs 60 s: less work, but less of it ran on both cores. Not understood yet.
    dparams = transformer.decode_params(params)
    positions_BP = jnp.maximum(jnp.cumsum(valid_BP, axis=-1) - 1, 0).astype(jnp.int32)
    prompt_cache = transformer.init_cache(cfg, B, P, layout)
    h_BPD, prompt_cache = transformer.hidden_states(cfg, params, tokens_BP, positions_BL=positions_BP,
                                                    valid_BS=valid_BP, cache=prompt_cache, cache_index=0, layout=layout)
    logits_BV = transformer.unembed(cfg, params, h_BPD[:, -1:], layout)[:, 0]
    # The K samples of a prompt share its prefill and read its keys once (the prefix cache, one
    # row per prompt); rows are prompt-major. Only the completions get a cache row per sample.
    prefix = dict(transformer.decode_split(prompt_cache), valid=valid_BP)
    rep = lambda x, axis=0: jnp.repeat(x, num_samples, axis=axis)
    cache = transformer.decode_split(transformer.init_cache(cfg, N, M, layout))
    valid_NS, next_pos_N = jnp.ones((N, M), bool), rep(positions_BP[:, -1] + 1)
    rows_N = row0 + jnp.arange(N)  # global row index

    def pick(logits_NV, step):
        keys = _row_keys(key, rows_N, jnp.full((N,), step, jnp.int32))
        return sample_token(logits_NV, keys, temperature, top_k, top_p, min_p, nucleus, draw)

    def emit(s, step, tok, lp, slp):
        """Writes output index `step` for rows still live; finishes rows on EOS or a stop sequence."""
        live = ~s["done"]
        tok, recent, ended = _stop_rule(live, s["recent"], tok, eos_E, stop_JW)
        done = s["done"] | ended
        put = lambda buf, v: jax.lax.dynamic_update_slice(buf, v[:, None].astype(buf.dtype), (0, step))
        return dict(s, step=step + 1, last=tok, done=done, recent=recent, tokens=put(s["tokens"], tok),
                    logprobs=put(s["logprobs"], jnp.where(live, lp, 0.0)),
                    sample_lp=put(s["sample_lp"], jnp.where(live, slp, 0.0)), mask=put(s["mask"], live))

    state = dict(step=jnp.int32(0), cache=cache, last=jnp.zeros((N,), jnp.int32), done=jnp.zeros((N,), bool),
                 recent=jnp.full((N, W), -2, jnp.int32), tokens=jnp.zeros((N, M), jnp.int32),
                 logprobs=jnp.zeros((N, M), jnp.float32), sample_lp=jnp.zeros((N, M), jnp.float32),
                 mask=jnp.zeros((N, M), bool))
    state = emit(state, 0, *pick(rep(logits_BV), 0))

    def cond(s):
        return (s["step"] < limit) & ~jnp.all(s["done"])

    def body(s):
        step = s["step"]
        h, cache = transformer.hidden_states(
            cfg, dparams, s["last"][:, None], positions_BL=(next_pos_N + step - 1)[:, None], valid_BS=valid_NS,
            cache=s["cache"], cache_index=step - 1, prefix=prefix, layout=layout)
        return emit(dict(s, cache=cache), step, *pick(transformer.unembed(cfg, params, h, layout)[:, 0], step))

    s = jax.lax.while_loop(cond, body, state)
    return s["tokens"], s["mask"], s["logprobs"], s["sample_lp"], s["step"] * N


def _slot_state(cfg: ModelConfig, S: int, P: int, M: int, W: int, R: int, layout: Layout | None) -> dict:
    """The continuous sampler's state before any slot is filled (module doc: slots S, requests R)."""
    z = lambda shape, dt, v=0: jnp.full(shape, v, dt)
    cache = transformer.init_cache(cfg, S, P + M, layout)  # k and v are one buffer there: the state is donated
    stage = transformer.init_cache(cfg, 1, P)
    return dict(cache=dict(cache, v=cache["v"].copy()), stage=dict(stage, v=stage["v"].copy()),
                stage_logits=z((1, cfg.vocab_size), jnp.float32), staged=jnp.int32(-1), req=z((S,), jnp.int32, R),
                step=z((S,), jnp.int32), last=z((S,), jnp.int32), done=z((S,), bool, True),
                recent=z((S, W), jnp.int32, -2), valid=z((S, P + M), bool), pos=z((S,), jnp.int32),
                queue=jnp.int32(0), iters=jnp.int32(0), tokens=z((R, M), jnp.int32), mask=z((R, M), bool),
                logprobs=z((R, M), jnp.float32), sample_lp=z((R, M), jnp.float32))


@partial(jax.jit, static_argnames=("cfg", "num_samples", "in_loop", "top_k", "nucleus", "draw", "layout"),
         donate_argnames=("s",))
def _run_slots(cfg: ModelConfig, params, s, tokens_BP, valid_BP, key, row0, temperature, top_p, min_p, limit, eos_E,
               stop_JW, until, shrink_at, *, num_samples: int, in_loop: bool, top_k: int, nucleus: bool,
               draw: str, layout: Layout | None):
    """Continuous batching: fills free slots with waiting requests, then decodes all slots until
    `until` decode steps have run or nothing is left (in_loop: free slots are refilled after every
    step inside this loop; else the caller refills between calls, `until` steps apart), or until
    no request waits and at most `shrink_at` slots are live (the caller then moves them into a
    smaller cache: `_compact`).

    Request r is sample r % K of prompt r // K and draws with the keys of global row row0 + r, so
    its tokens are the static sampler's row r: only the slot it runs in and when differ.
    """
    B, P = tokens_BP.shape
    (S, X), R = s["valid"].shape, B * num_samples
    pos_BP = jnp.maximum(jnp.cumsum(valid_BP, axis=-1) - 1, 0).astype(jnp.int32)

    def pick(logits_NV, req_N, step_N):
        keys = _row_keys(key, row0 + req_N, step_N)
        return sample_token(logits_NV, keys, temperature, top_k, top_p, min_p, nucleus, draw)

    def emit(s, emit_S, tok_S, lp_S, slp_S):
        """Writes each live emitting slot's token at (its request, its step); a row also ends at limit."""
        live = emit_S & ~s["done"]
        tok, recent, ended = _stop_rule(live, s["recent"], tok_S, eos_E, stop_JW)
        at = (jnp.where(live, s["req"], R), s["step"])  # row R is out of range: dropped
        put = lambda buf, v: buf.at[at].set(v.astype(buf.dtype), mode="drop")
        return dict(s, last=jnp.where(live, tok, s["last"]), recent=recent, step=s["step"] + live,
                    done=s["done"] | ended | live & (s["step"] + 1 >= limit), tokens=put(s["tokens"], tok),
                    mask=put(s["mask"], live), logprobs=put(s["logprobs"], lp_S), sample_lp=put(s["sample_lp"], slp_S))

    def prefill(b):
        """Prompt b's keys, values (a cache of the prompt's length: the static prefill's empty
        completion slots only add exact zeros) and next-token logits, staged for its K samples."""
        h_1PD, stage = transformer.hidden_states(cfg, params, tokens_BP[b][None], positions_BL=pos_BP[b][None],
                                                 valid_BS=valid_BP[b][None], cache=transformer.init_cache(cfg, 1, P),
                                                 cache_index=0, layout=layout)
        return stage, transformer.unembed(cfg, params, h_1PD[:, -1:], layout)[:, 0]

    def refill_one(s):
        """The next waiting request takes the first free slot: its prompt is prefilled once (when
        its first sample is placed) and each sample copies the staged keys, as the static sampler
        shares one prefill between the K samples."""
        slot, req = jnp.argmax(s["done"]), s["queue"]
        b = req // num_samples
        stage, logits_1V = jax.lax.cond(s["staged"] == b, lambda: (s["stage"], s["stage_logits"]), lambda: prefill(b))
        tok, lp, slp = pick(logits_1V, req[None], jnp.zeros((1,), jnp.int32))
        at = lambda buf, v: buf.at[slot].set(v)
        s = dict(s, cache=jax.tree.map(lambda c, n: jax.lax.dynamic_update_slice(c, n, (0, slot, 0, 0, 0)), s["cache"],
                                       stage),
                 stage=stage, stage_logits=logits_1V, staged=b, req=at(s["req"], req), step=at(s["step"], 0),
                 done=at(s["done"], False), recent=at(s["recent"], -2),
                 valid=at(s["valid"], jnp.concatenate([valid_BP[b], jnp.ones((X - P,), bool)])),
                 pos=at(s["pos"], pos_BP[b, -1] + 1), queue=req + 1)
        one = lambda v: jnp.zeros((S,), v.dtype).at[slot].set(v[0])
        return emit(s, one(jnp.ones((1,), bool)), one(tok), one(lp), one(slp))

    def fill(s):
        return jax.lax.while_loop(lambda s: jnp.any(s["done"]) & (s["queue"] < R), refill_one, s)

    def decode(s):
        h_S1D, cache = transformer.hidden_states(
            cfg, params, s["last"][:, None], positions_BL=(s["pos"] + s["step"] - 1)[:, None], valid_BS=s["valid"],
            cache=s["cache"], cache_index=P + s["step"] - 1, layout=layout)
        out = pick(transformer.unembed(cfg, params, h_S1D, layout)[:, 0], s["req"], s["step"])
        return emit(dict(s, cache=cache, iters=s["iters"] + 1), jnp.ones((S,), bool), *out)

    def cond(s):
        waiting = in_loop & (s["queue"] < R)
        drained = (s["queue"] >= R) & (jnp.sum(~s["done"]) <= shrink_at)
        return (s["iters"] < until) & (jnp.any(~s["done"]) | waiting) & ~drained

    s = jax.lax.while_loop(cond, (lambda s: fill(decode(s))) if in_loop else decode, fill(s))
    return s, (s["queue"] >= R) & jnp.all(s["done"])


SLOT_KEYS = ("req", "step", "last", "done", "recent", "valid", "pos")  # the state's per-slot arrays (axis 0)


def _compact(s: dict, *, slots: int, layout: Layout | None) -> dict:
    """The state with its live slots (at most `slots`; none waits) moved, in slot order, into a
    cache of `slots` rows: the tail of a long-tailed rollout then decodes only the rows still
    running instead of all S. A row's keys, values and outputs move unchanged."""
    return dict(s, **_take_slots({k: s[k] for k in ("cache", *SLOT_KEYS)}, slots=slots, layout=layout))


@partial(jax.jit, static_argnames=("slots", "layout"))  # no donation: every output is smaller than its input
def _take_slots(s: dict, *, slots: int, layout: Layout | None) -> dict:
    keep = jnp.argsort(s["done"], stable=True)[:slots]  # live slots first
    cache = {k: sharding.constrain(layout, jnp.take(c, keep, axis=1), transformer.CACHE_AXES)
             for k, c in s["cache"].items()}
    return dict(cache=cache, **{k: s[k][keep] for k in SLOT_KEYS})


def to_host(x: jax.Array) -> np.ndarray:
    """The whole array on this host; with several processes (multi-host) its rows are gathered."""
    if x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def generate(cfg: ModelConfig, params, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, min_p: float = 0.0,
             num_samples: int = 1, eos_id: int | Sequence[int] | None = None,
             stop: Sequence[Sequence[int]] = (), seed: int = 0, pad_id: int = 0, max_len: int | None = None,
             max_prompts: int = 0, slots: int = 0, refill_every: int = 0, min_slots: int = 1,
             prompt_len: int = 0, draw: str = "icdf", layout: Layout | None = None) -> GenerateOutput:
    """Samples `num_samples` completions per prompt (token-id lists of any lengths).

    temperature 0 is greedy; top_k 0, top_p 1 and min_p 0 disable each truncation. draw: how a
    T > 0 token is drawn, "icdf" (cheap on CPU) or "gumbel" (robust to roundoff: `sample_token`). A row ends
    after an EOS id or after a `stop` token sequence (both kept in the output and the mask);
    eos_id None and no stop generate exactly max_new_tokens. Prompt + completion may not exceed
    max_len (default: the model's max_position_embeddings). Output rows are prompt-major:
    row i * num_samples + k is sample k of prompt i. With a layout, the batch is sharded over
    its data/fsdp axes and the params are used where they are.

    max_prompts > 0 bounds the KV cache: prompts go through in chunks of that many (the last one
    padded to the same shape, so one compile), with the same result as one call since every
    row's randomness depends only on its global row index.

    slots > 0 is continuous batching instead: that many decode slots (the KV cache's rows); when a
    row ends, the next waiting sample takes its slot, so long rows no longer hold short ones'
    slots idle. Same tokens as the static sampler, row for row. refill_every 0 refills inside the
    compiled decode loop; n > 0 between compiled chunks of n decode steps. Once no sample waits,
    the rows still running move into a cache of half the slots whenever they fit in one, down to
    min_slots (and the mesh's batch shards): the long tail decodes a few rows, not all S (each
    size compiles once; min_slots = slots never shrinks). prompt_len: the prompt bucket (0 = the longest prompt's power of two); one
    fixed value keeps one compile across calls.
    """
    max_len = cfg.max_position_embeddings if max_len is None else max_len
    if not prompts:
        raise ValueError("generate: no prompts given")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"generate: prompt {i} is empty")
        if len(p) + max_new_tokens > max_len:
            raise ValueError(f"generate: prompt {i} has {len(p)} tokens; with max_new_tokens={max_new_tokens} "
                             f"it exceeds max_len={max_len}")
    if max_new_tokens < 1 or num_samples < 1:
        raise ValueError(f"generate: max_new_tokens={max_new_tokens}, num_samples={num_samples}: both must be >= 1")
    if not temperature >= 0:
        raise ValueError(f"generate: temperature={temperature}: must be >= 0")
    if not 0 < top_p <= 1:
        raise ValueError(f"generate: top_p={top_p}: must be in (0, 1]")
    if not 0 <= min_p < 1:
        raise ValueError(f"generate: min_p={min_p}: must be in [0, 1)")
    if top_k < 0:
        raise ValueError(f"generate: top_k={top_k}: must be >= 0")
    if draw not in ("icdf", "gumbel"):
        raise ValueError(f"generate: draw={draw!r}: expected 'icdf' or 'gumbel'")
    if max_prompts < 0:
        raise ValueError(f"generate: max_prompts={max_prompts}: must be >= 0 (0 = all at once)")
    if slots < 0 or refill_every < 0 or min_slots < 1:
        raise ValueError(f"generate: slots={slots}, refill_every={refill_every}, min_slots={min_slots}: slots and "
                         "refill_every must be >= 0, min_slots >= 1")
    if slots and max_prompts:
        raise ValueError(f"generate: slots={slots} and max_prompts={max_prompts}: set one (both bound the KV cache)")
    if slots and layout is not None and slots % layout.batch_size_multiple:
        raise ValueError(f"generate: slots={slots} is not a multiple of the mesh's batch shards "
                         f"({layout.batch_size_multiple}): the slots' KV cache cannot be split over the mesh")
    if prompt_len and max(len(p) for p in prompts) > prompt_len:
        i = max(range(len(prompts)), key=lambda i: len(prompts[i]))
        raise ValueError(f"generate: prompt {i} has {len(prompts[i])} tokens, more than prompt_len={prompt_len}")
    if any(len(s) == 0 for s in stop):
        raise ValueError("generate: a stop sequence is empty")
    eos = () if eos_id is None else (eos_id,) if isinstance(eos_id, int) else tuple(eos_id)
    W = max([len(s) for s in stop], default=1)
    stop_JW = np.full((max(len(stop), 1), W), -2, np.int32)  # -2 never matches: no stop sequences
    for j, seq in enumerate(stop):
        stop_JW[j] = -1
        stop_JW[j, W - len(seq):] = seq
    P = prompt_len or bucket(max(len(p) for p in prompts))
    tokens, valid = left_pad(prompts, P, pad_id)
    B = len(prompts)
    consts = (jnp.float32(max(temperature, 1e-6)), jnp.float32(top_p), jnp.float32(min_p), jnp.int32(max_new_tokens),
              jnp.asarray(eos or (-1,), jnp.int32), jnp.asarray(stop_JW))
    static = dict(num_samples=num_samples, top_k=top_k, nucleus=top_p < 1, draw="greedy" if temperature == 0 else draw,
                  layout=layout)
    if slots:
        return _generate_continuous(cfg, params, tokens, valid, seed, consts, static, slots=slots,
                                    refill_every=refill_every, min_slots=min_slots, max_new_tokens=max_new_tokens,
                                    W=W, pad_id=pad_id)
    chunk = B if max_prompts <= 0 else min(max_prompts, B)
    n_chunks = -(-B // chunk)
    fill = n_chunks * chunk - B  # pad the last chunk with copies of the first prompt; their rows are dropped
    tokens, valid = np.concatenate([tokens, tokens[:1].repeat(fill, 0)]), np.concatenate([valid, valid[:1].repeat(fill, 0)])
    parts, slot_steps = [], 0
    for c in range(n_chunks):
        tok_c, val_c = tokens[c * chunk:(c + 1) * chunk], valid[c * chunk:(c + 1) * chunk]
        if layout is not None:
            tok_c, val_c = (layout.put(x, ("batch", None)) for x in (tok_c, val_c))
        *out, steps = _generate(cfg, params, tok_c, val_c, jax.random.key(seed), jnp.int32(c * chunk * num_samples),
                                *consts, max_new=bucket(max_new_tokens), **static)
        parts.append([to_host(x)[:, :max_new_tokens] for x in out])
        slot_steps += int(steps)
    toks, mask, lp, slp = (np.concatenate(xs)[:B * num_samples] for xs in zip(*parts))
    return GenerateOutput(tokens=np.where(mask, toks, pad_id).astype(np.int32), mask=mask, logprobs=lp,
                          sample_logprobs=slp, slot_steps=slot_steps,
                          kv_cache_bytes=kv_cache_bytes(cfg, chunk, P) + kv_cache_bytes(cfg, chunk * num_samples,
                                                                                       bucket(max_new_tokens)))


def kv_cache_bytes(cfg: ModelConfig, rows: int, length: int) -> int:
    """Bytes of a KV cache (keys and values) of `rows` rows of `length` slots."""
    return 2 * cfg.num_layers * rows * cfg.num_kv_heads * length * cfg.head_dim * jnp.dtype(cfg.dtype).itemsize


def tail_slots(slots: int, shards: int = 1, min_slots: int = 1) -> int:
    """The slot count the drained tail first moves into (0: it never moves): half the slots, when
    that is at least min_slots and splits evenly over the mesh's batch shards."""
    return slots // 2 if slots // 2 >= min_slots and slots // 2 % shards == 0 else 0


def _generate_continuous(cfg, params, tokens_BP, valid_BP, seed, consts, static, *, slots, refill_every, min_slots,
                         max_new_tokens, W, pad_id) -> GenerateOutput:
    """The host side of continuous batching: one `_run_slots` call (refills inside the compiled
    loop), or with refill_every = n one call per n decode steps, refilling between calls; and
    once the queue is empty, one more per halving of the slots (`_compact`)."""
    (B, P), K, M, layout = tokens_BP.shape, static["num_samples"], bucket(max_new_tokens), static["layout"]
    R = B * K
    put = (lambda x: x) if layout is None else (lambda x: layout.put(x, (None, None)))  # every slot may read any prompt
    args = (put(tokens_BP), put(valid_BP), jax.random.key(seed), jnp.int32(0), *consts)
    shards = 1 if layout is None else layout.batch_size_multiple  # the cache's rows split evenly over these
    s, until, S, slot_steps = _slot_state(cfg, slots, P, M, W, R, layout), 0, slots, R  # R: each prefill's first token
    peak = slots  # cache rows allocated at once: a move holds the old and the new cache for a moment
    while True:
        half = tail_slots(S, shards, min_slots)
        until = until + refill_every if refill_every else 2 ** 30
        iters = int(s["iters"])
        s, finished = _run_slots(cfg, params, s, *args, jnp.int32(until), jnp.int32(half), in_loop=not refill_every,
                                 **static)
        slot_steps += (int(s["iters"]) - iters) * S
        if bool(finished):
            break
        live, new = int(jnp.sum(~s["done"])), S
        while int(s["queue"]) >= R and tail_slots(new, shards, min_slots) and live <= new // 2:
            new //= 2
        if new < S:
            peak, S = max(peak, S + new), new
            s = _compact(s, slots=S, layout=layout)
    toks, mask, lp, slp = (to_host(s[k])[:, :max_new_tokens] for k in ("tokens", "mask", "logprobs", "sample_lp"))
    return GenerateOutput(tokens=np.where(mask, toks, pad_id).astype(np.int32), mask=mask, logprobs=lp,
                          sample_logprobs=slp, slot_steps=slot_steps,
                          kv_cache_bytes=kv_cache_bytes(cfg, peak, P + M) + kv_cache_bytes(cfg, 1, P))


def chat(cfg: ModelConfig, params, tokenizer, conversations: Sequence[Sequence[dict] | str], *,
         max_new_tokens: int = 256, stop: Sequence[str] = (), **kw) -> list[str]:
    """Text in, text out: each conversation (chat messages, or a plain user message) goes through
    the tokenizer's chat template; returns num_samples decoded completions per conversation."""
    msgs = [[{"role": "user", "content": c}] if isinstance(c, str) else list(c) for c in conversations]
    prompts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True)["input_ids"] for m in msgs]
    eos = kw.pop("eos_id", cfg.eos_ids or tokenizer.eos_token_id)
    stop_ids = [tokenizer.encode(s, add_special_tokens=False) for s in stop]
    out = generate(cfg, params, prompts, max_new_tokens=max_new_tokens, eos_id=eos, stop=stop_ids, **kw)
    return [tokenizer.decode(row[m], skip_special_tokens=True) for row, m in zip(out.tokens, out.mask)]
