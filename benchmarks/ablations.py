"""Ablation sweep on the demo's setup (issue 7): which parts of rePIRL matter, with CIs.

    python -m benchmarks.ablations [--steps 200] [--seeds 3] [--out docs/results.md] [--workdir runs/ablations]
                                   [--variants rloo,repirl,...] [--bon-samples 16] [--set warmup.steps=20 ...]
                                   [--base rloo]

The demo's imitation warm-up (`demo.warmup`) is built once; every variant then runs `loop.run` from
that start on the hard levels with its overrides of `demo.default_config().rl`, once per seed
(train.seed = 0..S-1: rollout sampling and PRM init; the problems and their order stay fixed).
Each run is evaluated by eval_runner.evaluate (the harness of `repirl eval` and the demo): greedy
pass@1 on the held-out split and, for every variant with a PRM, N samples per held-out problem at T=1
from its seed-0 policy, which its PRM and null scorers rank: within-problem ranking, AUROC, step AUROC
against the chain's exact labels, and the best-of-n curve (exact expectation over n-subsets,
evaluate.best_of_n_curve) against majority vote over the same samples (compare.majority_vote_curve),
n = 1, 2, 4, ..., N.

Statistics: pass@1 mean with a 95% CI from a bootstrap that resamples seeds and problems
(compare.seeds_problems_bootstrap); the difference to RLOO by a paired bootstrap over problems of
the per-problem means over seeds. Wall time: `loop.run` per seed (compiles included).

Resumable: everything lives under WORKDIR/<hash of the full config>/ and a finished run (its
final/ export) or evaluation (eval.json) is never redone; an interrupted run resumes from its
checkpoint. The results file says at the top which command generated it and whether the sweep
was run at the demo's full size; below that size it is labelled a toy run.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import logging
import multiprocessing
import os
import shlex
import subprocess
import sys
import threading
import time

import numpy as np

VARIANTS = {  # name -> (overrides of the demo's RL config, what it tests)
    # RLOO and the exact-label variants have no PRM to locate errors with: their credit is "last"
    "rloo": (["prm.loss=none", "policy.credit=last"], "plain outcome RLOO, no PRM"),
    "repirl": ([], "rePIRL: head_logprob PRM started at the trunk's log-likelihood, per-prompt IS weights, "
                   "pseudo-experts, the trunk on its exact likelihood gradient (trunk_loss=sft); the policy's "
                   "outcome credit on the failing step its PRM locates, no process reward (the demo's)"),
    "head_zero_init": (["prm.form=head", "prm.score=mean", "prm.optim.lr=1e-3", "prm.head_scale=10"],
                       "the paper's head: zero-initialised, mean score (the previous demo's PRM)"),
    "logprob_init=0": (["prm.logprob_init=0"], "head_logprob with c starting at 0 (R starts at 0, IS weights on 1/pi)"),
    "prm_lr=1e-4": (["prm.optim.lr=1e-4"], "PRM lr 1e-4 (the demo's since it moved to noisy demonstrations)"),
    "prm_lr=1e-5": (["prm.optim.lr=1e-5"], "a 10x slower PRM (the clean-demonstration demo's)"),
    "prm_lr=3e-4": (["prm.optim.lr=3e-4"], "a 3x faster PRM (one update moves the batch ranking by ~0.01-0.03 at 1e-4)"),
    "prm_minibatches=2": (["prm.minibatches=2"], "two PRM updates per step (half the prompts each): does a better-trained "
                                                 "PRM locate failing steps better?"),
    "prm_minibatches=4": (["prm.minibatches=4"], "four PRM updates per step (a quarter of the prompts each)"),
    "frozen_trunk": (["prm.trunk_lr_scale=0", "prm.optim.lr=1e-3"], "only the head (w, b, c) trains: a probe"),
    "score=mean": (["prm.score=mean"], "mean token reward as the energy"),
    "oracle": (["prm.loss=oracle"], "the ceiling: a head PRM trained on the exact step labels (per-token BCE) as process reward"),
    "exact": (["prm.loss=exact", "prm.score=mean", "policy.credit=last"], "the RL ceiling of a perfect PRM: the exact step labels as process "
                                                     "reward (the fraction of the response on the correct path), no PRM trained"),
    "orm": (["prm.loss=orm"], "outcome-supervised PRM: BCE of the mean score on the verifier's outcome"),
    "prime": (["prm.form=implicit", "prm.loss=prime"], "PRIME: implicit PRM, cross-entropy on outcomes"),
    "discriminator": (["prm.loss=discriminator"], "discriminator PRM (expert vs policy)"),
    "is_scope=batch": (["prm.is_scope=batch"], "one partition function for the whole batch (the old default)"),
    "no_importance_weights": (["prm.importance_weights=false"], "uniform weights over each prompt's negatives"),
    "is_temperature=2": (["prm.is_temperature=2"], "flatter IS weights (log w / 2): the weights collapse to ESS ~1.5 of "
                                                   "each prompt's negatives by step 300 while the reward gap grows"),
    "is_base=policy": (["prm.is_base=policy"],
                       "base measure pi_old (log w = E): E then estimates log p_pos / pi_old, monotone in "
                       "P(correct | tau), and the weights go to each prompt's likely failures, not its rarest"),
    "is_base=policy_c0": (["prm.is_base=policy", "prm.logprob_init=0"],
                          "is_base=policy with E starting at 0 (c = 0: uniform weights at the start, as a "
                          "density ratio starts)"),
    "trunk_loss=repirl": (["prm.trunk_loss=repirl"],
                          "the PRM trunk on the rePIRL loss's importance-sampled gradient, as the head (the demo "
                          "default until 2026-12-07)"),
    "negatives=all": (["prm.negatives=all"],
                      "proposal set = all of a prompt's rollouts (the plain IS estimate of Z(x)): a correct rollout is "
                      "in both sets, so the loss is bounded below where the default's gap can grow without end"),
    "no_pseudo_experts": (["prm.pseudo_experts=false"], "correct rollouts not added to the positives"),
    "alpha_p=0.03": (["policy.alpha_p=0.03"], "rePIRL with a 3x weaker process reward"),
    "process_adv=token": (["policy.process_adv=token"], "token rewards minus the group baseline (the old default)"),
    "process_adv=position": (["policy.process_adv=position"], "token rewards centred per position within the group"),
    "process_adv=last": (["policy.process_adv=last"], "the PRM's trajectory score on the last token, group-baselined"),
    "form_shared": (["prm.form=shared"], "rePIRL with the head on the policy's trunk"),
    "credit=last": (["policy.credit=last"], "the demo's rePIRL with the outcome credit on every token (at its "
                                            "alpha_p 0: RLOO beside a PRM it does not use)"),
    "credit=prm_error": (["policy.credit=prm_error"], "rePIRL whose PRM also locates a failed rollout's failing step "
                                                      "(its lowest-scored): the outcome credit stops there"),
    "credit=exact_error": (["prm.loss=none", "policy.credit=exact_error"],
                           "RLOO whose failed rollouts' outcome credit stops at the exact first wrong step "
                           "(the ceiling of locating it)"),
    "credit=exact_step": (["prm.loss=none", "policy.credit=exact_step"],
                          "RLOO whose failed rollouts' outcome credit sits on the exact first wrong step alone "
                          "(the ceiling of blaming only the slip)"),
    "credit=prm_step": (["policy.credit=prm_step"], "rePIRL whose failed rollouts' outcome credit sits on the step "
                                                    "its PRM scores lowest, alone"),
    "credit=logprob_step": (["prm.loss=none", "policy.credit=logprob_step"],
                            "the null of PRM-located credit: RLOO whose failed rollouts' outcome credit sits on the "
                            "step of lowest mean sampler log-prob, alone (no PRM)"),
    "credit=prm_first": (["policy.credit=prm_first"],
                         "rePIRL whose failed rollouts' outcome credit sits on the first step its PRM scores below "
                         "the rollout's mean step score, alone (the onset of the drop, not the lowest step)"),
    "credit=logprob_first": (["prm.loss=none", "policy.credit=logprob_first"],
                             "the null of credit=prm_first: the same rule on the sampler's log-probs (no PRM)"),
    "credit=random_step": (["prm.loss=none", "policy.credit=random_step"],
                           "the zero-information null of located credit: a failed rollout's outcome credit on one "
                           "uniformly random step of it, alone (no PRM)"),
    # the PRM only as a locator (no process reward): the PRM analogues of credit=exact_error / exact_step
    "prm_error_only": (["policy.credit=prm_error", "policy.alpha_p=0"],
                       "rePIRL's PRM locating the failing step for the outcome credit (stops there), no process reward"),
    "prm_step_only": (["policy.credit=prm_step", "policy.alpha_p=0"],
                      "rePIRL's PRM locating the failing step for the outcome credit (on it alone), no process reward"),
    # half the rollouts: every sampled prompt trains, all-fail groups included (RLOO gives them no
    # signal; a process reward can), against the default that samples 2x and keeps the [0.2, 0.8] band
    "rloo_half": (["prm.loss=none", "policy.credit=last", "data.oversample=1"], "RLOO on half the rollouts: no oversampling for the accuracy filter"),
    "half": (["data.oversample=1"], "rePIRL on half the rollouts: no oversampling for the accuracy filter"),
    "exact_half": (["prm.loss=exact", "prm.score=mean", "policy.credit=last", "data.oversample=1"],
                   "the exact step labels as process reward on half the rollouts (the ceiling of 'half')"),
}
# the demo's size (repirl_jax/demo.py default_config: 200 RL steps, 400 held-out problems); below it
# the file says "toy"
FULL = dict(steps=200, seeds=3, n_test=400, bon=16)
log = logging.getLogger("ablations")


def configure(args):
    from repirl_jax import demo
    from repirl_jax.config import apply_overrides

    c = apply_overrides(demo.default_config(), list(args.set or []))
    return apply_overrides(c, [f"rl.train.steps={args.steps}"])


# the sizes a --set may not lower in a full-size sweep; a --set that changes the testbed instead
# (warmup.slip_rate, the PRM lr) still gives a result
SIZES = ("warmup.steps", "warmup.n_train", "rl.data.n_train", "rl.data.n_test", "rl.data.prompts_per_step",
         "rl.data.samples", "eval_samples")


def smaller_than_demo(c) -> list[str]:
    """The size fields of c below the demo's defaults, as 'field=value (demo: default)'."""
    from repirl_jax import demo

    get = lambda cfg, path: functools.reduce(getattr, path.split("."), cfg)
    d = demo.default_config()
    return [f"{k}={get(c, k)} (demo: {get(d, k)})" for k in SIZES if get(c, k) < get(d, k)]


