"""Comparing runs and methods on the same problems: `repirl compare` (paired bootstrap over the
per-problem results of `repirl eval --out` files), a two-level bootstrap over seeds and problems,
and the majority-vote curve that best-of-N curves are read against."""
from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from . import evaluate as ev


class CompareError(ValueError):
    """Runs that cannot be compared (different problems, missing fields): one line."""


def load_run(path: str) -> dict:
    try:
        with open(path) as f:
            run = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CompareError(f"{path}: cannot be read as JSON: {e}") from None
    if not isinstance(run, dict) or "problem_ids" not in run or "per_problem" not in run:
        raise CompareError(f"{path}: not a `repirl eval --out` file (needs problem_ids and per_problem)")
    ids = run["problem_ids"]
    if len(set(ids)) != len(ids):
        raise CompareError(f"{path}: problem_ids repeat, so results cannot be paired by problem")
    for k, v in run["per_problem"].items():
        if len(v) != len(ids):
            raise CompareError(f"{path}: per_problem[{k!r}] has {len(v)} values for {len(ids)} problems")
    return run


def _aligned(run: dict, ids: Sequence[str]) -> dict:
    """{metric: [len(ids)] float array} of a run's per-problem values in the order of `ids` (NaN where null)."""
    pos = {pid: i for i, pid in enumerate(run["problem_ids"])}
    order = [pos[pid] for pid in ids]
    return {k: np.array([np.nan if v[i] is None else v[i] for i in order], np.float64)
            for k, v in run["per_problem"].items()}


def pool_seeds(runs: Sequence[dict], name: str) -> dict:
    """One run whose per-problem values are the mean over `runs` (seeds of one method, evaluated on
    the same problems, aligned by problem id): comparing pooled runs is the paired bootstrap over
    problems of the per-problem mean over seeds (as benchmarks/ablations.py). A value missing in
    any seed is missing in the pool; a metric missing in any seed is left out."""
    ids = list(runs[0]["problem_ids"])
    if any(set(r["problem_ids"]) != set(ids) for r in runs[1:]):
        raise CompareError(f"{name}: its seeds were evaluated on different problems; pool seeds of one "
                           "evaluation split")
    aligned = [_aligned(r, ids) for r in runs]
    keys = [k for k in aligned[0] if all(k in a for a in aligned[1:])]
    means = {k: np.mean([a[k] for a in aligned], axis=0) for k in keys}
    return {"problem_ids": ids, "per_problem": {k: [None if np.isnan(v) else float(v) for v in m]
                                                for k, m in means.items()}}


