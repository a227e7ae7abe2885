"""What a policy's failures are, on the demo's held-out long chains: greedy and T=1 samples, each
response's first wrong step by kind (data.chain.error_kind): sign slips (the habit the noisy
demonstrations teach, which RL can drop), other arithmetic errors (a skill the start lacks), copy
errors, ... Tells whether RL from a start has slips to remove or arithmetic to learn.

    python -m benchmarks.start_errors WORKDIR [WORKDIR ...] [--samples 4] [--problems 200]

reports each of WORKDIR/start, rloo/final/policy and repirl/final/policy that exists.
"""
from __future__ import annotations

import argparse
import collections
import os

from repirl_jax import demo, eval_runner, models, prm_quality
from repirl_jax.data import chain, prompts

STAGES = ("start", "rloo/final/policy", "repirl/final/policy")


def breakdown(path: str, test, c: demo.DemoConfig, samples: int = 4) -> dict:
    """{"greedy": {kind: fraction}, "t1": {kind: fraction}} of the policy at `path` on `test` (the
    evaluation path's rollouts: eval_runner.rollouts)."""
    mc, params = models.load(path)
    tok = models.load_tokenizer(path)
    ids = prompts.encode(test, tok, c.rl.data.max_prompt_len).ids
    out = {}
    for name, T, n in (("greedy", 0.0, 1), ("t1", 1.0, samples)):
        r = eval_runner.rollouts(mc, params, tok, test, ids, n=n, temperature=T, seed=1,
                                 max_new_tokens=c.rl.data.max_new_tokens)
        labels = prm_quality.chain_labels(test, r.texts, n)
        kinds = collections.Counter(chain.error_kind(test[i // n], lab) for i, lab in enumerate(labels))
        out[name] = {k: v / len(r.texts) for k, v in sorted(kinds.items())}
    return out


def held_out(c: demo.DemoConfig, problems: int):
    return demo.problems(c)[1][1][:problems]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("workdirs", nargs="+")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--problems", type=int, default=200)
    a = ap.parse_args()
    c = demo.default_config()
    test = held_out(c, a.problems)
    for wd in a.workdirs:
        for stage in STAGES:
            path = os.path.join(wd, stage)
            if os.path.isfile(os.path.join(path, "config.json")):
                for name, kinds in breakdown(path, test, c, a.samples).items():
                    print(f"{wd} {stage} {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in kinds.items()), flush=True)


if __name__ == "__main__":
    main()
