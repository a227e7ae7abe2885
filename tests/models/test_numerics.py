"""Our forward against transformers' PyTorch models on tiny random configs (float32)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from repirl_jax import models
from repirl_jax.models import rope
from tests.helpers import TINY_CONFIGS, random_tokens, torch_logits

NUMERIC = [n for n in TINY_CONFIGS if n != "llama_shard"]


@pytest.mark.parametrize("name", NUMERIC)
def test_logits_match_transformers(tiny_hf, name):
    path, ref_model = tiny_hf(name)
    cfg, params = models.load(path)
    assert cfg.family == TINY_CONFIGS[name][0].replace("Config", "").lower()
    # seq 40 > original_max_position_embeddings of the scaled-rope configs: scaling matters.
    tokens = random_tokens(cfg.vocab_size, (2, 40), seed=1)
    ours = np.asarray(models.forward(cfg, params, tokens))
    assert ours.dtype == np.float32 and ours.shape == (2, 40, cfg.vocab_size)
    np.testing.assert_allclose(ours, torch_logits(ref_model, tokens), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["llama3_rope", "qwen2_yarn", "llama_tied"])
def test_rope_frequencies_match_transformers(tiny_hf, name):
    path, ref_model = tiny_hf(name)
    cfg, _ = models.load(path)
    inv_freq, scale = rope.inv_freq_and_scale(cfg)
    rot = ref_model.model.rotary_emb
    np.testing.assert_allclose(inv_freq, rot.inv_freq.numpy(), rtol=1e-6)
    assert scale == pytest.approx(rot.attention_scaling)
    if name != "llama_tied":
        assert cfg.rope_type == {"llama3_rope": "llama3", "qwen2_yarn": "yarn"}[name]


def test_padding_mask_and_positions(tiny_hf):
    """A left-padded row with masked pad keys and shifted positions equals the unpadded row."""
    path, _ = tiny_hf("qwen3")
    cfg, params = models.load(path)
    toks = random_tokens(cfg.vocab_size, (1, 9), seed=2)
    plain = np.asarray(models.forward(cfg, params, toks))[0]
    padded = np.concatenate([np.full((1, 4), 7, np.int32), toks], axis=1)
    valid = np.arange(13)[None] >= 4
    pos = np.maximum(np.arange(13) - 4, 0)[None].astype(np.int32)
    out = np.asarray(models.forward(cfg, params, padded, positions=pos, valid=valid))[0, 4:]
    np.testing.assert_allclose(out, plain, atol=1e-5)


def test_kv_cache_decode_equals_full_forward(tiny_hf):
    path, _ = tiny_hf("qwen2")
    cfg, params = models.load(path)
    toks = random_tokens(cfg.vocab_size, (2, 12), seed=3)
    full = np.asarray(models.forward(cfg, params, toks))
    cache = models.init_cache(cfg, 2, 16)
    h, cache = models.hidden_states(cfg, params, toks[:, :8], cache=cache, cache_index=0)
    got = [models.unembed(cfg, params, h)]
    for t in range(8, 12):
        h, cache = models.hidden_states(cfg, params, toks[:, t:t + 1], positions_BL=jnp.full((2, 1), t),
                                        cache=cache, cache_index=t)
        got.append(models.unembed(cfg, params, h))
    np.testing.assert_allclose(np.concatenate(got, axis=1), full, atol=1e-5)


@pytest.mark.parametrize("per_row", [False, True])
def test_per_layer_decode_equals_stacked_scan(tiny_hf, per_row):
    """The decode loops' per-layer form on CPU (transformer.decode_split: params and KV cache as one
    buffer per layer, a Python loop over layers) gives the stacked scan's hidden states and cache,
    with a shared prefix (2 samples per prompt) and either cache index (one scalar, or per row as
    continuous batching writes); the stacked form is what GPU and TPU run."""
    from repirl_jax.models import transformer

    path, _ = tiny_hf("qwen2")
    cfg, params = models.load(path)
    P, S, R = 6, 8, 2
    prompt = random_tokens(cfg.vocab_size, (1, P), seed=4)
    pre = models.init_cache(cfg, 1, P)
    _, pre = models.hidden_states(cfg, params, prompt, cache=pre, cache_index=0)
    prefix = dict(pre, valid=jnp.ones((1, P), bool))
    split_prefix = dict(transformer.decode_split(pre), valid=prefix["valid"])
    assert transformer.is_split(split_prefix) and len(split_prefix["k"]) == cfg.num_layers
    k = jax.random.normal(jax.random.key(0), (cfg.num_layers, R, cfg.num_kv_heads, S, cfg.head_dim))
    cache = {"k": k, "v": 0.5 * k}
    index = jnp.array([2, 5]) if per_row else 3
    tok = random_tokens(cfg.vocab_size, (R, 1), seed=5)
    kw = dict(positions_BL=P + jnp.reshape(jnp.broadcast_to(index, (R,)), (R, 1)), valid_BS=jnp.ones((R, S), bool),
              cache_index=index)
    h0, c0 = models.hidden_states(cfg, params, tok, cache=cache, prefix=prefix, **kw)
    h1, c1 = models.hidden_states(cfg, transformer.decode_params(params), tok, cache=transformer.decode_split(cache),
                                  prefix=split_prefix, **kw)
    np.testing.assert_allclose(np.asarray(h1), np.asarray(h0), atol=1e-6)  # op by op (no jit): roundoff
    for name in ("k", "v"):
        new, old = np.stack(c1[name]), np.asarray(c0[name])
        np.testing.assert_allclose(new, old, atol=1e-6)
        written = np.abs(old - np.asarray(cache[name])).max(axis=(0, 2, 4)) > 0  # [R, S]: the slots this step wrote
        np.testing.assert_array_equal(written, np.arange(S)[None] == np.broadcast_to(index, (R,))[:, None])
    with pytest.raises(ValueError, match="per-layer .* or all stacked"):
        models.hidden_states(cfg, params, tok, cache=transformer.decode_split(cache), **kw)


def test_bfloat16_compute_keeps_float32_logits(tiny_hf):
    path, _ = tiny_hf("llama_tied")
    cfg32, params32 = models.load(path)
    cfg16, params16 = models.load(path, dtype="bfloat16")
    assert params16["layers"]["wq"].dtype == jnp.bfloat16
    toks = random_tokens(cfg32.vocab_size, (2, 16))
    l16 = np.asarray(models.forward(cfg16, params16, toks))
    assert l16.dtype == np.float32
    l32 = np.asarray(models.forward(cfg32, params32, toks))
    # bfloat16 has 8 mantissa bits: agreement to a few percent of the logit scale.
    assert np.abs(l16 - l32).max() < 0.05 * np.abs(l32).max()


def test_remat_gives_same_gradients(tiny_hf):
    path, _ = tiny_hf("llama_mha_untied")
    cfg, params = models.load(path)
    toks = random_tokens(cfg.vocab_size, (2, 10))

    def loss(p, c):
        return jnp.mean(jax.nn.log_softmax(models.forward(c, p, toks))[..., 0])

    g0 = jax.grad(loss)(params, cfg)
    for policy in ("full", "dots"):
        g1 = jax.grad(loss)(params, cfg.replace(remat=policy))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g0, g1)


@pytest.mark.parametrize("n_frozen", [1, 3])
def test_frozen_layers_cut_the_backward_pass(tiny_hf, n_frozen):
    """ModelConfig.frozen_layers: the same logits; the lower layers and the (untied) embedding get
    exactly zero gradient, every other parameter the full model's gradient; and the lower layers run
    forward only (the gradient's scans cover n + 2 (L - n) layers, not 2 L)."""
    path, _ = tiny_hf("llama_mha_untied")  # 3 layers
    cfg, params = models.load(path)
    toks = random_tokens(cfg.vocab_size, (2, 10))

    def loss(p, c):
        return jnp.mean(jax.nn.log_softmax(models.forward(c, p, toks))[..., 0])

    part = cfg.replace(frozen_layers=n_frozen)
    np.testing.assert_array_equal(models.forward(part, params, toks), models.forward(cfg, params, toks))
    g0, g1 = jax.grad(loss)(params, cfg), jax.grad(loss)(params, part)
    assert not np.any(g1["embed"]) and not any(np.any(a[:n_frozen]) for a in jax.tree.leaves(g1["layers"]))
    def scan_lengths(jaxpr):  # the layer scans, inside whatever jit / custom-derivative calls wrap them
        for e in jaxpr.eqns:
            if e.primitive.name == "scan":
                yield e.params["length"]
                continue
            for sub in jax.tree.leaves(list(e.params.values()), is_leaf=lambda v: hasattr(v, "eqns")):
                if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                    yield from scan_lengths(getattr(sub, "jaxpr", sub))

    scans = list(scan_lengths(jax.make_jaxpr(jax.grad(loss), static_argnums=1)(params, part).jaxpr))
    assert sum(scans) == n_frozen + 2 * (cfg.num_layers - n_frozen), scans
    trained = lambda g: (jax.tree.map(lambda a: a[n_frozen:], g["layers"]), g["final_norm"], g["lm_head"])
    for a, b in zip(jax.tree.leaves(trained(g1)), jax.tree.leaves(trained(g0))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_init_params_shapes_match_axes():
    cfg = models.ModelConfig(family="qwen3", vocab_size=50, hidden_size=32, intermediate_size=48, num_layers=2,
                             num_heads=4, num_kv_heads=2, head_dim=16, qk_norm=True, attention_bias=True)
    params = models.init_params(cfg, jax.random.key(0))
    axes = models.param_axes(cfg)
    assert set(params["layers"]) >= {"q_norm", "k_norm", "bq", "bo"} and "lm_head" in params
    jax.tree.map(lambda p, a: None if p.ndim == len(a) else pytest.fail(f"{a} vs {p.shape}"), params, axes,
                 is_leaf=lambda x: isinstance(x, tuple))
    assert np.isfinite(np.asarray(models.forward(cfg, params, random_tokens(50, (1, 5))))).all()


def _attention_reference(q_BLHD, k_BKLD, v_BKLD, valid_BL):
    """Slow reference: every query position's softmax over its visible keys, one at a time."""
    B, L, H, Dh = q_BLHD.shape
    K = k_BKLD.shape[1]
    out = np.zeros(q_BLHD.shape, np.float64)
    for b in range(B):
        for h in range(H):
            for i in range(L):
                keys = [j for j in range(i + 1) if valid_BL[b, j]]
                if not keys:
                    continue
                s = np.array([q_BLHD[b, i, h] @ k_BKLD[b, h // (H // K), j] for j in keys]) / np.sqrt(Dh)
                p = np.exp(s - s.max())
                out[b, i, h] = (p / p.sum()) @ v_BKLD[b, h // (H // K), keys]
    return out


@pytest.mark.parametrize("n_blocks", [1, 3, 8])
def test_block_causal_attention_matches_reference(n_blocks):
    """causal_attention by query blocks (uneven: 37 tokens) equals the per-position softmax at
    every query with a visible key, left padding included, and its gradients do not depend on
    the number of blocks."""
    from repirl_jax.models.transformer import causal_attention

    r = np.random.RandomState(0)
    B, L, H, K, Dh = 2, 37, 4, 2, 8
    q, k, v = r.randn(B, L, H, Dh), r.randn(B, K, L, Dh), r.randn(B, K, L, Dh)
    valid = np.ones((B, L), bool)
    valid[1, :5] = False  # a left-padded row
    f32 = lambda *xs: [jnp.asarray(x, jnp.float32) for x in xs]
    got = np.asarray(causal_attention(*f32(q, k, v), jnp.asarray(valid), n_blocks=n_blocks))
    np.testing.assert_allclose(got[valid], _attention_reference(q, k, v, valid)[valid], atol=2e-5)

    w = jnp.asarray(r.randn(B, L, H, Dh) * valid[:, :, None, None], jnp.float32)  # padded queries weigh 0
    grads = lambda n: jax.grad(lambda *a: jnp.sum(causal_attention(*a, jnp.asarray(valid), n_blocks=n) * w),
                               argnums=(0, 1, 2))(*f32(q, k, v))
    for a, b in zip(grads(n_blocks), grads(1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)


def test_long_sequence_logits_match_transformers(tiny_hf):
    """100 tokens: the training forward splits attention into 3 query blocks."""
    from repirl_jax.models.transformer import query_blocks

    path, ref_model = tiny_hf("qwen3")
    cfg, params = models.load(path)
    assert query_blocks(100) == 3
    tokens = random_tokens(cfg.vocab_size, (2, 100), seed=4)
    np.testing.assert_allclose(np.asarray(models.forward(cfg, params, tokens)), torch_logits(ref_model, tokens),
                               atol=1e-4, rtol=0)
