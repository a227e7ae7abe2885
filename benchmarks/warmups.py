"""Imitation starts of the demo under warm-up variants: for each variant and seed, the warm-up
(demo.warmup, the demo's own stage) into OUT/<variant>_s<seed>/start, then its held-out long-chain
failures (benchmarks.start_errors): greedy and T=1 accuracy, sign slips (what RL can drop) and
arithmetic errors (what the start has not learned), with the warm-up's final loss and the loss floor
of the slip coin (the loss a perfect imitator of the noisy demonstrations reaches). One JSON line per
start in OUT/warmups.jsonl; a finished start is reused.

    python -m benchmarks.warmups OUT --seeds 0 2 --variant base --variant long warmup.steps=2000
    python -m benchmarks.warmups OUT --config configs/demo_smollm2.py --variant pm rl.data.ops=+- ...

--config: the demo config the variants start from (a configs/*.py file, as `repirl demo --config`;
default the toy demo's).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

from repirl_jax import demo, models
from repirl_jax.cli import load_config
from repirl_jax.config import apply_overrides

from .start_errors import breakdown, held_out


def slip_floor(c: demo.DemoConfig, tok) -> float:
    """Per-token loss of the exact noisy-demonstration distribution: each + / - line is a coin of
    warmup.slip_rate (its entropy), every other token determined."""
    p = c.warmup.slip_rate
    h = -(p * math.log(p) + (1 - p) * math.log(1 - p)) if 0 < p < 1 else 0.0
    easy, _ = demo.problems(c)
    coins = sum(sum(1 for ln in e.meta["lines"][:-1] if ("+" in ln or "-" in ln)) for e in easy)
    tokens = sum(len(tok(e.experts[0] + tok.eos_token, add_special_tokens=False)["input_ids"]) for e in easy)
    return coins * h / tokens


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--variant", nargs="+", action="append", required=True, help="NAME [key=value ...]")
    ap.add_argument("--problems", type=int, default=200)
    ap.add_argument("--config", help="a configs/*.py file whose config() is a demo.DemoConfig (default: the demo's)")
    a = ap.parse_args()
    base = load_config(a.config, []) if a.config else demo.default_config()
    os.makedirs(a.out, exist_ok=True)
    log_path = os.path.join(a.out, "warmups.jsonl")
    done = {(r["variant"], r["seed"]) for r in map(json.loads, open(log_path))} if os.path.isfile(log_path) else set()
    for name, *overrides in a.variant:
        for seed in a.seeds:
            if (name, seed) in done:
                continue
            c = apply_overrides(base, [*overrides, f"seed={seed}"])
            wd = os.path.join(a.out, f"{name}_s{seed}")
            os.makedirs(wd, exist_ok=True)
            t0 = time.perf_counter()
            start = demo.warmup(c, wd)
            secs = time.perf_counter() - t0
            losses = [l for _, l in json.load(open(os.path.join(wd, "warmup_losses.json")))]
            row = {"variant": name, "seed": seed, "overrides": overrides, "warmup_s": round(secs, 1),
                   "final_loss": sum(losses[-5:]) / 5, "floor": slip_floor(c, models.load_tokenizer(start)),
                   **breakdown(start, held_out(c, a.problems), c)}
            print(json.dumps(row), flush=True)
            with open(log_path, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
