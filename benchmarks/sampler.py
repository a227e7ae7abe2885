"""Rollout speed: our jitted KV-cache sampler against transformers' `generate` (PyTorch CPU), same
SmolLM2-135M weights (float32), same batch and lengths, temperature 1, no EOS, in one process.

Roofline: the matmul FLOP/s measured in the same run divided by the model's FLOPs per
generated token (weight matmuls + logits + attention over the average context).

GEMM floor: at batch 16 a decode step is 16 rows times each weight matrix, a skinny matmul that
streams the weights once (538 MB in float32) and runs far below the big-matmul peak. The floor
times only those matmuls (the model's own weights and shapes, every layer and the logits, no
attention, no sampling) for the same number of steps in one jitted loop: no decoder that uses
this machine's matmul kernels can be faster than it, so `gemm_floor_tok_s / hf_tok_s` is the
largest ratio against transformers reachable here (`ceiling_ratio`), and `ours_tok_s /
gemm_floor_tok_s` (`gemm_floor_fraction`) is how close our decoder gets.
"""
from __future__ import annotations

import functools

import numpy as np

from .common import machine, matmul_peak_flops, median_time, report


def flops_per_token(cfg, context: int) -> float:
    D, H, K, Dh, F, L = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size,
                         cfg.num_layers)
    weights = L * (D * H * Dh + 2 * D * K * Dh + H * Dh * D + 3 * D * F) + cfg.vocab_size * D
    attention = L * 2 * H * Dh * context  # q.k and p.v
    return 2.0 * (weights + attention)


def gemm_floor_s(cfg, params, batch: int, steps: int, reps: int = 3, stacked: bool = False) -> float:
    """Median seconds of `steps` decode steps' weight matmuls alone at `batch` rows (see the module doc).

    The weights are laid out as the decoder reads them (`transformer.decode_params`: on XLA:CPU one
    buffer per layer; a scan over the stacked weights adds a copy of every layer's slice, which
    our decoder does not pay, so that would not bound it). stacked: that scan instead (the floor
    this bench reported before the decoder split its layers, kept for comparison)."""
    import jax
    import jax.numpy as jnp

    from repirl_jax.models import transformer

    emb = params["embed"] if cfg.tie_word_embeddings else params["lm_head"]

    def layer(x_BD, lp):
        q = jnp.einsum("bd,dhk->bhk", x_BD, lp["wq"])
        kv = jnp.einsum("bd,dhk->bhk", x_BD, lp["wk"]).sum() + jnp.einsum("bd,dhk->bhk", x_BD, lp["wv"]).sum()
        x_BD = x_BD + jnp.einsum("bhk,hkd->bd", q, lp["wo"]) * 1e-3 + kv * 1e-9
        mlp = (jax.nn.silu(x_BD @ lp["w_gate"]) * (x_BD @ lp["w_up"])) @ lp["w_down"]
        return x_BD + mlp * 1e-3

    def run(p):
        layers = p["layers"] if stacked else transformer.decode_params(p)["layers"]
        if transformer.is_split(layers):
            each = [{k: v[i] for k, v in layers.items()} for i in range(cfg.num_layers)]
            layers_fn = lambda x: functools.reduce(layer, each, x)
        else:
            layers_fn = lambda x: jax.lax.scan(lambda x, lp: (layer(x, lp), None), x, layers)[0]

        def step(_, x_BD):  # each step depends on the last, as in decoding
            x_BD = layers_fn(x_BD)
            return x_BD + jnp.max(x_BD @ emb.T, axis=-1, keepdims=True) * 1e-9

        return jax.lax.fori_loop(0, steps, step, jnp.full((batch, cfg.hidden_size), 0.01, jnp.float32))

    f = jax.jit(run)
    f(params).block_until_ready()
    return median_time(lambda: f(params).block_until_ready(), reps)[0]


def run(out: str | None = None, reps: int = 3, batch: int = 16, prompt_len: int = 64, new_tokens: int = 128) -> dict:
    import torch
    import transformers

    from repirl_jax import models, sampling

    path = models.smollm2_dir()
    cfg, params = models.load(path)
    rng = np.random.RandomState(0)
    prompts = rng.randint(100, cfg.vocab_size, (batch, prompt_len)).astype(np.int32)

    def ours():
        o = sampling.generate(cfg, params, prompts.tolist(), max_new_tokens=new_tokens, temperature=1.0, seed=0)
        assert o.mask.sum() == batch * new_tokens

    ours()  # compile
    t_ours, times_ours = median_time(ours, reps)

    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.tensor(prompts, dtype=torch.long)

    def theirs():
        with torch.no_grad():
            o = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_k=0,
                            top_p=1.0, max_new_tokens=new_tokens, min_new_tokens=new_tokens, use_cache=True,
                            pad_token_id=0)
        assert o.shape == (batch, prompt_len + new_tokens)

    theirs()  # warm-up
    t_hf, times_hf = median_time(theirs, reps)

    t_floor = gemm_floor_s(cfg, params, batch, new_tokens, reps)
    t_stacked = gemm_floor_s(cfg, params, batch, new_tokens, reps, stacked=True)
    peak = matmul_peak_flops()
    n_tokens = batch * new_tokens
    ours_tok_s, hf_tok_s = n_tokens / t_ours, n_tokens / t_hf
    roofline_tok_s = peak / flops_per_token(cfg, prompt_len + new_tokens // 2)
    result = dict(
        bench="sampler", machine=machine(), torch_threads=torch.get_num_threads(), model="SmolLM2-135M-Instruct",
        dtype="float32", batch=batch, prompt_len=prompt_len, new_tokens=new_tokens, temperature=1.0, reps=reps,
        ours_s=times_ours, hf_s=times_hf, ours_tok_s=ours_tok_s, hf_tok_s=hf_tok_s, ratio=ours_tok_s / hf_tok_s,
        matmul_peak_flops=peak, roofline_tok_s=roofline_tok_s, roofline_fraction=ours_tok_s / roofline_tok_s,
        gemm_floor_tok_s=n_tokens / t_floor, gemm_floor_fraction=ours_tok_s * t_floor / n_tokens,
        ceiling_ratio=n_tokens / t_floor / hf_tok_s, stacked_floor_tok_s=n_tokens / t_stacked,
        stacked_floor_fraction=ours_tok_s * t_stacked / n_tokens,
    )
    return report(result, out, f"sampler: ours {ours_tok_s:.0f} tok/s, transformers {hf_tok_s:.0f} tok/s, ratio "
                  f"{result['ratio']:.2f}x, roofline fraction {result['roofline_fraction']:.2f} (peak {peak / 1e9:.0f} "
                  f"GFLOP/s); weight-matmul floor {result['gemm_floor_tok_s']:.0f} tok/s (ours at "
                  f"{result['gemm_floor_fraction']:.2f} of it; largest reachable ratio {result['ceiling_ratio']:.2f}x); "
                  f"through a scan of the stacked weights {result['stacked_floor_tok_s']:.0f} tok/s (ours at "
                  f"{result['stacked_floor_fraction']:.2f})")
