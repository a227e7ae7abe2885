"""Speed of the jitted dual step (PRM update + policy update) for a SmolLM2-135M-shaped policy
and head-form PRM (random weights: speed does not depend on their values), as model FLOP
utilisation: achieved model FLOP/s over the matmul peak measured in the same process.

Model FLOPs of one step (B sequences of S = P + T tokens, the last T the response; N = the
trunk's matmul weights, L*(D*H*Dh + 2*D*Kv*Dh + H*Dh*D + 3*D*F); the embedding lookup is free):

  fwd(B)    = 2*N*B*S + L*4*H*Dh*B*S*(S+1)/2    weights + causal attention (q.k and p.v over
                                                the i+1 visible keys of position i)
  bwd(B)    = 2 * fwd(B)                        (gradients w.r.t. inputs and weights)
  lm(B)     = 2*V*D*B*T                         policy logits, response positions only
  head(B)   = 2*D*B*T                           PRM reward head
  policy    = 3 * (fwd(GK) + lm(GK))            forward + backward on the G*K rollouts (the
                                                minibatches split them; each is seen once)
  prm       = 4 * (fwd(G(K+E)) + head(G(K+E)))  no-grad scoring pass + forward/backward pass
              + fwd(GK) + head(GK)              over rollouts and experts, then the rollouts
                                                re-scored by the updated PRM
Recomputation under remat is not counted (model FLOPs, as in MFU).
`tokens_per_s` counts response tokens trained on: G*K*T / step_s. On a shared machine, also
`mfu_cpu_time` (model FLOPs per CPU-second of this process over the matmul's) and `cpu_share`.

    repirl bench step [--out F] [--reps N]
    python -m benchmarks.step [--remat none|full|dots] [--chunk C] [--micro M] [--scaling]
"""
from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from .common import arg_parser, machine, matmul_peak_flops, median_time, report, write
from .step_memory import SMOLLM2_135M

TINY = dict(family="llama", vocab_size=256, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
            num_kv_heads=2, head_dim=8, rope_theta=10000.0, tie_word_embeddings=True)


def model_flops(cfg, G: int, K: int, E: int, P: int, T: int, prm_loss: str = "repirl") -> dict:
    """Model FLOPs of one dual step by part (formula in the module docstring)."""
    D, F, L, H, Kv, Dh, V = (cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, cfg.num_heads,
                             cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size)
    N = L * (D * H * Dh + 2 * D * Kv * Dh + H * Dh * D + 3 * D * F)
    S = P + T
    fwd = lambda B: 2 * N * B * S + L * 4 * H * Dh * B * S * (S + 1) // 2
    lm = lambda B: 2 * V * D * B * T
    head = lambda B: 2 * D * B * T
    policy = 3 * (fwd(G * K) + lm(G * K))
    prm = 0 if prm_loss == "none" else 4 * (fwd(G * (K + E)) + head(G * (K + E))) + fwd(G * K) + head(G * K)
    return dict(policy=policy, prm=prm, total=policy + prm)


def models_config(shape: dict, **kw):
    from repirl_jax import models

    return models.ModelConfig(**shape, **kw)


def synthetic_batch(vocab: int, G: int, K: int, E: int, P: int, T: int, seed: int = 0):
    """Full-length prompts, rollouts and experts of random tokens, half the rollouts correct."""
    from repirl_jax import train_step as ts

    r = np.random.RandomState(seed)
    tok = lambda *s: r.randint(0, vocab, s).astype(np.int32)
    return ts.Batch(tok(G, P), np.ones((G, P), bool), tok(G, K, T), np.ones((G, K, T), bool),
                    np.full((G, K, T), -np.log(vocab), np.float32), (r.rand(G, K) < 0.5).astype(np.float32),
                    np.zeros((G, K), np.float32), tok(G, E, T), np.ones((G, E, T), bool))