def run_dir(root: str, variant: str, seed: int) -> str:
    return os.path.join(root, variant, f"seed{seed}")


def train(c, start: str, variant: str, seed: int, root: str) -> dict:
    """loop.run for one (variant, seed) unless its final export exists; {"train_s": wall time}."""
    from repirl_jax import demo, loop

    d = run_dir(root, variant, seed)
    wall = os.path.join(d, "wall.json")
    if os.path.isfile(os.path.join(d, "final", "prm.json")) and os.path.isfile(wall):
        with open(wall) as f:
            return json.load(f)
    cfg = demo.rl_config(c, start, VARIANTS[variant][0] + [f"train.seed={seed}"])
    t0 = time.perf_counter()
    resumed = os.path.isdir(os.path.join(d, "checkpoints"))
    loop.run(cfg, d)
    out = {"train_s": time.perf_counter() - t0, "resumed": resumed}  # a resumed run counts only its last part
    with open(wall, "w") as f:
        json.dump(out, f)
    return out


EVAL_FORMAT = 2  # eval.json written by eval_runner.evaluate; an older cached one is evaluated again


def _eval_path(root: str, variant: str | None, seed: int, name: str) -> tuple[str, str]:
    """(the run's directory, its cached evaluation file `name`); variant None is the warm-up start."""
    d = run_dir(root, variant, seed) if variant else os.path.join(root, "start")
    return d, os.path.join(d, name)