def compare_runs(runs: Sequence[dict], names: Sequence[str], n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """One row per (shared metric, run): the run's mean with a bootstrap CI and, for every run but
    the first, the paired difference run - first with its CI and two-sided p-value
    (evaluate.paired_bootstrap). Runs are aligned by problem id, so the files may list the
    problems in any order, but the sets must be equal. A problem where either value is missing
    (null / NaN) is left out of that pair."""
    base_ids = list(runs[0]["problem_ids"])
    aligned = []
    for run, name in zip(runs, names):
        if set(run["problem_ids"]) != set(base_ids):
            only = sorted(set(run["problem_ids"]) ^ set(base_ids))
            raise CompareError(f"{name} and {names[0]} were evaluated on different problems "
                               f"({len(only)} differ, e.g. {only[0]!r}); compare runs on the same problems")
        aligned.append(_aligned(run, base_ids))
    shared = [k for k in aligned[0] if all(k in a for a in aligned[1:])]
    if not shared:
        raise CompareError(f"{', '.join(names)} share no per-problem metric")
    rows = []
    for metric in shared:
        a = aligned[0][metric]
        for name, run in zip(names, aligned):
            x = run[metric]
            ok = ~np.isnan(x)
            row = {"metric": metric, "run": name, "n": int(ok.sum()),
                   "value [95% CI]": ev.format_ci(*ev.bootstrap_ci(x[ok], n_boot, seed)) if ok.any() else ""}
            if run is not aligned[0]:
                both = ok & ~np.isnan(a)
                if both.any():
                    m, lo, hi, p = ev.paired_bootstrap(x[both], a[both], n_boot, seed)
                    row |= {f"diff vs {names[0]} [95% CI]": ev.format_ci(m, lo, hi), "p": p}
            rows.append(row)
    return rows


def compare_files(paths: Sequence[str], n_boot: int = 2000, seed: int = 0) -> str:
    """The markdown table of compare_runs for eval JSON files (named by file name); an argument of
    comma-separated files (one method's seeds) is their pool_seeds."""
    if len(paths) < 2:
        raise CompareError("compare needs at least two eval files")
    names = [",".join(os.path.basename(q) for q in p.split(",")) for p in paths]
    if len(set(names)) < len(names):
        names = list(paths)
    runs = [pool_seeds([load_run(q) for q in p.split(",")], name) if "," in p else load_run(p)
            for p, name in zip(paths, names)]
    rows = compare_runs(runs, names, n_boot, seed)
    cols = ["metric", "run", "n", "value [95% CI]", f"diff vs {names[0]} [95% CI]", "p"]
    return ev.markdown_table(rows, cols)


def seeds_problems_bootstrap(x_SP, n_boot: int = 2000, seed: int = 0, level: float = 0.95):
    """(mean, lo, hi) of a [seeds, problems] array: seeds and problems are resampled
    independently with replacement, mean(x[s*][:, p*]) per resample, percentile interval. Both
    sources of variance count (with one seed it is the bootstrap over problems)."""
    x = np.asarray(x_SP, np.float64)
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"need a non-empty [seeds, problems] array, got shape {x.shape}")
    rng = np.random.default_rng(seed)
    S, P = x.shape
    means = np.empty(n_boot)
    for b in range(n_boot):  # [S, P] per draw is small; a loop keeps memory flat
        means[b] = x[rng.integers(0, S, S)][:, rng.integers(0, P, P)].mean()
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(x.mean()), float(lo), float(hi)


def majority_vote_curve(answers_PN, correct_PN, ns=(1, 2, 4, 8, 16), draws: int = 200,
                        seed: int = 0) -> dict[int, float]:
    """{n: E[maj@n]}: majority vote (evaluate.majority_vote rules: normalised answers, None never
    wins, ties -> the answer seen first in sample order) over n-subsets of the N samples, drawn
    uniformly without replacement, `draws` per problem (n = N: the one full set). A vote is
    correct when a sample with the voted answer is correct; no answer at all is wrong."""
    c = np.asarray(correct_PN, bool)
    P, N = c.shape
    rng = np.random.default_rng(seed)
    # answers -> integer codes per problem (-1: none); an answer is correct if any of its samples is
    codes = np.full((P, N), -1)
    good = []
    for p, row in enumerate(answers_PN):
        table: dict[str, int] = {}
        for j, a in enumerate(row):
            a = ev.normalize_answer(a)
            if a is not None:
                codes[p, j] = table.setdefault(a, len(table))
        g = np.zeros(max(len(table), 1), bool)
        for j in range(N):
            if codes[p, j] >= 0:
                g[codes[p, j]] |= c[p, j]
        good.append(g)
    out = {}
    for n in (n for n in ns if 1 <= n <= N):
        D = 1 if n == N else draws
        idx = np.sort(np.argsort(rng.random((P, D, N)), axis=2)[..., :n], axis=2)  # sorted: sample order
        acc = np.empty(P)
        for p in range(P):
            k = codes[p][idx[p]]  # [D, n]
            K = len(good[p])
            onehot = (k[..., None] == np.arange(K)) & (k[..., None] >= 0)  # [D, n, K]
            counts = onehot.sum(1)
            first = np.where(onehot.any(1), np.argmax(onehot, axis=1), n)  # first position of each answer
            # most votes, then the earliest first occurrence (counts * (n + 1) - first orders both)
            vote = np.argmax(counts * (n + 1) - first, axis=1)
            acc[p] = np.mean(good[p][vote] & (counts.max(1) > 0))
        out[n] = float(acc.mean())
    return out
