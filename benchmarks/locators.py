"""Which rule locates a failed sample's first wrong step best, given one trained rePIRL run?

    python -m benchmarks.locators RUN_DIR [--start START_DIR] [--problems 300] [--samples 16] [--set field=value ...]

RUN_DIR is a `loop.run` workdir of the demo's chain setup (RUN_DIR/final/{policy, prm, prm_head.npz}).
Samples `samples` responses per problem at T=1 from the run's policy, scores them, and over the failed
samples whose first wrong step is one of their steps reports how often each rule's located step is
that step (chance: a uniformly random step). A step's value is the mean over its own tokens of:

  prm      the PRM's token reward r_t (head_logprob: w . h_t + b + c log p_trunk(a_t))
  head     w . h_t + b alone (without the c log p_trunk term)
  trunk    log p_trunk(a_t): the PRM trunk's own log-likelihood, as trained
  ratio    r_t - log pi(a_t): the energy relative to the policy
  logprob  the policy's log-prob (the null of policy.credit=logprob_*)
  init     the same PRM untrained (--start: the start checkpoint's log-likelihood for head_logprob)
and the rules: `lowest` (argmin: policy.credit=prm_step), `first` (the first step below the sample's
mean step score: prm_quality.first_low, policy.credit=prm_first); for the PRM also the summed reward's
argmin, the first step below mean - k std, the first within d std of the lowest, the mean mass
that a softmax(-z / tau) over standardised step scores puts on the first wrong step, and where the
lowest step falls: before the first wrong step, at it, or after it (_last: on the answer line).
Exploration tool: what it prints decides which locator the RL sweep tries. It samples a dev split
(problems drawn with --data-seed, 11 by default; neither the sweep's held-out split, data.seed 1, nor
fresh_split's, 7; prompts of the training split removed), so picking a rule tunes on neither.
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np


def step_stats(v_T, step_of_T, n_steps):
    sums = np.bincount(step_of_T, weights=v_T, minlength=n_steps)[:n_steps]
    counts = np.bincount(step_of_T, minlength=n_steps)[:n_steps]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan), np.where(counts > 0, sums, np.nan)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run")
    p.add_argument("--start", default="", help="the start checkpoint: adds the untrained PRM (init)")
    p.add_argument("--problems", type=int, default=300)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--data-seed", type=int, default=11)
    args = p.parse_args(argv)
    import jax.numpy as jnp

    from repirl_jax import demo, eval_runner, loop, models, prm_quality, steps
    from repirl_jax.config import apply_overrides
    from repirl_jax.data import chain, prompts

    c = apply_overrides(demo.default_config(), args.set)
    train, _ = loop.load_problems(c.rl)
    _, dev = loop.load_problems(apply_overrides(c.rl, [f"data.seed={args.data_seed}"]))
    seen = {q.prompt for q in train}
    test = [q for q in dev if q.prompt not in seen][:args.problems]
    pol = f"{args.run}/final/policy"
    pc, params = models.load(pol)
    tok = models.load_tokenizer(pol)
    enc = prompts.encode(test, tok, c.rl.data.max_prompt_len)
    probs = [test[i] for i in enc.kept]
    N = args.samples
    scorer = eval_runner.PRMScorer.load(f"{args.run}/final", (pc, params))
    s = eval_runner.rollouts(pc, params, tok, probs, enc.ids, n=N, temperature=1.0,
                             max_new_tokens=c.rl.data.max_new_tokens, seed=c.seed)
    r = eval_runner._token_rewards(scorer, enc.ids, s, N, 0)
    cval = float(scorer.params["head"].get("c", 0.0))
    head_only = dataclasses.replace(scorer, params={**scorer.params, "head": {**scorer.params["head"],
                                                                             "c": jnp.zeros(())}})
    rh = eval_runner._token_rewards(head_only, enc.ids, s, N, 0)
    trunk_lp = (r - rh) / cval if cval else np.zeros_like(r)
    labels = prm_quality.chain_labels(probs, s.texts, N)
    values = {"prm": r, "head": rh, "trunk": trunk_lp, "ratio": r - s.logprobs, "logprob": s.logprobs}
    if args.start:
        init = scorer.initial(models.load(args.start))
        values["init"] = eval_runner._token_rewards(init, enc.ids, s, N, 0)
    KS, DS, TAUS = (0.0, 0.25, 0.5, 1.0), (0.5, 1.0, 1.5), (0.25, 0.5, 1.0)
    hits = {f"{k}_{rule}": [] for k in values for rule in ("lowest", "first")}
    hits |= {"prm_sum_lowest": [], **{f"prm_below_{k}": [] for k in KS}, **{f"prm_near_min_{d}": [] for d in DS}}
    soft = {t: [] for t in TAUS}
    where = {k: [] for k in ("prm", "logprob", "init")}  # where the lowest step falls: the slip's step or which side
    chance = []
    for i, lab in enumerate(labels):
        if s.correct_PN.ravel()[i] or lab.first_wrong is None or lab.first_wrong >= len(lab.ok):
            continue
        m = s.mask[i]
        so = steps.token_steps(tok, s.tokens[i][m])
        n = len(chain.response_lines(s.texts[i]))
        keep = so < n
        st = {k: step_stats(v[i][m][keep], so[keep], n) for k, v in values.items()}
        if not np.isfinite(st["prm"][0]).any():
            continue
        fw = lab.first_wrong
        chance.append(1 / n)
        for k, (mean, _) in st.items():
            hits[f"{k}_lowest"].append(int(np.nanargmin(mean)) == fw)
            hits[f"{k}_first"].append(prm_quality.first_low(mean) == fw)
        hits["prm_sum_lowest"].append(int(np.nanargmin(st["prm"][1])) == fw)
        for k in where:
            if k in st:
                low = int(np.nanargmin(st[k][0]))
                where[k].append(("before" if low < fw else "at" if low == fw else "after") + ("_last" if low == n - 1 else ""))
        mean = st["prm"][0]
        fin = np.where(np.isfinite(mean), mean, np.inf)
        z = (fin - np.nanmean(mean)) / (np.nanstd(mean) + 1e-6)
        first = lambda sel: (int(np.nonzero(sel)[0][0]) if sel.any() else int(np.argmin(fin))) == fw
        for k in KS:
            hits[f"prm_below_{k}"].append(first(z < -k))
        for d in DS:
            hits[f"prm_near_min_{d}"].append(first(z <= z.min() + d))
        for t in TAUS:
            q = np.exp(-(z - z.min()) / t) * np.isfinite(z)
            soft[t].append(q[fw] / q.sum())
    out = {"failed_samples": len(chance), "chance": float(np.mean(chance)), "c": cval,
           **{f"locate/{k}": float(np.mean(v)) for k, v in hits.items()},
           **{f"soft_mass/tau={t}": float(np.mean(v)) for t, v in soft.items()},
           **{f"lowest_step/{k}/{w}": float(np.mean([x == w for x in v])) for k, v in where.items() if v
              for w in ("before", "at", "after", "after_last", "at_last")}}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
