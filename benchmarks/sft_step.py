"""python -m benchmarks.sft_step [--rounds 5] [--steps 10]: the demo's imitation step, old path against new,
interleaved in one process (this machine is shared and noisy: only ratios within one run count).

Variants on the demo's warm-up data (64 random examples of 1-7-step chains, bucket 104 tokens, mean 65):
padded rows with the layer scan (the code before 2026-12-07), padded with the 2 layers unrolled
(`ModelConfig.layer_unroll=2`), and packed rows (`sft.pack`) unrolled, the demo's path now. Prints s/step
per round and the median speed-up over the first variant as one JSON line.
"""
import argparse
import json
import os
import time

os.environ.setdefault("TQDM_DISABLE", "1")

import jax
import numpy as np

from repirl_jax import demo, models, sft


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args()
    c = demo.default_config()
    w = c.warmup
    mc, _, _, prompt_ids, sols, optim = demo.imitation_setup(c)  # the warm-up's model config, data and optimiser
    tokens, mask, _ = sft.encode_pairs(prompt_ids, sols, w.length)
    lengths = np.minimum([len(p) + len(r) for p, r in zip(prompt_ids, sols)], w.length)
    unrolled = mc.replace(layer_unroll=w.layers)
    variants = {"padded_scan": (mc.replace(layer_unroll=1), False), "padded_unrolled": (unrolled, False),
                "packed_unrolled": (unrolled, True)}
    state = {}
    for name, (cfg, _) in variants.items():
        init, step = sft.make_sft_step(cfg, optim)
        params = models.init_params(cfg, jax.random.key(0))
        state[name] = [step, params, init(params)]
    rng, times = np.random.RandomState(0), {k: [] for k in variants}
    for r in range(a.rounds + 1):  # round 0 compiles (each packed row count once)
        for name, (_, packed) in variants.items():
            step, params, opt = state[name]
            t0 = time.perf_counter()
            for _ in range(a.steps):
                idx = rng.randint(0, len(tokens), w.batch)
                batch = (sft.pack(tokens[idx], mask[idx], lengths[idx], w.length) if packed
                         else (tokens[idx], mask[idx], None, None))
                params, opt, loss = step(params, opt, *batch)
            loss.block_until_ready()
            state[name][1:] = [params, opt]
            if r:
                times[name].append((time.perf_counter() - t0) / a.steps)
    base = np.array(times["padded_scan"])
    print(json.dumps({"s_per_step": {k: [round(x, 3) for x in v] for k, v in times.items()},
                      "speedup_median": {k: round(float(np.median(base / np.array(v))), 2) for k, v in times.items()},
                      "batch": w.batch, "length": w.length, "mean_tokens": round(float(lengths.mean()), 1)}))


if __name__ == "__main__":
    main()