def time_step(shape: dict, G=8, K=4, E=1, P=64, T=256, remat="none", chunk=0, micro=1, prm_loss="repirl",
              dtype="float32", reps=3, warmup=True) -> dict:
    """Compiles the step ahead of time, runs it once untimed (warmup), then times `reps` runs."""
    from repirl_jax import models
    from repirl_jax import train_step as ts
    from repirl_jax.config import PolicyConfig, PRMConfig

    cfg = models_config(shape, remat=remat, dtype=dtype, param_dtype="float32")
    sc = ts.StepConfig(cfg, cfg, PRMConfig(loss=prm_loss, microbatches=micro),
                       PolicyConfig(microbatches=micro, logit_chunk=chunk))
    policy = models.init_params(cfg, jax.random.key(0))
    state = ts.init_state(sc, policy, models.init_params(cfg, jax.random.key(1)))
    batch = jax.device_put(synthetic_batch(cfg.vocab_size, G, K, E, P, T))
    t0 = time.perf_counter()
    step = ts.make_train_step(sc).lower(state, batch).compile()  # AOT: compile time apart from run time
    compile_s = time.perf_counter() - t0
    mem = step.memory_analysis()
    box = [state]

    def once():  # the state is donated: carry the new one forward
        box[0], m = step(box[0], batch)
        jax.block_until_ready(m)
        assert float(m["step_ok"]) == 1.0, "non-finite step"

    if warmup:
        once()
    cpu0 = time.process_time()
    step_s, times = median_time(once, reps)
    cpu_s = (time.process_time() - cpu0) / reps  # CPU time of all this process's threads
    flops = model_flops(cfg, G, K, E, P, T, prm_loss)
    return dict(G=G, K=K, E=E, P=P, T=T, remat=remat, logit_chunk=chunk, microbatches=micro, prm_loss=prm_loss,
                dtype=dtype, compile_s=compile_s, step_s=step_s, times_s=times, cpu_s=cpu_s, model_flops=flops,
                achieved_flops=flops["total"] / step_s, tokens_per_s=G * K * T / step_s,
                temp_gib=None if mem is None else round(mem.temp_size_in_bytes / 2 ** 30, 3))


