"""How good a scorer is at telling good samples from bad: the PRM (three aggregations of its step
scores) beside null scorers, at the response level and, on the chain task, step by step against
exact labels. Host numpy only; `eval_runner.report` composes these into an EvalReport.

Shapes: P problems, N samples each, S = P * N samples problem-major (row p * N + j is sample j
of problem p), T tokens. A step is a line of the response (repirl_jax/steps.py); a step's score
is the mean of a per-token value over the step's own tokens.

Scorers (higher = better):
  prm       mean token reward over the whole response (PRMScorer.scores, ALGORITHM.md section 6)
  prm_min   min over steps of the step score: a chain is as good as its worst step
  prm_last  the last step's score (the step holding the answer)
  prm_init  the same PRM as its training started (the run's form and init on the start checkpoint),
            mean token reward; a null: what the PRM's training added (a head_logprob PRM with
            logprob_init=1 starts as the start's log-likelihood, which already ranks)
  logprob   mean per-token log-prob of the response under the policy (untempered, from the
            sampler); a null: how much of the PRM's signal is the policy's own confidence
  length    minus the number of response tokens: shorter is better; a null for length bias
  hash      sha256 of the response text as a number in [0, 1): a random scorer, the chance level
"""
from __future__ import annotations

import hashlib

import numpy as np

from . import evaluate as ev
from . import steps
from .data import chain

SCORERS = {  # name -> what the table says about it
    "prm": "PRM, mean token reward",
    "prm_min": "PRM, min over steps",
    "prm_last": "PRM, last step",
    "prm_init": "null: the PRM untrained (its init)",
    "logprob": "null: policy mean log-prob",
    "length": "null: minus length (shorter is better)",
    "hash": "null: hash of the text (random)",
}


