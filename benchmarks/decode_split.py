"""The static sampler's decode on XLA:CPU with per-layer buffers (`transformer.decode_split`, the
default) against the stacked-scan form it replaced: both compiled in one process from the same
`sampling._generate` (the stacked form by making `decode_split` return its input while tracing),
then run alternately, SmolLM2-135M, batch B x M new tokens at temperature 1 from 64-token prompts.
Reports tok/s per side (medians) and whether the tokens and log-probs are the same.

    python -m benchmarks.decode_split [--batch 16] [--new 128] [--reps 3] [--out F]
"""
from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from .common import arg_parser, report


def run(out: str | None = None, batch: int = 16, new: int = 128, reps: int = 3, prompt_len: int = 64) -> dict:
    from repirl_jax import models, sampling
    from repirl_jax.models import transformer

    cfg, params = models.load(models.smollm2_dir())
    prompts = np.random.RandomState(0).randint(100, cfg.vocab_size, (batch, prompt_len)).tolist()
    tokens, valid = sampling.left_pad(prompts, prompt_len)
    dyn = (params, tokens, valid, jax.random.key(0), jnp.int32(0), jnp.float32(1), jnp.float32(1), jnp.float32(0),
           jnp.int32(new), jnp.asarray([-1], jnp.int32), jnp.full((1, 1), -2, jnp.int32))
    static = dict(max_new=new, num_samples=1, top_k=0, nucleus=False, draw="icdf", layout=None)
    split = transformer.decode_split
    compiled, compile_s = {}, {}
    try:
        for side, fn in (("stacked", lambda tree: tree), ("split", split)):
            transformer.decode_split = fn
            jax.clear_caches()  # trace again with this form
            t0 = time.perf_counter()
            compiled[side] = sampling._generate.trace(cfg, *dyn, **static).lower().compile()
            compile_s[side] = time.perf_counter() - t0
    finally:
        transformer.decode_split = split
    times, outs = {k: [] for k in compiled}, {}
    for _ in range(reps):  # alternate, so drifts of the machine's speed hit both sides
        for side, f in compiled.items():
            t0 = time.perf_counter()
            outs[side] = jax.block_until_ready(f(*dyn))
            times[side].append(time.perf_counter() - t0)
    tok_s = {k: batch * new / statistics.median(v) for k, v in times.items()}
    same = bool(np.array_equal(np.asarray(outs["stacked"][0]), np.asarray(outs["split"][0])))
    dlp = float(np.abs(np.asarray(outs["stacked"][2]) - np.asarray(outs["split"][2])).max())
    result = dict(bench="decode_split", batch=batch, new_tokens=new, reps=reps, seconds=times, compile_s=compile_s,
                  stacked_tok_s=tok_s["stacked"], split_tok_s=tok_s["split"], ratio=tok_s["split"] / tok_s["stacked"],
                  same_tokens=same, max_logprob_diff=dlp)
    return report(result, out, f"decode: per-layer buffers {tok_s['split']:.0f} tok/s, stacked scan "
                  f"{tok_s['stacked']:.0f} tok/s, ratio {result['ratio']:.2f}x; same tokens {same}, largest "
                  f"log-prob difference {dlp:.1e}; compile {compile_s['split']:.1f} vs {compile_s['stacked']:.1f} s",
                  f"B={batch}, {new} tokens")


def main(argv=None):
    ap = arg_parser(__doc__)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args(argv)
    run(a.out, a.batch, a.new, a.reps)


if __name__ == "__main__":
    main()