def matmul_flops_per_cpu_s(n: int, dtype, reps: int = 5) -> float:
    """The peak matmul's FLOPs per CPU-second of this process (all threads): with another
    process competing for the cores, wall-clock rates fall but this one should not."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    c0 = time.process_time()
    for _ in range(reps):
        f(a).block_until_ready()
    return 2 * n ** 3 * reps / (time.process_time() - c0)


def default_dtype() -> str:
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def run(out: str | None = None, reps: int = 3, small: bool = False, G=8, K=4, E=1, P=64, T=256, remat="none",
        chunk=0, micro=4, profile: bool = True, warmup: bool | None = None, prm_loss: str = "repirl") -> dict:
    """The full step at the issue's size (small=True: a tiny model, for the tests), and with
    profile the policy-only step (prm.loss=none) so the PRM's share is their difference.
    warmup (default: only when small): an untimed run before the timed ones. At full size a
    run takes minutes on a CPU and the AOT compile already happened, so it is skipped there.
    prm_loss="none" times the policy-only step (for quick remat / chunk comparisons)."""
    shape = TINY if small else SMOLLM2_135M
    dtype = default_dtype()
    n = 256 if small else 2048
    peak = matmul_peak_flops(n, jnp.dtype(dtype))
    kw = dict(G=G, K=K, E=E, P=P, T=T, remat=remat, chunk=chunk, micro=micro, dtype=dtype, reps=reps,
              warmup=small if warmup is None else warmup)
    full = time_step(shape, **kw, prm_loss=prm_loss)
    profile = profile and prm_loss != "none"
    result = dict(bench="step", machine=machine(), model="tiny" if small else "SmolLM2-135M-shaped policy + head PRM",
                  step_s=full["step_s"], tokens_per_s=full["tokens_per_s"], full=full)
    if profile:
        pol = time_step(shape, **kw, prm_loss="none")
    # the peak again after the runs, the higher one kept: another process may have been busy once
    peak = max(peak, matmul_peak_flops(n, jnp.dtype(dtype)))
    result["matmul_peak_flops"], result["mfu"] = peak, full["achieved_flops"] / peak
    # Contention check: the same ratio in FLOPs per CPU-second of this process, and the share of
    # the machine's cores the step got (1.0: all of them, the whole time)
    per_cpu = matmul_flops_per_cpu_s(n, jnp.dtype(dtype))
    result |= dict(matmul_flops_per_cpu_s=per_cpu, cpu_share=full["cpu_s"] / full["step_s"] / os.cpu_count(),
                   mfu_cpu_time=full["model_flops"]["total"] / full["cpu_s"] / per_cpu)
    line = (f"step: {full['step_s']:.2f} s, {full['achieved_flops'] / 1e9:.1f} GFLOP/s, mfu {result['mfu']:.3f} "
            f"(peak {peak / 1e9:.0f} GFLOP/s), {full['tokens_per_s']:.0f} tok/s; per CPU-second mfu "
            f"{result['mfu_cpu_time']:.3f}, cpu share {result['cpu_share']:.2f}")
    if profile:
        prm_s = full["step_s"] - pol["step_s"]
        result |= dict(policy_only=pol, policy_s=pol["step_s"], prm_s=prm_s,
                       policy_mfu=pol["achieved_flops"] / peak,
                       policy_mfu_cpu_time=pol["model_flops"]["total"] / pol["cpu_s"] / per_cpu,
                       # timing noise can make the difference <= 0
                       prm_mfu=full["model_flops"]["prm"] / prm_s / peak if prm_s > 0 else None)
        line += (f"; policy part {pol['step_s']:.2f} s (mfu {result['policy_mfu']:.3f}), PRM part {prm_s:.2f} s "
                 f"(mfu {result['prm_mfu'] or float('nan'):.3f})")
    result["load_avg_1_5_15"] = os.getloadavg()  # other processes on the machine skew the timings
    return report(result, out, line, f"G={G} K={K} E={E} P={P} T={T} remat={remat} chunk={chunk} micro={micro} {dtype}")


# ---------------------------------------------------------------- scaling table
SCALING_CMD = "nice -n 19 .venv/bin/python -m benchmarks.step --scaling"


def scaling(md: str | None = "docs/scaling.md", out: str | None = None, small: bool = False, layers: int = 4,
            reps: int = 1, Ts=(128, 256, 512, 1024), Gs=(1, 2, 4, 8), K=4, E=1, P=64,
            cmd: str = SCALING_CMD) -> dict:
    """Step time against T (G=2) and against G*K (T=256). SmolLM2-135M widths and vocabulary but
    `layers` layers, so the whole table runs in minutes on a 2-core CPU; time per layer is the
    same at any depth, so the growth with T and G*K is the full model's. One prompt's K + E
    sequences per microbatch (micro = G): live activations stay those of one group, so T = 1024
    fits in memory (all of G*K at once needs ~20 GB there, mostly [rows, T, V] logits)."""
    shape = dict(TINY if small else SMOLLM2_135M, num_layers=layers)
    dtype = default_dtype()
    peak = matmul_peak_flops(256 if small else 2048, jnp.dtype(dtype))
    rows, T_gk = [], 256 if 256 in Ts else Ts[0]  # the G*K series reuses the T series' G=2 row
    for G, T in [(2, t) for t in Ts] + [(g, T_gk) for g in Gs if g != 2]:
        r = time_step(shape, G=G, K=K, E=E, P=P, T=T, micro=G, dtype=dtype, reps=reps, warmup=small)
        rows.append(dict(G=G, K=K, GK=G * K, T=T, step_s=r["step_s"], compile_s=r["compile_s"],
                         tflop=r["model_flops"]["total"] / 1e12, mfu=r["achieved_flops"] / peak,
                         tokens_per_s=r["tokens_per_s"], cpu_share=r["cpu_s"] / r["step_s"] / os.cpu_count()))
        print(f"scaling G*K={G * K} T={T}: {r['step_s']:.2f} s, mfu {rows[-1]['mfu']:.3f}", flush=True)
    model = f"{'tiny' if small else 'SmolLM2-135M'} widths and vocabulary, {layers} layers"
    result = dict(bench="step_scaling", machine=machine(), model=model, dtype=dtype, matmul_peak_flops=peak,
                  K=K, E=E, P=P, T_gk=T_gk, rows=rows, cmd=cmd, load_avg_1_5_15=os.getloadavg())
    write(result, out)
    if md:
        os.makedirs(os.path.dirname(md) or ".", exist_ok=True)
        with open(md, "w") as f:
            f.write(scaling_markdown(result))
    return result


def scaling_markdown(res: dict) -> str:
    head = ("| G*K | T | step (s) | x step | x model FLOPs | MFU | response tok/s | CPU share |\n"
            "|---:|---:|---:|---:|---:|---:|---:|---:|\n")

    def table(rows, ref):
        return head + "".join(
            f"| {r['GK']} | {r['T']} | {r['step_s']:.2f} | {r['step_s'] / ref['step_s']:.2f} | "
            f"{r['tflop'] / ref['tflop']:.2f} | {r['mfu']:.3f} | {r['tokens_per_s']:.0f} | "
            f"{r.get('cpu_share', float('nan')):.2f} |\n" for r in rows)

    by_T = sorted((r for r in res["rows"] if r["GK"] == 2 * res["K"]), key=lambda r: r["T"])
    by_GK = sorted((r for r in res["rows"] if r["T"] == res["T_gk"]), key=lambda r: r["GK"])
    return (f"# Dual-step scaling\n\nGenerated by `{res['cmd']}` (benchmarks/step.py); do not edit by hand.\n\n"
            f"Machine: {res['machine']}, {res['dtype']}, matmul peak {res['matmul_peak_flops'] / 1e9:.0f} GFLOP/s. "
            f"Model: {res['model']}; head PRM, repirl loss; "
            f"K={res['K']} samples, E={res['E']} expert, prompt P={res['P']}, no remat, one prompt per "
            "microbatch (gradient accumulation over the G prompts). "
            "`x step` and `x model FLOPs` are relative to the first row: equal columns mean time grows "
            "exactly with the work; model FLOPs include attention, which grows with T squared. `CPU share`: "
            "the fraction of the machine's cores this process got during the step (below 1: another "
            "process was running and the times are inflated).\n\n"
            f"## Step time against T (G*K = {2 * res['K']})\n\n{table(by_T, by_T[0])}\n"
            f"## Step time against G*K (T = {res['T_gk']})\n\n{table(by_GK, by_GK[0])}")


def main(argv=None):
    ap = arg_parser(__doc__)
    ap.add_argument("--reps", type=int, help="timed runs (default 3; 1 with --scaling)")
    ap.add_argument("--remat", default="none", choices=("none", "full", "dots"))
    ap.add_argument("--chunk", type=int, default=0, help="policy log-softmax sequence chunk (0: whole)")
    ap.add_argument("--micro", type=int, default=4, help="gradient-accumulation microbatches (PRM and policy)")
    ap.add_argument("--T", type=int, default=256)
    ap.add_argument("--no-profile", action="store_true", help="skip the policy-only step")
    ap.add_argument("--prm-loss", default="repirl", help="none: time only the policy-only step")
    ap.add_argument("--scaling", action="store_true", help="write docs/scaling.md instead")
    ap.add_argument("--layers", type=int, default=4, help="--scaling: layers of the model")
    a = ap.parse_args(argv)
    if a.scaling:
        cmd = SCALING_CMD + (f" --layers {a.layers}" if a.layers != 4 else "") + (f" --reps {a.reps}" if a.reps else "")
        scaling(out=a.out, layers=a.layers, reps=a.reps or 1, cmd=cmd)
    else:
        run(a.out, a.reps or 3, T=a.T, remat=a.remat, chunk=a.chunk, micro=a.micro, profile=not a.no_profile,
            prm_loss=a.prm_loss)


if __name__ == "__main__":
    main()
