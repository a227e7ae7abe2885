"""Memory of the compiled dual step for a SmolLM2-135M-shaped policy and PRM (head form), from
XLA's memory analysis of the ahead-of-time compiled step: nothing is allocated, so any size can
be checked on this machine. Variants: remat policy and the log-softmax sequence chunk."""
from __future__ import annotations


import jax
import jax.numpy as jnp

from .common import machine, write

SMOLLM2_135M = dict(family="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                    num_heads=9, num_kv_heads=3, head_dim=64, rope_theta=100000.0, tie_word_embeddings=True)


def analyse(G=8, K=4, E=4, P=128, T=256, remat="none", chunk=0, minibatches=4, prm_micro=1, dtype="float32") -> dict:
    from repirl_jax import models
    from repirl_jax import train_step as ts
    from repirl_jax.config import PolicyConfig, PRMConfig

    mcfg = models.ModelConfig(**SMOLLM2_135M, remat=remat, dtype=dtype, param_dtype=dtype)
    cfg = ts.StepConfig(mcfg, mcfg, PRMConfig(minibatches=1, microbatches=prm_micro),
                        PolicyConfig(minibatches=minibatches, logit_chunk=chunk))
    abs_params = models.abstract_params(mcfg)
    state = jax.eval_shape(lambda a, b: ts.init_state(cfg, a, b), abs_params, abs_params)
    S = jax.ShapeDtypeStruct
    batch = ts.Batch(S((G, P), jnp.int32), S((G, P), bool), S((G, K, T), jnp.int32), S((G, K, T), bool),
                     S((G, K, T), jnp.float32), S((G, K), jnp.float32), S((G, K), jnp.float32),
                     S((G, E, T), jnp.int32), S((G, E, T), bool))
    ma = ts.make_train_step(cfg).lower(state, batch).compile().memory_analysis()
    gib = lambda b: round(b / 2 ** 30, 3)
    return dict(G=G, K=K, E=E, P=P, T=T, remat=remat, logit_chunk=chunk, policy_minibatches=minibatches,
                prm_microbatches=prm_micro,
                dtype=dtype, argument_gib=gib(ma.argument_size_in_bytes), output_gib=gib(ma.output_size_in_bytes),
                temp_gib=gib(ma.temp_size_in_bytes), alias_gib=gib(ma.alias_size_in_bytes),
                peak_gib=gib(ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes
                             + ma.temp_size_in_bytes))


def run(out: str | None = None, reps: int = 1) -> dict:
    rows = [analyse(remat=r, chunk=c, prm_micro=m) for r, c, m in
            (("none", 0, 1), ("full", 0, 1), ("full", 64, 1), ("full", 0, 8), ("full", 64, 8))]
    result = dict(bench="step_memory", machine=machine(), model="SmolLM2-135M-shaped policy + head PRM", rows=rows)
    write(result, out)
    for r in rows:
        print(f"step memory: remat={r['remat']} chunk={r['logit_chunk']} prm_micro={r['prm_microbatches']}: args {r['argument_gib']} GiB, "
              f"temp {r['temp_gib']} GiB, peak {r['peak_gib']} GiB (G={r['G']} K={r['K']} E={r['E']} "
              f"P={r['P']} T={r['T']}, {r['dtype']})")
    return result
