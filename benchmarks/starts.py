"""python -m benchmarks.starts WORKDIR ...: the demo's outcome across imitation starts.

Each WORKDIR is a finished `repirl demo` run (e.g. `repirl demo --workdir runs/demo_s1 --set seed=1`: the
warm-up seed, hence the start, changes, and the evaluation's sampling seed with it; the RL data and seed and the held-out
problems do not). One row per
start: the warm-up's final loss, what the start's T=1 samples fail on (data.chain.error_kind), held-out greedy pass@1 and T=1 accuracy (avg@16) of the start, RLOO and
rePIRL, the paired differences over the same 400 problems, and rePIRL's PRM beside its nulls (its untrained init, the policy's
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
    cells = []
    for metric in ("pass@1_greedy", "avg@16"):  # greedy, and T=1 accuracy (what RL optimises)
        g = {m: np.asarray(r[m]["per_problem"][metric], float) for m in ("start", "rloo", "repirl")}
        d = ev.paired_bootstrap(g["repirl"], g["rloo"])
        cells += [" / ".join(f"{g[m].mean():.3f}" for m in ("start", "rloo", "repirl")),
                  f"{d[0]:+.3f} [{d[1]:.2f}, {d[2]:.2f}], p {d[3]:.3f}"]
    e = r["start"]["summary"]  # what the start's T=1 samples fail on (a demo report since data.chain.error_kind)
    kinds = " / ".join(f"{e[f'errors/{k}'][0]:.2f}" for k in ("slip", "arithmetic", "copy")) if "errors/slip" in e else ""
    s = r["repirl"]["summary"]
    f = lambda k: f"{s[k][0]:.3f}"
    return (f"| {wd} | {loss:.3f} | {kinds} | {' | '.join(cells)} | {f('prm/ranking')} / {f('prm_init/ranking')} / "
            f"{f('logprob/ranking')} | {f('prm/step_auroc')} | {f('prm_best_of_16')} / {f('maj@16')} |")


def main(workdirs):
    print("| start (demo workdir) | warm-up loss (last 5 logs) | start's T=1 samples: first wrong step a slip / "
          "arithmetic / copy error | greedy: start / RLOO / rePIRL | rePIRL - RLOO "
          "[95% CI], p | T=1: start / RLOO / rePIRL | rePIRL - RLOO (T=1) | PRM ranking / untrained / log-prob | "
          "PRM step AUROC | best-of-16 / maj@16 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for wd in workdirs:
        print(row(wd))
    # these starts together: the per-problem difference averaged over the starts, bootstrapped over the
    # problems (a fixed effect of these starts: with a handful of starts, the sign per start says more)
    for metric, what in (("pass@1_greedy", "greedy"), ("avg@16", "T=1")):
        d = []
        for wd in workdirs:
            r = json.load(open(os.path.join(wd, "results.json")))
            d.append(np.subtract(r["repirl"]["per_problem"][metric], r["rloo"]["per_problem"][metric]))
        m, lo, hi, p = ev.paired_bootstrap(np.mean(d, 0), np.zeros(len(d[0])))
        print(f"\n{what}, rePIRL - RLOO over these {len(d)} starts: {m:+.3f} [{lo:.2f}, {hi:.2f}], p {p:.3f}; "
              f"above RLOO on {sum(x.mean() > 0 for x in d)}, below on {sum(x.mean() < 0 for x in d)}")


if __name__ == "__main__":
    main(sys.argv[1:])
