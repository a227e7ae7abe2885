"""Rollouts with long-tailed lengths: the static sampler against continuous batching at the same
slot count (the KV cache's rows), same requests, in one run.

The static sampler decodes `slots` rows at a time (slots / K prompts per call) until the longest
row of the chunk ends; continuous batching gives a finished row's slot to the next waiting
request. Per side: useful tokens/s (real tokens over wall time), slot utilisation (real tokens
over token positions computed: rows x steps, plus the prefill's first token per continuous
request), the KV cache allocated, and the time of the whole rollout batch. `identical`: both
produced the same tokens and masks (log-probs within 1e-5 is the tests' bar; the largest
difference is reported). The continuous side runs three times: refilling inside the compiled loop
(`slot_utilisation`, `ratio`: the default), between compiled chunks of `chunk` decode steps
(`chunked_*`), and inside the loop without moving the tail into fewer slots once no request waits
(`unshrunk_*`, min_slots = slots: every slot-step of the drain is counted).

Modes:
  synthetic  a random-weight "counting" model with SmolLM2's widths (fewer layers, smaller
             vocabulary) whose next token is the current token + 1 (the unembedding is the
             embedding shifted by one; the layers' small random weights barely perturb it), with
             EOS = the last id. A request whose prompt ends in token V - 1 - L therefore emits
             exactly L tokens at T=1: lengths are drawn from a log-normal (median max_new / 8,
             sigma 1, capped at max_new), one request per prompt.
  smollm2    the packaged SmolLM2-135M-Instruct on gsm_symbolic prompts at T=1, its own EOS,
             K samples per prompt (its lengths are whatever the model writes).

    repirl bench rollout [--mode smollm2] [--out F] [--reps N]
    python -m benchmarks.rollout --mode synthetic --slots 16 --requests 128 --max-new 256
"""
from __future__ import annotations

import numpy as np

from .common import arg_parser, report


def counting_model(vocab: int, layers: int, width: int = 576, seed: int = 0):
    """(cfg, params): greedy (and, the logits being ~width apart, T=1) continuation t -> t + 1."""
    import jax

    from repirl_jax import models

    cfg = models.ModelConfig(family="llama", vocab_size=vocab, hidden_size=width, intermediate_size=width * 8 // 3,
                             num_layers=layers, num_heads=9, num_kv_heads=3, head_dim=width // 9,
                             max_position_embeddings=4096, eos_token_id=vocab - 1)
    params = models.init_params(cfg, jax.random.key(seed))
    embed = jax.random.normal(jax.random.key(seed + 1), (vocab, width))
    return cfg, dict(params, embed=embed, lm_head=jax.numpy.roll(embed, 1, axis=0))  # lm_head[v] = embed[v - 1]


def synthetic_requests(cfg, n: int, max_new: int, prompt_max: int, seed: int = 0) -> tuple[list, np.ndarray]:
    """n prompts (random tokens, 4..prompt_max long) and the length each one's completion will have."""
    rng = np.random.RandomState(seed)
    lengths = np.minimum(np.ceil(rng.lognormal(np.log(max_new / 8), 1.0, n)), max_new).astype(int)
    prompts = [rng.randint(0, cfg.vocab_size - max_new - 1, rng.randint(3, prompt_max)).tolist() + [cfg.vocab_size - 1 - L]
               for L in lengths]
    return prompts, lengths


def smollm2_requests(n: int):
    from repirl_jax import models
    from repirl_jax.data import packaged, prompts

    path = models.smollm2_dir()
    cfg, params = models.load(path)
    return cfg, params, prompts.encode(packaged.gsm_symbolic(n), models.load_tokenizer(path), 1024).ids


def timed_sides(sides: dict, warm: dict, reps: int) -> dict:
    """Compiles every side with `warm` (same shapes, fewer decode steps), then times the sides
    interleaved, rep by rep (other work on the machine then slows all sides alike); medians."""
    import statistics
    import time

    for w in warm.values():
        w()
    times, outs = {k: [] for k in sides}, {}
    for _ in range(reps):
        for k, fn in sides.items():
            t0 = time.perf_counter()
            outs[k] = fn()
            times[k].append(time.perf_counter() - t0)
    res = {}
    for k, o in outs.items():
        t, useful = statistics.median(times[k]), int(o.mask.sum())
        res[k] = dict(out=o, s=t, times=times[k], tok_s=useful / t, useful_tokens=useful, slot_steps=o.slot_steps,
                      slot_utilisation=useful / o.slot_steps, kv_cache_bytes=o.kv_cache_bytes)
    return res


