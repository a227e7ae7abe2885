"""Rollout speed: our jitted KV-cache sampler against transformers' `generate` (PyTorch CPU), same
SmolLM2-135M weights (float32), same batch and lengths, temperature 1, no EOS, in one process.

Roofline: the matmul FLOP/s measured in the same run divided by the model's FLOPs per
generated token (weight matmuls + logits + attention over the average context).
"""
from __future__ import annotations

import numpy as np

from .common import machine, matmul_peak_flops, median_time, write


def flops_per_token(cfg, context: int) -> float:
    D, H, K, Dh, F, L = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size,
                         cfg.num_layers)
    weights = L * (D * H * Dh + 2 * D * K * Dh + H * Dh * D + 3 * D * F) + cfg.vocab_size * D
    attention = L * 2 * H * Dh * context  # q.k and p.v
    return 2.0 * (weights + attention)


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

    peak = matmul_peak_flops()
    n_tokens = batch * new_tokens
    ours_tok_s, hf_tok_s = n_tokens / t_ours, n_tokens / t_hf
    roofline_tok_s = peak / flops_per_token(cfg, prompt_len + new_tokens // 2)
    result = dict(
        bench="sampler", machine=machine(), torch_threads=torch.get_num_threads(), model="SmolLM2-135M-Instruct",
        dtype="float32", batch=batch, prompt_len=prompt_len, new_tokens=new_tokens, temperature=1.0, reps=reps,
        ours_s=times_ours, hf_s=times_hf, ours_tok_s=ours_tok_s, hf_tok_s=hf_tok_s, ratio=ours_tok_s / hf_tok_s,
        matmul_peak_flops=peak, roofline_tok_s=roofline_tok_s, roofline_fraction=ours_tok_s / roofline_tok_s,
    )
    write(result, out)
    print(f"sampler: ours {ours_tok_s:.0f} tok/s, transformers {hf_tok_s:.0f} tok/s, ratio {result['ratio']:.2f}x, "
          f"roofline fraction {result['roofline_fraction']:.2f} (peak {peak / 1e9:.0f} GFLOP/s, {machine()})")
    return result
