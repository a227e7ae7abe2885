"""Decoder-only transformer (Llama / Qwen2 / Qwen3) as pure functions over a params pytree.

Params (L = layers, D = embed, H = heads, K = kv heads, Dh = head dim, F = mlp, V = vocab):
  embed [V, D], final_norm [D], lm_head [V, D] (absent when tied),
  layers: attn_norm [L, D], wq [L, D, H, Dh], wk / wv [L, D, K, Dh], wo [L, H, Dh, D],
          bq [L, H, Dh], bk / bv [L, K, Dh] (attention_bias), bo [L, D] (o_bias),
          q_norm / k_norm [L, Dh] (qk_norm), mlp_norm [L, D],
          w_gate / w_up [L, D, F], w_down [L, F, D].
Layers are stacked on the leading axis and run under `lax.scan`.

Attention masking is by slot, RoPE by position: a new token sees the earlier new tokens and
the cache slots written before this call, where their `valid` bit is set. Without a cache,
slot = index in the sequence. This one rule serves training (right padding), left-padded
prompts and KV-cache decoding alike. A `prefix` cache (the prompts' keys and values, one row
per prompt) is read by R consecutive rows each, the R samples of a prompt, before the cache.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from ..sharding import Layout, constrain
from . import rope
from .config import ModelConfig

Params = dict[str, Any]
NEG_INF = -1e30  # finite: a query with no visible key gets uniform weights, not NaN


def param_shapes_and_axes(cfg: ModelConfig) -> tuple[dict, dict]:
    L, D, H, K = cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads
    Dh, F, V = cfg.head_dim, cfg.intermediate_size, cfg.vocab_size
    layers = {
        "attn_norm": ((L, D), ("layers", "embed")),
        "wq": ((L, D, H, Dh), ("layers", "embed", "heads", "head_dim")),
        "wk": ((L, D, K, Dh), ("layers", "embed", "kv_heads", "head_dim")),
        "wv": ((L, D, K, Dh), ("layers", "embed", "kv_heads", "head_dim")),
        "wo": ((L, H, Dh, D), ("layers", "heads", "head_dim", "embed")),
        "mlp_norm": ((L, D), ("layers", "embed")),
        "w_gate": ((L, D, F), ("layers", "embed", "mlp")),
        "w_up": ((L, D, F), ("layers", "embed", "mlp")),
        "w_down": ((L, F, D), ("layers", "mlp", "embed")),
    }
    if cfg.attention_bias:
        layers["bq"] = ((L, H, Dh), ("layers", "heads", "head_dim"))
        layers["bk"] = ((L, K, Dh), ("layers", "kv_heads", "head_dim"))
        layers["bv"] = ((L, K, Dh), ("layers", "kv_heads", "head_dim"))
    if cfg.o_bias:
        layers["bo"] = ((L, D), ("layers", "embed"))
    if cfg.qk_norm:
        layers["q_norm"] = ((L, Dh), ("layers", "head_dim"))
        layers["k_norm"] = ((L, Dh), ("layers", "head_dim"))
    tree = {"embed": ((V, D), ("vocab", "embed")), "final_norm": ((D,), ("embed",)), "layers": layers}
    if not cfg.tie_word_embeddings:
        tree["lm_head"] = ((V, D), ("vocab", "embed"))
    is_pair = lambda x: isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], tuple)
    shapes = jax.tree.map(lambda p: p[0], tree, is_leaf=is_pair)
    axes = jax.tree.map(lambda p: p[1], tree, is_leaf=is_pair)
    return shapes, axes


def param_axes(cfg: ModelConfig) -> dict:
    """Tree parallel to the params: a tuple of logical axis names per array."""
    return param_shapes_and_axes(cfg)[1]


def abstract_params(cfg: ModelConfig, layout: Layout | None = None) -> dict:
    """ShapeDtypeStructs of the params (with shardings when a layout is given)."""
    shapes, axes = param_shapes_and_axes(cfg)
    dt = jnp.dtype(cfg.param_dtype)
    is_shape = lambda x: isinstance(x, tuple) and all(isinstance(i, int) for i in x)
    if layout is None:
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, dt), shapes, is_leaf=is_shape)
    return jax.tree.map(lambda s, a: jax.ShapeDtypeStruct(s, dt, sharding=layout.sharding(a, s)),
                        shapes, axes, is_leaf=is_shape)


def init_params(cfg: ModelConfig, key: jax.Array, layout: Layout | None = None) -> Params:
    """Random init (normal 0.02, norms at 1, biases at 0), created already sharded."""
    return _init_fn(cfg, layout)(key)


@functools.lru_cache(maxsize=16)
def _init_fn(cfg: ModelConfig, layout: Layout | None):
    """The jitted init of one (config, layout), built once per process: a fresh jit per call
    recompiled it every time (~5 s on this CPU for a 2-layer model, paid by every test and run)."""
    abstract = abstract_params(cfg, layout)

    def init(key):
        leaves, treedef = jax.tree.flatten(abstract)
        keys = jax.random.split(key, len(leaves))
        paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(abstract)[0]]
        out = []
        for k, path, a in zip(keys, paths, leaves):
            if "norm" in path:
                out.append(jnp.ones(a.shape, a.dtype))
            elif "'b" in path:  # bq / bk / bv / bo
                out.append(jnp.zeros(a.shape, a.dtype))
            else:
                out.append((0.02 * jax.random.normal(k, a.shape, jnp.float32)).astype(a.dtype))
        return jax.tree.unflatten(treedef, out)

    shardings = None if layout is None else jax.tree.map(lambda a: a.sharding, abstract)
    return jax.jit(init, out_shardings=shardings)


def rms_norm(x: jax.Array, w: jax.Array, eps: float) -> jax.Array:
    """x / sqrt(mean(x^2) + eps) * w, statistics in float32 (as HF does)."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return w.astype(x.dtype) * y.astype(x.dtype)


