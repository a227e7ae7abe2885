"""Greedy pass@1 of finished ablation runs on a second held-out split (issue 15): problems drawn with
another data.seed, never used to pick a variant (the sweep's held-out split was), prompts that
appear in the training split removed.

    python -m benchmarks.fresh_split ROOT VARIANT[,VARIANT...] [--seeds 3] [--data-seed 7] [--base rloo]

ROOT is a sweep's WORKDIR/<hash> (its config.json gives the task); prints each variant's mean over
seeds with a seeds x problems bootstrap CI and the paired difference to --base.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os

import numpy as np


def main(argv=None) -> int:
    from repirl_jax import compare, demo, loop
    from repirl_jax import evaluate as ev
    from repirl_jax.config import DataConfig, apply_overrides

    p = argparse.ArgumentParser()
    p.add_argument("root")
    p.add_argument("variants")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--data-seed", type=int, default=7)
    p.add_argument("--base", default="rloo")
    args = p.parse_args(argv)
    with open(os.path.join(args.root, "config.json")) as f:
        saved = json.load(f)
    c = demo.default_config()
    rl = dataclasses.replace(c.rl, data=DataConfig(**saved["rl"]["data"]))  # the sweep's task
    train, _ = loop.load_problems(rl)
    _, fresh = loop.load_problems(apply_overrides(rl, [f"data.seed={args.data_seed}"]))
    seen = {q.prompt for q in train}
    fresh = [q for q in fresh if q.prompt not in seen]
    c = dataclasses.replace(c, rl=rl)
    print(f"fresh split: data.seed={args.data_seed}, {len(fresh)} problems not in the training split")
    greedy = {}
    for v in args.variants.split(","):
        greedy[v] = np.array([demo.evaluate_run(c, os.path.join(args.root, v, f"seed{s}", "final", "policy"), None,
                                                fresh, 0).per_problem["pass@1_greedy"] for s in range(args.seeds)])
        m, lo, hi = compare.seeds_problems_bootstrap(greedy[v])
        line = f"{v}: {ev.format_ci(m, lo, hi)} (seeds {', '.join(f'{x:.3f}' for x in greedy[v].mean(1))})"
        if v != args.base and args.base in greedy:
            dm, dlo, dhi, pv = ev.paired_bootstrap(greedy[v].mean(0), greedy[args.base].mean(0))
            line += f"; - {args.base}: {ev.format_ci(dm, dlo, dhi)}, p {pv:.3f}"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