def hash_score(text: str) -> float:
    """The first 8 bytes of sha256(text) as a big-endian integer / 2^64: in [0, 1), the same
    for the same text in every process (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2.0 ** 64


def _fill(x: np.ndarray) -> np.ndarray:
    """NaN entries take the nearest earlier real value (the first real one when none is earlier);
    all NaN -> zeros."""
    ok = ~np.isnan(x)
    if not ok.any():
        return np.zeros_like(x)
    idx = np.maximum.accumulate(np.where(ok, np.arange(len(x)), -1))
    return x[np.where(idx < 0, np.argmax(ok), idx)]


def step_values(values_ST, mask_ST, step_of: list[np.ndarray], texts: list[str]) -> list[np.ndarray]:
    """Per sample, [len(chain.response_lines(text))] mean of `values` over each step's own tokens (steps.step_scores).
    Tokens past the last step (an EOS after a final newline) are left out. A step with no token of
    its own (a merged "\\n\\n" token leaves an empty line) takes the step score before it, so
    thresholds and minima see no NaN."""
    return [_fill(steps.step_scores(np.asarray(v, np.float64)[m], so, len(chain.response_lines(t))))
            for v, m, so, t in zip(values_ST, mask_ST, step_of, texts)]


def _masked_mean(x_ST, mask_ST) -> np.ndarray:
    return (np.where(mask_ST, x_ST, 0.0).sum(1) / np.maximum(mask_ST.sum(1), 1)).astype(np.float64)


def response_scores(texts, mask_ST, N: int, logprobs_ST=None, rewards_ST=None,
                    prm_steps: list[np.ndarray] | None = None, init_rewards_ST=None) -> dict[str, np.ndarray]:
    """name -> [P, N] score of every sample by each scorer that the inputs allow (module doc)."""
    out = {}
    if rewards_ST is not None:
        out["prm"] = _masked_mean(rewards_ST, mask_ST)
    if prm_steps is not None:
        out["prm_min"] = np.array([s.min() for s in prm_steps])
        out["prm_last"] = np.array([s[-1] for s in prm_steps])
    if init_rewards_ST is not None:
        out["prm_init"] = _masked_mean(init_rewards_ST, mask_ST)
    if logprobs_ST is not None:
        out["logprob"] = _masked_mean(logprobs_ST, mask_ST)
    out["length"] = -np.asarray(mask_ST).sum(1).astype(np.float64)
    out["hash"] = np.array([hash_score(t) for t in texts])
    return {k: v.reshape(-1, N) for k, v in out.items()}


def auroc_by_level(scores_PN, correct_PN, levels_P) -> dict:
    """{level: AUROC over that level's samples}: with problems of mixed difficulty, the AUROC
    across all samples also rewards telling easy levels from hard ones; within a level it cannot."""
    s, c, lv = np.asarray(scores_PN), np.asarray(correct_PN, bool), np.asarray(levels_P)
    return {int(k): ev.auroc(s[lv == k], c[lv == k]) for k in np.unique(lv)}


def scorer_metrics(scores_PN, correct_PN, levels_P=None, ns=(1, 2, 4, 8, 16), seed: int = 0):
    """(summary, per_problem, best-of-n curve) of one scorer on the same samples:
    ranking  within-problem pairs ordered right (evaluate.ranking_accuracy), a bootstrap CI over
             problems of the pooled ratio; per problem wins_p / pairs_p (NaN without a pair)
    auroc    over all samples; auroc_within_level: mean over levels (those with both classes) of
             the per-level AUROC, each level also as auroc/steps=k
    best_of_N  correct[p, argmax_j s[p, j]] with a CI; the curve is its exact expectation over
             n-subsets (evaluate.best_of_n_curve)."""
    c = np.asarray(correct_PN, bool)
    N = c.shape[1]
    wins, pairs = ev.ranking_pairs(scores_PN, c)
    bon = ev.best_of_n(scores_PN, c)
    summary = {"ranking": ev.ratio_bootstrap_ci(wins, pairs, seed=seed),
               "auroc": (ev.auroc(np.ravel(scores_PN), c.ravel()),),
               f"best_of_{N}": ev.bootstrap_ci(bon, seed=seed)}
    with np.errstate(invalid="ignore", divide="ignore"):
        per = {"ranking": np.where(pairs > 0, wins / pairs, np.nan), f"best_of_{N}": bon}
    if levels_P is not None:
        by = auroc_by_level(scores_PN, c, levels_P)
        real = [v for v in by.values() if not np.isnan(v)]
        summary["auroc_within_level"] = (float(np.mean(real)) if real else float("nan"),)
        summary |= {f"auroc/steps={k}": (v,) for k, v in by.items()}
    return summary, per, ev.best_of_n_curve(scores_PN, c, ns)


def chain_labels(problems, texts: list[str], N: int) -> list[chain.StepLabels]:
    """Exact step labels of every sample (sample i answers problems[i // N])."""
    return [chain.step_labels(problems[i // N], t) for i, t in enumerate(texts)]


def lucky(correct_PN, labels: list[chain.StepLabels], seed: int = 0):
    """(rate, lo, hi): #{outcome correct, process wrong (first_wrong is not None)} / #{outcome
    correct}, pooled, CI by resampling problems. Near 0: the outcome implies the process, so
    outcome labels already judge steps; high: right answers by luck or by shortcut."""
    c = np.asarray(correct_PN, bool)
    wrong = np.array([lab.first_wrong is not None for lab in labels]).reshape(c.shape)
    return ev.ratio_bootstrap_ci((c & wrong).sum(1), c.sum(1), seed=seed)


def dev_split(P: int, seed: int) -> np.ndarray:
    """[P] bool: a seeded half of the problems (the dev half that picks thresholds)."""
    dev = np.zeros(P, bool)
    dev[np.random.default_rng(seed).permutation(P)[:P // 2]] = True
    return dev


def first_low(scores: np.ndarray) -> int:
    """The first step scored below the mean of the steps' scores, else the lowest (losses.first_low_step)."""
    below = np.nonzero(scores < np.nanmean(scores))[0]
    return int(below[0]) if len(below) else int(np.nanargmin(scores))


def step_metrics(step_scores: list[np.ndarray], labels: list[chain.StepLabels], N: int, seed: int = 0) -> dict:
    """Step-level quality of one scorer's step scores against exact labels, summary entries:
    step_auroc   AUROC of every step's prefix score vs its ok label, over all steps of all samples.
                 The label says whether the whole prefix through step i is right (chain.StepLabels),
                 so the score is the prefix's too: min_{j <= i} of the step scores, the prm_min rule
                 ("a chain is as good as its worst step"). A local step score would call the right
                 steps after a slip good, which the label calls wrong.
    fws_*        ProcessBench first-wrong-step scoring (evaluate.first_wrong_step_metrics):
                 prediction = the first step with score < tau (local and prefix scores give the
                 same first step), None when there is none; tau
                 maximises F1 on a seeded dev half of the problems (evaluate.pick_threshold, as
                 champ_eval does), the metrics are on the other half; fws_tau is that tau.
                 A sample whose steps are all right but stop short of the solution has a label
                 past its last step, which no prediction can hit: it is left out (fws_n counts
                 the samples scored on the test half).
    locate_acc   over the wrong samples whose first wrong step is one of their steps: how often it
                 is the step scored lowest (no threshold: what policy.credit=prm_error / prm_step use);
                 locate_first_acc: how often it is the first step scored below the sample's mean step
                 score (first_low: policy.credit=prm_first); locate_chance, a uniformly random step's rate.
    """
    s = np.concatenate([np.minimum.accumulate(x) for x in step_scores])
    y = np.concatenate([lab.ok for lab in labels]).astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"step_metrics: {s.size} step scores for {y.size} labelled steps")
    out = {"step_auroc": (ev.auroc(s, y),)}
    wrong = [i for i, lab in enumerate(labels) if lab.first_wrong is not None and lab.first_wrong < len(lab.ok)]
    scored = [i for i in wrong if np.isfinite(step_scores[i]).any()]
    hits = [int(np.nanargmin(step_scores[i])) == labels[i].first_wrong for i in scored]
    first = [first_low(step_scores[i]) == labels[i].first_wrong for i in scored]
    out |= {"locate_acc": (float(np.mean(hits)) if hits else float("nan"),),
            "locate_first_acc": (float(np.mean(first)) if first else float("nan"),),
            "locate_chance": (float(np.mean([1 / len(labels[i].ok) for i in wrong])) if wrong else float("nan"),)}
    dev = dev_split(len(labels) // N, seed)
    usable = [i for i, lab in enumerate(labels) if lab.first_wrong is None or lab.first_wrong < len(lab.ok)]
    d = [i for i in usable if dev[i // N]]
    t = [i for i in usable if not dev[i // N]]
    nan = float("nan")
    if not d or not t:  # one problem: nothing to pick tau on
        return out | {k: (nan,) for k in ("fws_f1", "fws_accuracy", "fws_error_acc", "fws_correct_acc",
                                          "fws_tau")} | {"fws_n": (float(len(t)),)}
    tau = ev.pick_threshold([step_scores[i] for i in d], [labels[i].first_wrong for i in d], objective="f1")
    m = ev.first_wrong_step_metrics([ev.first_wrong_step(step_scores[i], tau) for i in t],
                                    [labels[i].first_wrong for i in t])
    return out | {f"fws_{k}": (v,) for k, v in m.items()} | {"fws_tau": (tau,), "fws_n": (float(len(t)),)}


def _located(summary: dict, name: str):
    acc, chance = summary.get(f"{name}/locate_acc"), summary.get(f"{name}/locate_chance")
    first = summary.get(f"{name}/locate_first_acc")
    return None if acc is None else f"{acc[0]:.3f} / {first[0] if first else float('nan'):.3f} ({chance[0]:.3f})"


def scorer_rows(summary: dict, N: int, names=None) -> list[dict]:
    """One table row per scorer present in `summary` (EvalReport.summary or its JSON): ranking,
    AUROC, AUROC within level, best-of-N, step AUROC, first-wrong-step F1, failing step located
    (locate_acc, chance beside it)."""
    def cell(key):
        v = summary.get(key)
        return None if v is None else ev.format_ci(*v) if len(v) == 3 else float(v[0])

    rows = []
    for name in names or SCORERS:
        if f"{name}/ranking" not in summary:
            continue
        rows.append({"scorer": name, "what": SCORERS.get(name, ""),
                     "ranking [95% CI]": cell(f"{name}/ranking"), "AUROC": cell(f"{name}/auroc"),
                     "AUROC within level": cell(f"{name}/auroc_within_level"),
                     f"best-of-{N} [95% CI]": cell(f"{name}/best_of_{N}"),
                     "step AUROC": cell(f"{name}/step_auroc"), "FWS F1": cell(f"{name}/fws_f1"),
                     "failing step located: lowest / first low step (chance)": _located(summary, name)})
    return rows
