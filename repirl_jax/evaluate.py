"""Evaluation metrics on the host (numpy only): pass@k, bootstrap CIs, votes, best-of-N, PRM quality.

Shapes: P problems, N samples per problem. `correct_PN` is bool, `scores_PN` float (e.g. the
PRM's mean token reward per trajectory). Every function states its formula and its tie rule;
ties always go to the earliest sample so results do not depend on a random draw.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

# ---------------------------------------------------------------------------- pass@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021):

    1 - C(n-c, k) / C(n, k)  =  1 - prod_{i=n-c+1}^{n} (1 - k / i)

    The product form never builds the huge binomials. 1.0 when n - c < k (every k-subset
    holds a correct sample)."""
    if not (n >= 1 and 0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs n >= 1, 0 <= c <= n, 1 <= k <= n; got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k_per_problem(correct_PN: np.ndarray, k: int) -> np.ndarray:
    """[P] float: pass_at_k(N, sum_j correct[p, j], k) for each problem p."""
    correct_PN = np.asarray(correct_PN, bool)
    n = correct_PN.shape[1]
    return np.array([pass_at_k(n, int(c), k) for c in correct_PN.sum(1)])


def pass_at_k_mean(correct_PN: np.ndarray, k: int) -> float:
    """Mean over problems of the unbiased pass@k."""
    return float(pass_at_k_per_problem(correct_PN, k).mean())


# ---------------------------------------------------------------------------- bootstrap

_BOOT_CHUNK = 256  # resamples drawn at once: bounds memory at 256 x P indices


def _boot_means(x: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot] means of x resampled with replacement (P draws each), from default_rng(seed)."""
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, n_boot, _BOOT_CHUNK):
        idx = rng.integers(0, len(x), size=(min(_BOOT_CHUNK, n_boot - start), len(x)))
        out.append(x[idx].mean(1))
    return np.concatenate(out)


def _check_1d(values, name: str) -> np.ndarray:
    x = np.asarray(values, np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array over problems, got shape {x.shape}")
    return x


def bootstrap_ci(values, n_boot: int = 2000, seed: int = 0, level: float = 0.95):
    """(mean, lo, hi): the sample mean over problems and a percentile-bootstrap interval.

    Resample the P per-problem values with replacement n_boot times; lo, hi are the
    (1-level)/2 and (1+level)/2 quantiles of the resampled means. Same seed, same interval."""
    x = _check_1d(values, "values")
    means = _boot_means(x, n_boot, seed)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(x.mean()), float(lo), float(hi)


def paired_bootstrap(a, b, n_boot: int = 2000, seed: int = 0, level: float = 0.95):
    """(mean_diff, lo, hi, p_value) for per-problem results of two runs on the same problems.

    d_p = a_p - b_p; problems are resampled (pairs kept together) and lo, hi are percentiles of
    the resampled mean(d). Two-sided p-value for mean(d) = 0, from the same resamples with the
    +1 correction (Davison & Hinkley 1997) so it is never exactly 0:
        p = min(1, 2 * (1 + min(#{d* <= 0}, #{d* >= 0})) / (n_boot + 1)).
    Its resolution is 2 / (n_boot + 1)."""
    x, y = _check_1d(a, "a"), _check_1d(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"paired_bootstrap needs the same problems in the same order: "
                         f"len(a)={len(x)} != len(b)={len(y)}")
    d = x - y
    means = _boot_means(d, n_boot, seed)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    tail = min(int(np.sum(means <= 0)), int(np.sum(means >= 0)))
    p = min(1.0, 2 * (1 + tail) / (n_boot + 1))
    return float(d.mean()), float(lo), float(hi), float(p)


# ---------------------------------------------------------------------------- votes


def normalize_answer(s: str | None) -> str | None:
    """Strip whitespace, trailing periods and surrounding $...$, repeated until nothing changes
    (" $5$. " -> "5"). An answer that normalises to "" is no answer (None). No math equivalence:
    "1/2" and "0.5" stay different; the caller's `equal` decides correctness."""
    if s is None:
        return None
    prev = None
    while s != prev:
        prev = s
        s = s.strip().rstrip(".")
        if len(s) >= 2 and s[0] == "$" and s[-1] == "$":
            s = s[1:-1]
    return s or None


def weighted_vote(answers: Sequence[str | None], weights: Sequence[float]) -> str | None:
    """argmax_a sum_{j: norm(answers[j]) = a} weights[j] over non-None normalised answers.

    Ties go to the answer whose first occurrence is earliest. None when no answer is given.
    Weights are summed as given (PRM scores that can be negative should be mapped to >= 0 first,
    e.g. a sigmoid, or a wrong answer with many negative votes loses to one with a single vote)."""
    if len(answers) != len(weights):
        raise ValueError(f"{len(answers)} answers but {len(weights)} weights")
    totals: dict[str, float] = {}  # insertion order = first occurrence
    for a, w in zip(answers, weights):
        a = normalize_answer(a)
        if a is not None:
            totals[a] = totals.get(a, 0.0) + float(w)
    best = None
    for a, t in totals.items():
        if best is None or t > totals[best]:  # strict: an equal later total does not win
            best = a
    return best


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """Most frequent non-None normalised answer; ties -> earliest first occurrence; None if none."""
    return weighted_vote(answers, [1.0] * len(answers))


def _same(a: str, gold: str) -> bool:
    return normalize_answer(a) == normalize_answer(gold)


def maj_at_n(answers_PN, gold_P, equal: Callable[[str, str], bool] = _same, weights_PN=None) -> np.ndarray:
    """[P] bool: the (weighted, when weights_PN is given) vote of each problem's answers is
    correct by equal(voted, gold). A problem with no answers counts as wrong."""
    out = []
    for p, (answers, gold) in enumerate(zip(answers_PN, gold_P)):
        v = majority_vote(answers) if weights_PN is None else weighted_vote(answers, weights_PN[p])
        out.append(v is not None and bool(equal(v, gold)))
    return np.array(out, bool)


# ---------------------------------------------------------------------------- best-of-N


def _check_pn(scores_PN, correct_PN):
    """(float scores with NaN -> -inf so a NaN is never picked over a real score, bool correct)."""
    s, c = np.asarray(scores_PN, np.float64), np.asarray(correct_PN, bool)
    if s.shape != c.shape or s.ndim != 2:
        raise ValueError(f"scores {s.shape} and correct {c.shape} must both be [problems, samples]")
    return np.where(np.isnan(s), -np.inf, s), c


def best_of_n(scores_PN, correct_PN) -> np.ndarray:
    """[P] float: correct[p, argmax_j scores[p, j]], ties -> the first sample; NaN scores lose.

    Oracle scores (= correct) give any-correct (pass@N); constant scores give sample 0."""
    s, c = _check_pn(scores_PN, correct_PN)
    return c[np.arange(len(c)), np.argmax(s, axis=1)].astype(np.float64)


def best_of_n_curve(scores_PN, correct_PN, ns=(1, 2, 4, 8, 16), draws: int | None = None,
                    seed: int = 0) -> dict[int, float]:
    """{n: E[best-of-n accuracy]} over n-subsets of the N samples drawn uniformly without
    replacement, for each n <= N (larger n are left out). Ties inside a subset -> lowest index.

    draws=None (default) gives the exact expectation: rank the N samples by (score desc, index
    asc); the sample at rank r is picked iff it is in the subset and no better-ranked one is, so
        E = sum_r C(N-1-r, n-1) / C(N, n) * correct[rank r].
    With oracle scores this is pass@n; at n = N it equals best_of_n exactly.
    draws=D instead averages D random subsets per problem (seeded), a Monte Carlo estimate."""
    s, c = _check_pn(scores_PN, correct_PN)
    p_count, n_all = s.shape
    rng = np.random.default_rng(seed)
    out = {}
    for n in (n for n in ns if 1 <= n <= n_all):
        if draws is None:
            w = np.array([math.comb(n_all - 1 - r, n - 1) / math.comb(n_all, n) for r in range(n_all)])
            order = np.lexsort((np.broadcast_to(np.arange(n_all), s.shape), -s), axis=1)
            out[n] = float((np.take_along_axis(c, order, 1) @ w).mean())
        else:
            # sorted subset indices keep the lowest-index tie rule of best_of_n
            idx = np.sort(np.argsort(rng.random((p_count, draws, n_all)), axis=2)[..., :n], axis=2)
            pick = np.argmax(np.take_along_axis(s[:, None], idx, 2), axis=2)
            chosen = np.take_along_axis(idx, pick[..., None], 2)[..., 0]
            out[n] = float(np.take_along_axis(c, chosen, 1).mean())
    return out


# ---------------------------------------------------------------------------- PRM quality


def auroc(scores, labels) -> float:
    """P(score of a random positive > score of a random negative) + 1/2 P(equal), by the
    Mann-Whitney rank form: (sum of positives' average ranks - n1 (n1 + 1) / 2) / (n1 n0).
    NaN when either class is empty."""
    s, y = np.asarray(scores, np.float64).ravel(), np.asarray(labels, bool).ravel()
    if s.shape != y.shape or np.isnan(s).any():
        raise ValueError(f"auroc needs equal-length scores ({s.shape}) and labels ({y.shape}), no NaN")
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    _, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    avg_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based average rank of each tie group
    return float((avg_rank[inv.ravel()][y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def ranking_pairs(scores_PN, correct_PN) -> tuple[np.ndarray, np.ndarray]:
    """([P] wins, [P] pairs) per problem: pairs_p = #{(i, j): correct i, wrong j} and
    wins_p = sum over those pairs of [s_i > s_j] + 1/2 [s_i = s_j]."""
    s, c = _check_pn(scores_PN, correct_PN)
    pair = c[:, :, None] & ~c[:, None, :]
    si, sj = s[:, :, None], s[:, None, :]
    wins = np.where(pair, (si > sj) + 0.5 * (si == sj), 0.0).sum((1, 2))
    return wins, pair.sum((1, 2)).astype(np.float64)


def ranking_accuracy(scores_PN, correct_PN) -> float:
    """Fraction of (correct i, wrong j) pairs of the same problem with s_i > s_j, ties 1/2,
    pooled over all problems' pairs (a problem with more mixed pairs weighs more). NaN if none:
    sum_p wins_p / sum_p pairs_p (ranking_pairs)."""
    wins, pairs = ranking_pairs(scores_PN, correct_PN)
    return float(wins.sum() / pairs.sum()) if pairs.sum() else float("nan")


def ratio_bootstrap_ci(num_P, den_P, n_boot: int = 2000, seed: int = 0, level: float = 0.95):
    """(sum num / sum den, lo, hi) with problems resampled with replacement (a pooled ratio such
    as ranking accuracy keeps its pooling in every resample); resamples with sum den = 0 are left
    out. NaN everywhere when sum den = 0."""
    num, den = _check_1d(num_P, "num_P"), _check_1d(den_P, "den_P")
    if num.shape != den.shape:
        raise ValueError(f"ratio_bootstrap_ci: num {num.shape} and den {den.shape} must match")
    if den.sum() == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    ratios = []
    for start in range(0, n_boot, _BOOT_CHUNK):
        idx = rng.integers(0, len(num), size=(min(_BOOT_CHUNK, n_boot - start), len(num)))
        d = den[idx].sum(1)
        ratios.append(num[idx].sum(1)[d > 0] / d[d > 0])
    lo, hi = np.quantile(np.concatenate(ratios), [(1 - level) / 2, (1 + level) / 2])
    return float(num.sum() / den.sum()), float(lo), float(hi)


def first_wrong_step(step_scores: Sequence[float], threshold: float) -> int | None:
    """Index of the first step whose score is < threshold; None if there is none."""
    return next((i for i, x in enumerate(step_scores) if x < threshold), None)


def _fws_metrics(hits_SC: np.ndarray, is_err_S: np.ndarray) -> dict[str, np.ndarray]:
    """ProcessBench metrics per column of hits (exact first-wrong-step matches)."""
    with np.errstate(invalid="ignore", divide="ignore"):  # an empty class gives NaN, as it should
        err = hits_SC[is_err_S].mean(0) if is_err_S.any() else np.full(hits_SC.shape[1], np.nan)
        ok = hits_SC[~is_err_S].mean(0) if (~is_err_S).any() else np.full(hits_SC.shape[1], np.nan)
        f1 = np.where(err + ok > 0, 2 * err * ok / (err + ok), 0.0)
        f1 = np.where(np.isnan(err + ok), np.nan, f1)
    return {"accuracy": hits_SC.mean(0), "error_acc": err, "correct_acc": ok, "f1": f1}


def first_wrong_step_metrics(pred: Sequence[int | None], labels: Sequence[int | None]) -> dict[str, float]:
    """ProcessBench scoring. A sample is a hit when pred == label exactly (an index, or None for
    "all steps correct"). error_acc = hit rate on samples with an error (label not None),
    correct_acc = hit rate on all-correct samples, f1 = 2 e c / (e + c) (NaN if a class is
    empty, 0 if both rates are 0), accuracy = hit rate over all samples."""
    if len(pred) != len(labels) or len(labels) == 0:
        raise ValueError(f"need equal, non-zero numbers of predictions ({len(pred)}) "
                         f"and labels ({len(labels)})")
    hits = np.array([[p == y] for p, y in zip(pred, labels)], bool)
    m = _fws_metrics(hits, np.array([y is not None for y in labels]))
    return {k: float(v[0]) for k, v in m.items()}


def pick_threshold(step_scores_list: Sequence[Sequence[float]], labels: Sequence[int | None],
                   candidates=None, objective: str = "accuracy") -> float:
    """The threshold t maximising metric `objective` (a key of first_wrong_step_metrics) of
    first_wrong_step(scores, t) against labels; ties -> the smallest t.

    Default candidates: midpoints between consecutive distinct step scores plus one value below
    the lowest and one above the highest, which covers every distinct prediction. Exact and
    vectorised: with m_i = min(s_0..s_i), the prediction is j iff m_j < t <= m_{j-1} (m_{-1} = inf),
    and None iff t <= m_{L-1}, so each sample is a hit on one interval lo < t <= hi."""
    if len(step_scores_list) != len(labels) or len(labels) == 0:
        raise ValueError(f"need equal, non-zero numbers of samples ({len(step_scores_list)}) "
                         f"and labels ({len(labels)})")
    if objective not in ("accuracy", "error_acc", "correct_acc", "f1"):
        raise ValueError(f"objective={objective!r}: use accuracy, error_acc, correct_acc or f1")
    lo, hi = np.empty(len(labels)), np.empty(len(labels))
    for i, (steps, y) in enumerate(zip(step_scores_list, labels)):
        m = np.concatenate([[np.inf], np.minimum.accumulate(np.asarray(steps, np.float64))])
        if y is not None and not 0 <= y < len(steps):
            raise ValueError(f"label {y} of sample {i} is not a step index (it has {len(steps)} steps)")
        lo[i], hi[i] = (-np.inf, m[-1]) if y is None else (m[y + 1], m[y])
    if candidates is None:
        u = np.unique(np.concatenate([np.asarray(s, np.float64).ravel() for s in step_scores_list]))
        u = u if u.size else np.zeros(1)  # no steps at all: every threshold predicts None
        candidates = np.concatenate([[u[0] - 1.0], (u[:-1] + u[1:]) / 2, [u[-1] + 1.0]])
    cand = np.sort(np.asarray(candidates, np.float64).ravel())
    hits = (cand[None] > lo[:, None]) & (cand[None] <= hi[:, None])
    score = _fws_metrics(hits, np.array([y is not None for y in labels]))[objective]
    return float(cand[np.nanargmax(score)]) if not np.isnan(score).all() else float(cand[0])


# ---------------------------------------------------------------------------- reporting


def format_ci(mean: float, lo: float, hi: float) -> str:
    """'0.412 [0.35, 0.47]': the mean to 3 decimals, the interval to 2."""
    return f"{mean:.3f} [{lo:.2f}, {hi:.2f}]"


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """GitHub markdown table; floats to 3 decimals, missing/None cells empty, '|' escaped."""
    def cell(v):
        text = "" if v is None else f"{v:.3f}" if isinstance(v, (float, np.floating)) else str(v)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
