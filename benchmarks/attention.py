"""Causal attention's forward + backward at SmolLM2-135M widths (9 query heads, 3 kv heads, head
dim 64; 8 sequences of 320 tokens, float32): query blocks of `causal_attention` against one
masked [L, L] softmax (n_blocks=1), same process, medians of `reps`.

    python -m benchmarks.attention [--out F] [--reps N] [--L L]
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .common import arg_parser, machine, median_time, report


def run(out: str | None = None, reps: int = 7, B: int = 8, L: int = 320, H: int = 9, K: int = 3, Dh: int = 64) -> dict:
    from repirl_jax.models.transformer import causal_attention, query_blocks

    r = np.random.RandomState(0)
    q, k, v = (jnp.asarray(r.randn(*s), jnp.float32) for s in ((B, L, H, Dh), (B, K, L, Dh), (B, K, L, Dh)))
    valid = jnp.asarray(np.arange(L)[None] >= r.randint(0, L // 4, (B, 1)))  # left padding
    times = {}
    for n in sorted({1, query_blocks(L)}):
        g = jax.jit(jax.grad(lambda q, k, v: jnp.sum(causal_attention(q, k, v, valid, n_blocks=n) * q), (0, 1, 2)))
        jax.block_until_ready(g(q, k, v))
        times[n] = median_time(lambda: jax.block_until_ready(g(q, k, v)), reps)[0]
    n = query_blocks(L)
    res = dict(bench="attention", machine=machine(), B=B, L=L, H=H, K=K, Dh=Dh, n_blocks=n,
               one_block_ms=times[1] * 1e3, blocks_ms=times[n] * 1e3, speedup=times[1] / times[n])
    return report(res, out, f"attention fwd+bwd: one block {res['one_block_ms']:.1f} ms, {n} query blocks "
                  f"{res['blocks_ms']:.1f} ms, {res['speedup']:.2f}x", f"B={B} L={L} H={H} K={K} Dh={Dh}")


def main(argv=None):
    ap = arg_parser(__doc__)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--L", type=int, default=320)
    a = ap.parse_args(argv)
    run(a.out, a.reps, L=a.L)


if __name__ == "__main__":
    main()
