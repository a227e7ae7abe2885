"""python -m benchmarks.starts WORKDIR ...: the demo's outcome across imitation starts.

Each WORKDIR is a finished `repirl demo` run (e.g. `repirl demo --workdir runs/demo_s1 --set seed=1`: the
warm-up seed, hence the start, changes; the RL data, seeds and held-out problems do not). One row per
start: the warm-up's final loss, held-out greedy pass@1 of the start, RLOO and rePIRL, the paired
differences over the same 400 problems, and rePIRL's PRM beside its nulls (its untrained init, the policy's
log-prob) with best-of-16 against majority@16. Every figure in the demo rests on one start; this is the
variation the 3-seed sweeps (RL seeds, one start) do not see.
"""
import json
import os
import sys

import numpy as np

from repirl_jax import evaluate as ev


def row(wd: str) -> str:
    r = json.load(open(os.path.join(wd, "results.json")))
    loss = np.mean([l for _, l in json.load(open(os.path.join(wd, "warmup_losses.json")))[-5:]])
    g = {m: np.asarray(r[m]["per_problem"]["pass@1_greedy"], float) for m in ("start", "rloo", "repirl")}
    s = r["repirl"]["summary"]
    d = ev.paired_bootstrap(g["repirl"], g["rloo"])
    worst = min(g["rloo"].mean(), g["repirl"].mean()) - g["start"].mean()
    f = lambda k: f"{s[k][0]:.3f}"
    return (f"| {wd} | {loss:.3f} | {g['start'].mean():.3f} | {g['rloo'].mean():.3f} | {g['repirl'].mean():.3f} | "
            f"{d[0]:+.3f} [{d[1]:.2f}, {d[2]:.2f}], p {d[3]:.3f} | {worst:+.3f} | {f('prm/ranking')} / "
            f"{f('prm_init/ranking')} / {f('logprob/ranking')} | {f('prm_best_of_16')} / {f('maj@16')} |")


def main(workdirs):
    print("| start (demo workdir) | warm-up loss (last 5 logs) | start greedy | RLOO | rePIRL | rePIRL - RLOO "
          "[95% CI], p | min(RLOO, rePIRL) - start | PRM ranking / untrained / log-prob | best-of-16 / maj@16 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for wd in workdirs:
        print(row(wd))


if __name__ == "__main__":
    main(sys.argv[1:])