def init_cache(cfg: ModelConfig, batch: int, max_len: int, layout: Layout | None = None) -> dict:
    """KV cache {k, v}: [layers, batch, kv_heads, max_len, head_dim] in the compute dtype.

    kv_heads before seq: a layer's keys of one (row, head) are contiguous, the layout the
    attention einsums consume without a transpose."""
    shape = (cfg.num_layers, batch, cfg.num_kv_heads, max_len, cfg.head_dim)
    z = jnp.zeros(shape, jnp.dtype(cfg.dtype))
    if layout is not None:
        z = jax.device_put(z, layout.sharding(CACHE_AXES, shape))
    return {"k": z, "v": z}


CACHE_AXES = ("layers", "batch", "act_kv_heads", None, None)


def _scores(q_BLKGD, k_BKSD, visible_BLS):
    """Scaled q.k in float32, masked: [B, K, G, L, S]."""
    s = jnp.einsum("blkgd,bksd->bkgls", q_BLKGD, k_BKSD.astype(q_BLKGD.dtype),
                   preferred_element_type=jnp.float32) * (q_BLKGD.shape[-1] ** -0.5)
    return jnp.where(visible_BLS[:, None, None], s, NEG_INF)


def query_blocks(L: int) -> int:
    """How many query blocks causal_attention splits L tokens into: up to 8, of at least 32."""
    return max(1, min(8, L // 32))


def causal_attention(q_BLHD, k_BKLD, v_BKLD, valid_BL, n_blocks: int | None = None, segments_BL=None):
    """softmax(q k^T / sqrt(Dh) + mask) v over L tokens with no cache, mask = causal & valid key
    (& same segment, for packed rows: segments_BL int, a query sees keys of its own segment only).

    By query blocks: block [a, b) attends only to keys [0, b), so the all-masked upper triangle
    of the score matrix is mostly skipped (8 blocks compute 9/16 of the [L, L] scores); each
    block's queries are laid out [B, K, G * c, Dh] so both products are plain batched matmuls.
    On XLA:CPU this runs attention's forward + backward 2x faster than one masked [L, L] softmax
    (`repirl bench attention`: SmolLM2-135M widths, L = 320). The softmax is normalised after the
    value product (one pass less over the scores). A query with no visible key gets uniform
    weights over its block's keys, not NaN; its output is garbage either way and is masked."""
    B, L, H, Dh = q_BLHD.shape
    K = k_BKLD.shape[1]
    G = H // K  # GQA: query heads grouped by their kv head
    n = n_blocks or query_blocks(L)
    bounds = [round(i * L / n) for i in range(n + 1)]
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        c = b - a
        q_BKMD = q_BLHD[:, a:b].reshape(B, c, K, G, Dh).transpose(0, 2, 3, 1, 4).reshape(B, K, G * c, Dh)
        s_BKMS = jnp.einsum("bkmd,bksd->bkms", q_BKMD, k_BKLD[:, :, :b].astype(q_BKMD.dtype),
                            preferred_element_type=jnp.float32) * (Dh ** -0.5)
        visible_BCS = (jnp.arange(b)[None, :] <= jnp.arange(a, b)[:, None])[None] & valid_BL[:, None, :b]
        if segments_BL is not None:
            visible_BCS &= segments_BL[:, a:b, None] == segments_BL[:, None, :b]
        s_BKMS = jnp.where(jnp.tile(visible_BCS, (1, G, 1))[:, None], s_BKMS, NEG_INF)
        e_BKMS = jnp.exp(s_BKMS - jax.lax.stop_gradient(s_BKMS.max(-1, keepdims=True)))
        o_BKMD = jnp.einsum("bkms,bksd->bkmd", e_BKMS.astype(q_BKMD.dtype), v_BKLD[:, :, :b].astype(q_BKMD.dtype),
                            preferred_element_type=jnp.float32) / e_BKMS.sum(-1, keepdims=True)
        out.append(o_BKMD.astype(q_BLHD.dtype).reshape(B, K, G, c, Dh).transpose(0, 3, 1, 2, 4).reshape(B, c, H, Dh))
    return jnp.concatenate(out, axis=1) if n > 1 else out[0]


def _attention(cfg, lp, x_BLD, cos_sin, valid_new_BL, past, past_visible_BLS, prefix, prefix_visible_PS, layout,
               segments_BL=None):
    """Causal GQA attention of the L new tokens over the shared prefix (if any), the past cache
    slots (both read only) and themselves. Returns (output, this layer's new k and v as
    [B, K, L, Dh] for the cache).

    The softmax runs jointly over the key blocks; keeping the caches out of the layer scan's
    carry is what keeps decode fast (a carried cache is copied by XLA on every layer). The prefix
    has one row per R query rows: its keys are read once for all R, as one matmul of R*G*L rows."""
    dt = x_BLD.dtype
    q_BLHD = jnp.einsum("bld,dhk->blhk", x_BLD, lp["wq"].astype(dt))
    k_BLKD = jnp.einsum("bld,dhk->blhk", x_BLD, lp["wk"].astype(dt))
    v_BLKD = jnp.einsum("bld,dhk->blhk", x_BLD, lp["wv"].astype(dt))
    if cfg.attention_bias:
        q_BLHD += lp["bq"].astype(dt)
        k_BLKD += lp["bk"].astype(dt)
        v_BLKD += lp["bv"].astype(dt)
    if cfg.qk_norm:
        q_BLHD = rms_norm(q_BLHD, lp["q_norm"], cfg.rms_norm_eps)
        k_BLKD = rms_norm(k_BLKD, lp["k_norm"], cfg.rms_norm_eps)
    q_BLHD = rope.apply(q_BLHD, *cos_sin)
    k_BKLD = rope.apply(k_BLKD, *cos_sin).transpose(0, 2, 1, 3)
    v_BKLD = v_BLKD.transpose(0, 2, 1, 3)
    B, L, H, Dh = q_BLHD.shape
    K = k_BKLD.shape[1]
    if past is None:
        o_BLHD = causal_attention(q_BLHD, k_BKLD, v_BKLD, valid_new_BL, segments_BL=segments_BL)
    else:
        q_BLKGD = q_BLHD.reshape(B, L, K, H // K, Dh)  # GQA: query heads grouped by their kv head
        causal_LL = jnp.arange(L)[None, :] <= jnp.arange(L)[:, None]
        s_new = _scores(q_BLKGD, k_BKLD, causal_LL[None] & valid_new_BL[:, None, :])
        s_old = _scores(q_BLKGD, past["k"], past_visible_BLS)
        m = jnp.maximum(s_old.max(-1, keepdims=True), s_new.max(-1, keepdims=True))
        if prefix is not None:  # rows b*R .. b*R + R - 1 share prefix row b
            Bp = prefix["k"].shape[0]
            q_PRLKGD = q_BLKGD.reshape(Bp, B // Bp, L, K, H // K, Dh)
            s_pre = jnp.einsum("prlkgd,pksd->prkgls", q_PRLKGD, prefix["k"].astype(dt),
                               preferred_element_type=jnp.float32) * (Dh ** -0.5)
            s_pre = jnp.where(prefix_visible_PS[:, None, None, None, None], s_pre, NEG_INF)
            m = jnp.maximum(m, s_pre.max(-1, keepdims=True).reshape(B, K, H // K, L, 1))
            e_pre = jnp.exp(s_pre - m.reshape(Bp, B // Bp, K, H // K, L, 1))
        e_old, e_new = jnp.exp(s_old - m), jnp.exp(s_new - m)
        denom = e_old.sum(-1, keepdims=True) + e_new.sum(-1, keepdims=True)
        if prefix is not None:
            denom += e_pre.sum(-1).reshape(B, K, H // K, L, 1)
        o_BKGLD = (jnp.einsum("bkgls,bksd->bkgld", (e_old / denom).astype(dt), past["v"].astype(dt))
                   + jnp.einsum("bkgls,bksd->bkgld", (e_new / denom).astype(dt), v_BKLD))
        if prefix is not None:
            p_pre = (e_pre / denom.reshape(Bp, B // Bp, K, H // K, L, 1)).astype(dt)
            o_BKGLD += jnp.einsum("prkgls,pksd->prkgld", p_pre, prefix["v"].astype(dt)).reshape(o_BKGLD.shape)
        # (einsum straight to [B, L, K, G, D] is 7x slower on XLA:CPU than this order + a transpose)
        o_BLHD = o_BKGLD.transpose(0, 3, 1, 2, 4).reshape(B, L, H, Dh)
    o_BLHD = constrain(layout, o_BLHD, ("batch", "seq", "act_heads", None))
    out_BLD = jnp.einsum("blhk,hkd->bld", o_BLHD, lp["wo"].astype(dt))
    if cfg.o_bias:
        out_BLD += lp["bo"].astype(dt)
    return out_BLD, (k_BKLD, v_BKLD)


def _mlp(lp, x_BLD, layout):
    dt = x_BLD.dtype
    gate_BLF = jnp.einsum("bld,df->blf", x_BLD, lp["w_gate"].astype(dt))
    up_BLF = jnp.einsum("bld,df->blf", x_BLD, lp["w_up"].astype(dt))
    h_BLF = constrain(layout, jax.nn.silu(gate_BLF) * up_BLF, ("batch", "seq", "act_mlp"))
    return jnp.einsum("blf,fd->bld", h_BLF, lp["w_down"].astype(dt))


REMAT_POLICIES = {
    "full": None,  # save nothing inside a layer
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def hidden_states(cfg: ModelConfig, params: Params, tokens_BL: jax.Array, *,
                  positions_BL: jax.Array | None = None, valid_BS: jax.Array | None = None,
                  cache: dict | None = None, cache_index: jax.Array | int = 0, prefix: dict | None = None,
                  layout: Layout | None = None, segments_BL: jax.Array | None = None) -> tuple[jax.Array, dict | None]:
    """Final-norm hidden states [B, L, D] (compute dtype) and the updated cache.

    positions_BL: RoPE positions (default arange(L)). valid_BS: which key slots are real tokens
    (S = L without a cache, the cache length with one; default all). With a cache, the new
    tokens are written to slots [cache_index, cache_index + L): cache_index is one scalar for the
    batch (one in-place slice write), or int32 [B], each row at its own index (continuous
    batching, where a slot's row may be at any step; a scatter, indices past S dropped).
    prefix (with a cache): {k, v: [layers, B / R, kv_heads, P, head_dim], valid: [B / R, P]},
    keys every new token sees (where valid) before the cache's, shared by R consecutive rows
    (the K samples of a prompt); positions must continue from it.
    segments_BL (no cache): packed rows, several sequences per row (int ids, 0 = padding): a token
    attends only to earlier tokens of its own segment; pass positions_BL restarting in each.
    params, cache and prefix may be in `decode_split`'s per-layer form (a decode loop on CPU): the
    layers then run as a Python loop and the returned cache keeps that form.
    """
    if segments_BL is not None and cache is not None:
        raise ValueError("hidden_states: segments_BL (packed rows) is for passes without a KV cache")
    B, L = tokens_BL.shape
    dt = jnp.dtype(cfg.dtype)
    if positions_BL is None:
        positions_BL = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
    S = L if cache is None else (cache["k"][0] if is_split(cache) else cache["k"]).shape[-2]
    if valid_BS is None:  # packed rows: segment 0 is padding
        valid_BS = jnp.ones((B, S), bool) if segments_BL is None else segments_BL > 0
    cos_sin = rope.cos_sin(cfg, positions_BL)
    if cache is None:
        valid_new_BL, past_visible_BLS = valid_BS, None
    else:  # past slots: written before this call (slot < cache_index) and valid
        per_row = jnp.ndim(cache_index) == 1
        if per_row:
            index_BL = cache_index[:, None] + jnp.arange(L)
            valid_new_BL = jnp.take_along_axis(valid_BS, jnp.minimum(index_BL, S - 1), axis=1)
        else:
            valid_new_BL = jax.lax.dynamic_slice_in_dim(valid_BS, cache_index, L, axis=1)
        written_BS = jnp.arange(S)[None] < jnp.reshape(cache_index, (-1, 1))
        past_visible_BLS = jnp.broadcast_to((written_BS & valid_BS)[:, None, :], (B, L, S))

    x_BLD = jnp.take(params["embed"], tokens_BL, axis=0).astype(dt)
    x_BLD = constrain(layout, x_BLD, ("batch", "seq", "act_embed"))

    pre_kv = None if prefix is None else {"k": prefix["k"], "v": prefix["v"]}

    def layer(x_BLD, xs):
        lp, past, pre = xs
        h = rms_norm(x_BLD, lp["attn_norm"], cfg.rms_norm_eps)
        a, new_kv = _attention(cfg, lp, h, cos_sin, valid_new_BL, past, past_visible_BLS, pre,
                               None if prefix is None else prefix["valid"], layout, segments_BL)
        x_BLD = x_BLD + a
        x_BLD = x_BLD + _mlp(lp, rms_norm(x_BLD, lp["mlp_norm"], cfg.rms_norm_eps), layout)
        return constrain(layout, x_BLD, ("batch", "seq", "act_embed")), new_kv if cache is not None else None

    if cfg.remat != "none":
        layer = jax.checkpoint(layer, policy=REMAT_POLICIES[cfg.remat])
    split = is_split(params["layers"])
    if any(t is not None and is_split(t) != split for t in (cache, pre_kv)):
        raise ValueError("hidden_states: params, cache and prefix must all be per-layer (decode_split) or all stacked")
    if split:  # per-layer arrays (`decode_split`): one Python step per layer, caches read in place
        at = lambda tree, i: None if tree is None else {k: v[i] for k, v in tree.items()}
        outs = []
        for i in range(cfg.num_layers):
            x_BLD, kv = layer(x_BLD, (at(params["layers"], i), at(cache, i), at(pre_kv, i)))
            outs.append(kv)
        new_kv = None if cache is None else tuple(zip(*outs))  # ([B, K, L, Dh] per layer,) for k and v
    else:
        layers, n = params["layers"], cfg.frozen_layers if cache is None else 0
        if n:  # the frozen lower layers in their own scan, whose output is a constant to the backward pass
            sg = jax.lax.stop_gradient
            x_BLD, _ = jax.lax.scan(layer, sg(x_BLD), (jax.tree.map(lambda a: sg(a[:n]), layers), None, None),
                                    unroll=min(cfg.layer_unroll, n))
            layers = jax.tree.map(lambda a: a[n:], layers)
        x_BLD, new_kv = jax.lax.scan(layer, x_BLD, (layers, cache, pre_kv),
                                     unroll=cfg.layer_unroll if cache is None else 1)
    if cache is not None:
        if per_row:  # new [(layers,) B, K, L, Dh] -> c[(:,) b, :, index_BL[b, l]], a scatter
            rows_BL = jnp.broadcast_to(jnp.arange(B)[:, None], (B, L))

            def write(c, n):
                if c.ndim == 4:
                    return c.at[rows_BL, :, index_BL].set(n.transpose(0, 2, 1, 3).astype(c.dtype), mode="drop")
                return c.at[:, rows_BL, :, index_BL].set(n.transpose(1, 3, 0, 2, 4).astype(c.dtype), mode="drop")
        else:  # one in-place slice write (of all layers, when stacked)
            write = lambda c, n: jax.lax.dynamic_update_slice(c, n.astype(c.dtype), (0,) * (c.ndim - 2) + (cache_index, 0))
        if split:
            cache = {k: tuple(write(c, n) for c, n in zip(cache[k], new)) for k, new in zip("kv", new_kv)}
        else:
            cache = {k: write(cache[k], new) for k, new in zip("kv", new_kv)}
    return rms_norm(x_BLD, params["final_norm"], cfg.rms_norm_eps), cache


def is_split(tree: dict) -> bool:
    """Whether a tree of layer arrays ({name: ...}: the params' layers, a KV cache) is in the
    per-layer form of `decode_split` (a tuple of arrays per name) rather than stacked [layers, ...]."""
    return isinstance(next(iter(tree.values())), tuple)


def decode_split(tree: dict) -> dict:
    """A tree of layer-stacked arrays ({name: [layers, ...]}: the params' layers, a KV cache) in
    the form a decode loop should carry or close over: on XLA:CPU one tuple of per-layer arrays per
    name (`hidden_states` then runs a Python loop over the layers), elsewhere unchanged.

    Why: a scan over stacked arrays takes layer i's weights and cache with a dynamic-slice, and
    XLA:CPU copies each slice into a fresh buffer before the dot that reads it: every layer of
    every decode step, on SmolLM2-135M 538 MB of weights plus the KV cache per generated token
    (about as long as the matmuls themselves). As separate buffers, the dots read them in place
    and a decode step writes its new keys into each layer's buffer. Costs a second copy of the
    layer weights while a decode loop runs; GPU and TPU fuse the slice into the dot and keep the scan."""
    if jax.default_backend() != "cpu" or is_split(tree):
        return tree
    return {k: tuple(v[i] for i in range(v.shape[0])) for k, v in tree.items()}


def decode_params(params: Params) -> Params:
    """The params with their layers in `decode_split`'s form (the embedding and head unchanged)."""
    return dict(params, layers=decode_split(params["layers"]))


def unembed(cfg: ModelConfig, params: Params, h_BLD: jax.Array, layout: Layout | None = None) -> jax.Array:
    """Logits [B, L, V] in float32 (the matmul accumulates in float32 whatever the dtype)."""
    w_VD = params["embed"] if cfg.tie_word_embeddings else params["lm_head"]
    logits = jnp.einsum("bld,vd->blv", h_BLD, w_VD.astype(h_BLD.dtype), preferred_element_type=jnp.float32)
    return constrain(layout, logits, ("batch", "seq", "act_vocab"))


def forward(cfg: ModelConfig, params: Params, tokens: jax.Array, *, positions: jax.Array | None = None,
            valid: jax.Array | None = None, layout: Layout | None = None) -> jax.Array:
    """tokens int32 [B, L] -> float32 logits [B, L, V] (causal; `valid` masks padded keys)."""
    h_BLD, _ = hidden_states(cfg, params, tokens, positions_BL=positions, valid_BS=valid, layout=layout)
    return unembed(cfg, params, h_BLD, layout)