def _cached(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _policy(c, d: str, variant: str | None, start: str, test):
    """(model config, params, tokenizer, encoded prompts, the problems kept) of a run's final policy
    (variant None: the start). All runs share the warm-up's tokenizer, so every run keeps the same
    problems; prompts.encode logs what it drops."""
    from repirl_jax import models
    from repirl_jax.data import prompts

    policy = os.path.join(d, "final", "policy") if variant else start
    pc, params = models.load(policy)
    tok = models.load_tokenizer(policy)
    enc = prompts.encode(test, tok, c.rl.data.max_prompt_len)
    return pc, params, tok, enc, [test[i] for i in enc.kept]


def evaluate(c, start: str, variant: str | None, seed: int, root: str, test, bon: int, workers: int) -> dict:
    """eval_runner.evaluate of one run on the held-out split (greedy pass@1 per problem) and, for
    seed 0 of a PRM variant, its PRM beside the null scorers on `bon` samples per problem at T=1
    (ranking, AUROC, best-of-n vs majority vote, step metrics against the chain's exact labels).
    Cached in eval.json: its summary and curves, plus greedy, bon_prm and bon_maj for the tables."""
    from repirl_jax import eval_runner

    d, path = _eval_path(root, variant, seed, "eval.json")
    cached = _cached(path)
    if cached and cached.get("format") == EVAL_FORMAT:
        return cached
    pc, params, tok, enc, probs = _policy(c, d, variant, start, test)
    has_prm = variant and not {"prm.loss=none", "prm.loss=exact"} & set(VARIANTS[variant][0])  # exact: nothing trained
    sample = has_prm and seed == 0 and bon > 1
    scorer = eval_runner.PRMScorer.load(os.path.join(d, "final"), (pc, params)) if sample else None
    rep = eval_runner.evaluate(pc, params, tok, probs, enc.ids, scorer=scorer, samples=bon if sample else 1,
                               max_new_tokens=c.rl.data.max_new_tokens, temperature=1.0, seed=c.seed, workers=workers)
    js = rep.to_json()
    out = {"format": EVAL_FORMAT, "problem_ids": [p.id for p in probs], "dropped": enc.dropped,
           "greedy": js["per_problem"]["pass@1_greedy"], "summary": js["summary"], "curves": js["curves"],
           "n_samples": rep.n_samples}
    if sample:
        out |= {"bon_prm": out["curves"]["prm/best_of_n"], "bon_maj": out["curves"]["maj"]}
    os.makedirs(d, exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f)
    return out


T1_SAMPLES = 4  # samples per held-out problem at T=1 behind every run's T=1 accuracy


def evaluate_t1(c, start: str, variant: str | None, seed: int, root: str, test, workers: int,
                n: int = T1_SAMPLES) -> list[float]:
    """Per held-out problem, the fraction of n samples at T=1 that the verifier accepts (avg@n): the
    policy's T=1 accuracy. Greedy pass@1 flips a whole problem when the policy's top token changes,
    so it moves in jumps (3-10 points between evals 50 steps apart); T=1 accuracy moves with the
    probabilities themselves. Every run samples with the same seed. Cached in t1.json."""
    from repirl_jax import eval_runner

    d, path = _eval_path(root, variant, seed, "t1.json")
    cached = _cached(path)
    if cached and cached.get("n") == n:
        return cached["avg"]
    pc, params, tok, enc, probs = _policy(c, d, variant, start, test)
    s = eval_runner.rollouts(pc, params, tok, probs, enc.ids, n=n, temperature=1.0,
                             max_new_tokens=c.rl.data.max_new_tokens, seed=c.seed, workers=workers)
    avg = s.correct_PN.mean(1).tolist()
    with open(path, "w") as f:
        json.dump({"n": n, "avg": avg}, f)
    return avg


NULLS = ("logprob", "length", "hash")


def summarize(c, results: dict, walls: dict, base: str = "rloo") -> list[dict]:
    """One row per method: greedy pass@1 over seeds and problems, the paired difference to `base`,
    and from its seed-0 evaluation (eval_runner.evaluate's summary) the PRM's AUROC, within-problem
    ranking, step AUROC, best-of-N against maj@N on the same samples, and the null scorers' ranking."""
    from repirl_jax import compare
    from repirl_jax import evaluate as ev

    rows = []
    per_base = np.mean([r["greedy"] for r in results.get(base, [])], axis=0) if results.get(base) else None
    t1_base = (np.mean([r["t1"] for r in results[base]], axis=0)
               if results.get(base) and all("t1" in r for r in results[base]) else None)
    for name, runs in results.items():
        x = np.array([r["greedy"] for r in runs])
        what = " ".join(VARIANTS[name][0]) if name in VARIANTS else "(warm-up only)"
        if name == "repirl":
            what = (f"(demo default: prm.form={c.rl.prm.form}, prm.trunk_loss={c.rl.prm.trunk_loss}, "
                    f"policy.alpha_p={c.rl.policy.alpha_p}, policy.credit={c.rl.policy.credit})")
        row = {"method": name, "overrides": what,
               "seeds": len(runs),
               "held-out pass@1 (greedy) [95% CI]": ev.format_ci(*compare.seeds_problems_bootstrap(x))}
        if per_base is not None and name != base:
            m, lo, hi, p = ev.paired_bootstrap(x.mean(0), per_base)
            row |= {f"diff vs {base} [95% CI]": ev.format_ci(m, lo, hi), "p": p}
        if all("t1" in r for r in runs):  # T=1 accuracy (avg@4), the steadier metric (evaluate_t1)
            t1 = np.array([r["t1"] for r in runs])
            row["T=1 accuracy [95% CI]"] = ev.format_ci(*compare.seeds_problems_bootstrap(t1))
            if t1_base is not None and name != base:
                m, lo, hi, p = ev.paired_bootstrap(t1.mean(0), t1_base)
                row |= {f"T=1 diff vs {base} [95% CI]": ev.format_ci(m, lo, hi), "T=1 p": p}
        row |= _prm_cells(runs[0].get("summary", {}))
        if walls.get(name):
            row["train s / seed"] = round(float(np.mean([w["train_s"] for w in walls[name]])))
        rows.append(row)
    return rows


def heldout_curves(root: str, seeds: dict[str, list[int]], base: str) -> list[dict]:
    """Held-out greedy pass@1 during training (the loop's own evaluation every train.eval_every
    steps, from each run's metrics.jsonl), the mean over a method's seeds at each evaluated step;
    and the first evaluated step at which that mean reaches `base`'s final mean. Every method draws
    the same rollouts per step (prompts x oversample x samples), so that step over the run's steps
    is the share of base's rollouts it needed (the issue's "RLOO's final accuracy with at most 60%
    of the rollouts")."""
    from repirl_jax.plots import read_metrics

    curves = {}
    for name, ss in seeds.items():
        per_seed = [{r["step"]: r["eval_pass@1"] for r in read_metrics(run_dir(root, name, s)) if "eval_pass@1" in r}
                    for s in ss]
        steps = sorted(set.intersection(*(set(d) for d in per_seed)))
        if steps:  # none: a run shorter than train.eval_every
            curves[name] = {t: float(np.mean([d[t] for d in per_seed])) for t in steps}
    target = curves[base][max(curves[base])] if base in curves else None
    out = []
    for name, cur in curves.items():
        row = {"method": name, "seeds": len(seeds[name]), **{f"step {t}": f"{v:.3f}" for t, v in cur.items()}}
        if target is not None and name != base:
            hit = next((t for t, v in cur.items() if v >= target), None)
            row[f"reaches {base}'s final {target:.3f}"] = (f"step {hit} ({hit / max(cur):.0%})" if hit is not None
                                                            else "no")
        out.append(row)
    return out


def _prm_cells(summary: dict) -> dict:
    """The seed-0 PRM columns present in one evaluation's summary (point values)."""
    n = next((k.split("_")[-1] for k in summary if k.startswith("prm/best_of_")), None)
    cells = {"PRM AUROC (seed 0)": "prm/auroc", "PRM ranking (seed 0)": "prm/ranking",
             "PRM step AUROC": "prm/step_auroc", f"PRM best-of-{n}": f"prm/best_of_{n}", f"maj@{n}": f"maj@{n}",
             **{f"{k} ranking": f"{k}/ranking" for k in NULLS}}
    return {col: summary[key][0] for col, key in cells.items() if key in summary}


def _during_section(during: list[dict], base: str) -> str:
    from repirl_jax import evaluate as ev

    if not during:
        return ""
    cols = list(dict.fromkeys(k for r in during for k in r))
    return f"""
## Held-out greedy pass@1 during training

The loop's own held-out evaluation, mean over each method's seeds (a point estimate: per-problem
results are kept only for the final policies above); the last column: the first evaluated step at
which the mean reaches {base}'s final one, and that step's share of the run (= of {base}'s rollouts).

{ev.markdown_table(during, cols)}
"""


def plot_bon(curves: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, r) in enumerate(curves.items()):
        ns = [int(n) for n in r["bon_prm"]]
        ax.plot(ns, list(r["bon_prm"].values()), "-o", color=f"C{i}", ms=3, label=f"{name}: PRM best-of-n")
        ax.plot(ns, list(r["bon_maj"].values()), "--", color=f"C{i}", alpha=0.6, label=f"{name}: majority vote")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("n samples per problem")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(args, c, rows, curves, n_test: int, root: str, missing=(), during=()) -> str:
    from repirl_jax import evaluate as ev
    from repirl_jax import prm_quality

    smaller = smaller_than_demo(c)
    toy = (args.steps < FULL["steps"] or args.seeds < FULL["seeds"] or n_test < FULL["n_test"]
           or args.bon_samples < FULL["bon"] or bool(smaller))
    left = [v for v in VARIANTS if v not in args.variants.split(",")]
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    banner = ("> **TOY RUN, NOT A RESULT.** Generated below the demo's full size "
              f"(full: --steps {FULL['steps']} --seeds {FULL['seeds']}, {FULL['n_test']} held-out problems, "
              f"{FULL['bon']} best-of-n samples, no --set below the demo's sizes"
              + (f"; here {', '.join(smaller)}" if smaller else "")
              + "). It shows that the sweep runs; "
              "its numbers say nothing about the methods.\n\n" if toy else "")
    if left:  # a subset at full size is a result for the variants it ran, and says which it lacks
        banner += (f"> **{len(VARIANTS) - len(left)} of {len(VARIANTS)} variants** (not run: {', '.join(left)}).\n\n")
    if missing:
        banner += (f"> **PARTIAL: {len(missing)} run(s) not finished yet** ({', '.join(missing)}); "
                   "the sweep writes this file after every run.\n\n")
    N = args.bon_samples
    cols = ["method", "overrides", "seeds", "held-out pass@1 (greedy) [95% CI]", f"diff vs {args.base} [95% CI]", "p",
            "T=1 accuracy [95% CI]", f"T=1 diff vs {args.base} [95% CI]", "T=1 p",
            "PRM AUROC (seed 0)", "PRM ranking (seed 0)", "PRM step AUROC", f"PRM best-of-{N}", f"maj@{N}",
            *[f"{k} ranking" for k in NULLS], "train s / seed"]
    cols = [k for k in cols if any(k in r for r in rows)]  # e.g. no PRM columns before a PRM variant is evaluated
    scorer_rows = [{"method": name, **r} for name, run in curves.items()
                   for r in prm_quality.scorer_rows(run.get("summary", {}), N)]
    ns = [n for n in (1, 2, 4, 8, 16) if n <= args.bon_samples]
    selectors = (("PRM best-of-n", "bon_prm"), ("majority vote", "bon_maj"))
    bon_rows = [{"method": name, "selector": sel, **{f"n={n}": r[key].get(str(n)) for n in ns}}
                for name, r in curves.items() for sel, key in selectors]
    png = os.path.splitext(args.out)[0] + "_bon.png"
    if curves:
        plot_bon(curves, png, ("TOY RUN, NOT A RESULT: " if toy else "") + "PRM best-of-n vs majority vote")
    d = c.rl.data
    text = f"""# Ablations on the demo setup

Generated by `python -m benchmarks.ablations {shlex.join(sys.argv[1:])}` (commit {rev or 'unknown'},
{time.strftime('%Y-%m-%d')}); runs under `{root}`. Do not edit by hand: rerun the command.

{banner}Task: arithmetic chains modulo {d.modulus}, {d.min_steps}-{d.max_steps} steps, after the demo's imitation
warm-up ({c.warmup.steps} steps on {c.warmup.min_steps}-{c.warmup.max_steps}-step chains). Each method:
{args.steps} RL steps of {d.prompts_per_step} prompts x {d.samples} samples from the same start, seeds
0..{args.seeds - 1}. Held-out: {n_test} problems never trained on, greedy pass@1, and T=1 accuracy: the fraction
of {T1_SAMPLES} samples per problem at T=1 that are right (steadier: greedy flips a whole problem when the top token
changes). CI: bootstrap over seeds and problems; diff vs {args.base}: paired bootstrap over problems of the
per-problem mean over seeds (two-sided p).
PRM columns, all from one harness (eval_runner.evaluate) on {N} T=1 samples of the method's seed-0 policy
per held-out problem: AUROC across problems (it also rewards telling easy problems from hard ones); ranking:
the fraction of (correct, wrong) pairs of the same problem that the PRM orders correctly (0.5 = chance; what
best-of-n needs); step AUROC: each step's mean token reward against its exact label (on the correct path or
not); PRM best-of-{N} against maj@{N} on the same samples; and the ranking of null scorers on those samples
(logprob: the policy's mean token log-prob; length: shorter is better; hash: random, the chance level). Wall
time: `loop.run` per seed on this machine, compiles included.

{ev.markdown_table(rows, cols)}
{_during_section(during, args.base)}
## Each PRM beside null scorers

Same samples as above. Ranking with a 95% bootstrap CI over problems; AUROC within level: the mean over
difficulty levels of the AUROC among that level's samples; step AUROC and first-wrong-step (FWS) F1 against
the chain task's exact step labels (ProcessBench-style: the first step scored below a threshold picked on a
seeded half of the problems, F1 on the other half).

{ev.markdown_table(scorer_rows, list(scorer_rows[0])) if scorer_rows else "(no PRM variant run)"}

## Best-of-n with each PRM vs majority vote

{args.bon_samples} samples per held-out problem at T=1 from each method's seed-0 policy. PRM best-of-n: exact
expectation over n-subsets (evaluate.best_of_n_curve, ties to the earlier sample); majority vote: 200 random
n-subsets per problem (compare.majority_vote_curve). Plot (n = {", ".join(map(str, ns))}): `{os.path.basename(png)}`.

{ev.markdown_table(bon_rows, ["method", "selector"] + [f"n={n}" for n in ns]) if bon_rows else "(no PRM variant run)"}

Config (demo.DemoConfig before each method's overrides): `{json.dumps(dataclasses.asdict(c))}`
"""
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=FULL["steps"], help="RL steps per run")
    p.add_argument("--seeds", type=int, default=FULL["seeds"])
    p.add_argument("--out", default="docs/results.md")
    p.add_argument("--workdir", default="runs/ablations")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {', '.join(VARIANTS)}")
    p.add_argument("--bon-samples", type=int, default=FULL["bon"], help="samples per problem for best-of-n curves")
    p.add_argument("--workers", type=int, default=2, help="verifier processes per run")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (separate processes)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="a demo config field, e.g. warmup.steps=20")
    p.add_argument("--base", default="rloo", help="the variant every other one is compared with (paired)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or "rloo" not in variants:
        print(f"ablations: error: variants {unknown} unknown, or rloo (the baseline) missing; "
              f"choose from {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    if args.base not in variants:
        print(f"ablations: error: --base {args.base} is not among --variants {args.variants}", file=sys.stderr)
        return 2
    from repirl_jax import demo, loop
    from repirl_jax.config import apply_overrides

    c = configure(args)
    key = hashlib.sha256(json.dumps(dataclasses.asdict(c), sort_keys=True).encode()).hexdigest()[:10]
    root = os.path.join(args.workdir, key)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "config.json"), "w") as f:
        json.dump(dataclasses.asdict(c), f, indent=1)
    # a variant equal to the demo's default (e.g. its own alpha_p) would repeat the rePIRL row
    same = [v for v in variants if v != "repirl" and apply_overrides(c.rl, VARIANTS[v][0]) == c.rl]
    if same:
        log.info("skipping %s: the same config as repirl (the demo's default)", ", ".join(same))
        variants = [v for v in variants if v not in same]
    start = demo.warmup(c, root)
    _, test = loop.load_problems(c.rl)
    results = {"start": [evaluate(c, start, None, 0, root, test, 0, args.workers)
                         | {"t1": evaluate_t1(c, start, None, 0, root, test, args.workers)}]}
    # seed-major, so an interrupted sweep has every method at seed 0 before any at seed 1
    todo = [(v, s) for s in range(args.seeds) for v in variants]
    done: dict = {}

    def write():  # marked PARTIAL while runs are missing
        walls = {v: [done[v, s][0] for s in range(args.seeds) if (v, s) in done] for v in variants}
        res = dict(results)
        res |= {v: [done[v, s][1] for s in range(args.seeds) if (v, s) in done] for v in variants}
        res = {k: r for k, r in res.items() if r}
        curves = {v: done[v, 0][1] for v in variants if "bon_prm" in done.get((v, 0), (0, {}))[1]}
        missing = [f"{v} seed {s}" for v, s in todo if (v, s) not in done]
        seeds = {v: [s for s in range(args.seeds) if (v, s) in done] for v in variants}
        during = heldout_curves(root, {v: ss for v, ss in seeds.items() if ss}, args.base)
        return write_results(args, c, summarize(c, res, walls, args.base), curves, len(results["start"][0]["greedy"]), root,
                             missing=missing, during=during)

    job = functools.partial(_train_and_evaluate, c, start, root, args.bon_samples, args.workers)
    if args.jobs <= 1:
        for v, s in todo:
            done[v, s] = job(v, s)
            write()
    else:  # spawn: jax is not fork-safe; each worker compiles its own shapes
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=ctx, initializer=exit_with_parent,
                                                    initargs=(os.getpid(),)) as pool:
            futs = {pool.submit(job, v, s): (v, s) for v, s in todo}
            for f in concurrent.futures.as_completed(futs):
                done[futs[f]] = f.result()
                write()
    print(write())
    return 0


def exit_with_parent(parent: int, poll_s: float = 1.0):
    """Pool-worker initializer: once the sweep's process is gone, kill this worker's own children
    (its verifier pool) and exit. Why: a killed parent leaves its workers running the runs already
    queued to them, for hours, sharing the cores with whatever comes next."""
    def watch():
        while os.getppid() == parent:
            time.sleep(poll_s)
        for child in multiprocessing.active_children():
            child.kill()
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def _train_and_evaluate(c, start: str, root: str, bon: int, workers: int, variant: str, seed: int):
    from repirl_jax import loop

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log.info("=== %s seed %d (%s)", variant, seed, run_dir(root, variant, seed))
    wall = train(c, start, variant, seed, root)
    _, test = loop.load_problems(c.rl)
    return wall, (evaluate(c, start, variant, seed, root, test, bon, workers)
                  | {"t1": evaluate_t1(c, start, variant, seed, root, test, workers)})


if __name__ == "__main__":
    sys.exit(main())