def run(out: str | None = None, reps: int = 1, mode: str = "synthetic", slots: int = 16, requests: int = 128,
        samples: int = 4, max_new: int | None = None, layers: int = 4, vocab: int = 4096, chunk: int = 8,
        small: bool = False) -> dict:
    from repirl_jax import sampling

    if mode == "synthetic":
        max_new = max_new or (48 if small else 256)
        cfg, params = counting_model(512 if small else vocab, 1 if small else layers, 36 if small else 576)
        prompts, want_len = synthetic_requests(cfg, requests, max_new, 16 if small else 64)
        K, model = 1, f"counting model, {cfg.num_layers} layers, width {cfg.hidden_size}, vocab {cfg.vocab_size}"
    elif mode == "smollm2":
        max_new = max_new or 512
        cfg, params, prompts = smollm2_requests(requests // samples)
        K, want_len, model = samples, None, "SmolLM2-135M-Instruct"
    else:
        raise ValueError(f"bench rollout: mode={mode!r}: expected synthetic | smollm2")
    if slots % K:
        raise ValueError(f"bench rollout: slots={slots} must be a multiple of samples={K} (the static side "
                         "decodes whole prompts)")
    kw = dict(temperature=1.0, num_samples=K, eos_id=cfg.eos_ids, seed=0)
    warm_new = sampling.bucket(max_new) // 2 + 1  # same compiled shapes, half the decode steps
    gen = lambda n, **extra: (lambda: sampling.generate(cfg, params, prompts, max_new_tokens=n, **kw, **extra))
    sides = {
        "static": dict(max_prompts=slots // K),
        "continuous": dict(slots=slots),
        "chunked": dict(slots=slots, refill_every=chunk),
        "unshrunk": dict(slots=slots, min_slots=slots),  # continuous without moving the tail into fewer slots
    }
    res = timed_sides({k: gen(max_new, **v) for k, v in sides.items()}, {k: gen(warm_new, **v) for k, v in sides.items()},
                      reps)
    st, co, ch, un = (res[k].pop("out") for k in ("static", "continuous", "chunked", "unshrunk"))
    same = lambda a: bool(np.array_equal(a.tokens, st.tokens) and np.array_equal(a.mask, st.mask))
    lengths = st.lengths
    result = dict(
        bench="rollout", mode=mode, model=model, requests=len(prompts) * K, samples=K, slots=slots, max_new=max_new,
        chunk=chunk, reps=reps, temperature=1.0, sides={k: str(v) for k, v in sides.items()},
        lengths=dict(mean=float(lengths.mean()), p50=float(np.median(lengths)), p90=float(np.percentile(lengths, 90)),
                     max=int(lengths.max())),
        lengths_as_drawn=None if want_len is None else bool(np.array_equal(lengths, want_len)),
        slot_utilisation=res["continuous"]["slot_utilisation"], static_slot_utilisation=res["static"]["slot_utilisation"],
        ratio=res["continuous"]["tok_s"] / res["static"]["tok_s"], chunked_ratio=res["chunked"]["tok_s"] / res["static"]["tok_s"],
        chunked_slot_utilisation=res["chunked"]["slot_utilisation"],
        unshrunk_ratio=res["unshrunk"]["tok_s"] / res["static"]["tok_s"],
        unshrunk_slot_utilisation=res["unshrunk"]["slot_utilisation"],
        identical=same(co) and same(ch) and same(un),
        max_logprob_diff=float(max(np.abs(o.logprobs - st.logprobs).max() for o in (co, ch, un))),
        **res)
    return report(result, out, f"rollout ({mode}): continuous {res['continuous']['tok_s']:.0f} useful tok/s vs static "
                  f"{res['static']['tok_s']:.0f} (ratio {result['ratio']:.2f}x; refilled between {chunk}-step chunks "
                  f"{result['chunked_ratio']:.2f}x; tail not shrunk {result['unshrunk_ratio']:.2f}x); slot utilisation "
                  f"{result['slot_utilisation']:.2f} vs {result['static_slot_utilisation']:.2f} (tail not shrunk "
                  f"{result['unshrunk_slot_utilisation']:.2f}); KV cache {res['continuous']['kv_cache_bytes'] / 2**20:.0f} "
                  f"vs {res['static']['kv_cache_bytes'] / 2**20:.0f} MiB; identical {result['identical']}",
                  size=f"{result['requests']} requests, {slots} slots, max_new {max_new}")


if __name__ == "__main__":
    ap = arg_parser(__doc__)
    ap.add_argument("--mode", default="synthetic", choices=("synthetic", "smollm2"))
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--samples", type=int, default=4, help="smollm2 mode: K samples per prompt")
    ap.add_argument("--max-new", type=int, default=None)
    ap.add_argument("--layers", type=int, default=4, help="synthetic mode")
    ap.add_argument("--chunk", type=int, default=8, help="decode steps between refills on the chunked side")
    a = ap.parse_args()
    run(a.out, a.reps, a.mode, a.slots, a.requests, a.samples, a.max_new, a.layers, chunk=a.chunk)
