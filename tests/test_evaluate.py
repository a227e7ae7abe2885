"""Each metric of evaluate.py against hand-computed numbers or a slow brute-force reference."""
import itertools
import math

import numpy as np
import pytest

from repirl_jax import evaluate as ev

# ---------------------------------------------------------------------------- pass@k


def ref_pass_at_k(n, c, k):
    """Fraction of the k-subsets of n samples (the first c correct) holding a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n,c,k,want", [(5, 2, 2, 0.7), (10, 3, 1, 0.3), (10, 3, 4, 1 - 35 / 210),
                                        (4, 4, 1, 1.0), (4, 0, 3, 0.0), (5, 3, 3, 1.0), (1, 1, 1, 1.0)])
def test_pass_at_k_hand(n, c, k, want):
    assert ev.pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12)


def test_pass_at_k_matches_subset_enumeration():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert ev.pass_at_k(n, c, k) == pytest.approx(ref_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_large_n_is_stable():
    # C(n-1, k) / C(n, k) = (n - k) / n, so one correct of 200 at k = 100 is exactly 1/2;
    # the binomials themselves (~1e58) would overflow float32 and lose digits in float64.
    assert ev.pass_at_k(200, 1, 100) == pytest.approx(0.5, abs=1e-12)
    assert ev.pass_at_k(2000, 1, 1) == pytest.approx(1 / 2000, rel=1e-12)


@pytest.mark.parametrize("n,c,k", [(0, 0, 1), (4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError, match="pass_at_k"):
        ev.pass_at_k(n, c, k)


def test_pass_at_k_mean_hand():
    correct = np.array([[1, 0, 0, 0], [1, 1, 0, 0]], bool)
    # k=1: per-problem accuracy 1/4 and 1/2; k=2: 1 - C(3,2)/C(4,2) = 1/2 and 1 - 1/6 = 5/6
    assert ev.pass_at_k_mean(correct, 1) == pytest.approx(0.375)
    np.testing.assert_allclose(ev.pass_at_k_per_problem(correct, 2), [0.5, 5 / 6])
    assert ev.pass_at_k_mean(correct, 2) == pytest.approx((0.5 + 5 / 6) / 2)
    assert ev.pass_at_k_mean(correct, 4) == pytest.approx(1.0)


# ---------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_constant_values_give_a_point():
    assert ev.bootstrap_ci([0.3] * 10) == pytest.approx((0.3, 0.3, 0.3))


def test_bootstrap_ci_two_values_hand():
    # means of 2 resampled values from {0, 1} are 0, 1/2, 1 with P 1/4, 1/2, 1/4: the central
    # 95% spans the extremes (each has ~500 of the 2000 draws, far beyond the 2.5% tails).
    assert ev.bootstrap_ci([0.0, 1.0]) == (0.5, 0.0, 1.0)


def test_bootstrap_ci_one_in_four_hand():
    # mean of 4 draws from {0,0,0,1} = Binomial(4, 1/4) / 4: P(mean <= 0.5) = 0.949 < 0.975 <
    # P(mean <= 0.75) = 0.996 and P(mean = 0) = 0.316 > 0.025, so the interval is [0, 0.75].
    assert ev.bootstrap_ci([0, 0, 0, 1]) == (0.25, 0.0, 0.75)


def test_bootstrap_ci_deterministic_and_near_normal_interval():
    x = (np.random.default_rng(1).random(400) < 0.3).astype(float)
    mean, lo, hi = ev.bootstrap_ci(x, seed=7)
    assert (mean, lo, hi) == ev.bootstrap_ci(x, seed=7)
    u = np.random.default_rng(1).random(50)  # continuous: another seed moves the quantiles
    assert ev.bootstrap_ci(u, seed=7) == ev.bootstrap_ci(u, seed=7) != ev.bootstrap_ci(u, seed=8)
    half = 1.96 * math.sqrt(mean * (1 - mean) / len(x))  # Wald interval half-width
    assert lo == pytest.approx(mean - half, abs=0.01) and hi == pytest.approx(mean + half, abs=0.01)
    lo90, hi90 = ev.bootstrap_ci(x, seed=7, level=0.9)[1:]
    assert lo < lo90 < mean < hi90 < hi


def test_bootstrap_ci_rejects_empty():
    with pytest.raises(ValueError, match="non-empty"):
        ev.bootstrap_ci([])


def test_paired_bootstrap_length_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"same problems in the same order.*len\(a\)=3 != len\(b\)=2"):
        ev.paired_bootstrap([1, 0, 1], [1, 0])


def test_paired_bootstrap_hand_cases():
    assert ev.paired_bootstrap([1, 0, 1, 1], [1, 0, 1, 1]) == (0.0, 0.0, 0.0, 1.0)
    # every problem improved: every resampled mean is 1, so p is its floor 2 / (n_boot + 1)
    assert ev.paired_bootstrap([1.0] * 5, [0.0] * 5, n_boot=999) == (1.0, 1.0, 1.0, 2 / 1000)


def test_paired_bootstrap_equals_bootstrap_of_differences_and_is_antisymmetric():
    rng = np.random.default_rng(3)
    a, b = rng.random(50) < 0.6, rng.random(50) < 0.4
    d, lo, hi, p = ev.paired_bootstrap(a, b, seed=5)
    assert (d, lo, hi) == ev.bootstrap_ci(a.astype(float) - b, seed=5)
    d2, lo2, hi2, p2 = ev.paired_bootstrap(b, a, seed=5)
    assert (d2, lo2, hi2, p2) == pytest.approx((-d, -hi, -lo, p))


def test_paired_bootstrap_p_value_large_for_noise_small_for_a_shift():
    assert ev.paired_bootstrap([1, 0] * 50, [0, 1] * 50)[3] > 0.5  # mean diff exactly 0
    rng = np.random.default_rng(0)
    b = rng.random(300) < 0.4
    a = b | (rng.random(300) < 0.3)  # a fixes ~18% of the problems b gets wrong, breaks none
    assert ev.paired_bootstrap(a, b)[3] < 0.01


# ---------------------------------------------------------------------------- votes


@pytest.mark.parametrize("raw,want", [(" $5$. ", "5"), ("3.5", "3.5"), ("12.", "12"), ("$$x$$", "x"),
                                      ("$5.$", "5"), ("\\frac{1}{2}", "\\frac{1}{2}"), ("  ", None),
                                      ("$ $", None), (None, None), ("$", "$")])
def test_normalize_answer(raw, want):
    assert ev.normalize_answer(raw) == want


def test_majority_vote_ties_go_to_the_earliest_first_occurrence():
    assert ev.majority_vote(["a", "b", "b", "a"]) == "a"
    assert ev.majority_vote(["b", "a", "a", "b"]) == "b"
    assert ev.majority_vote(["c", "a", "b", "b", "a"]) == "a"  # a, b tied at 2; a seen first


def test_majority_vote_counts_normalised_answers_and_skips_none():
    assert ev.majority_vote(["a", None, "b", "b"]) == "b"
    assert ev.majority_vote([" 5.", "$5$", "6", "6."]) == "5"  # 5 x2 tied with 6 x2; 5 first
    assert ev.majority_vote([None, None, None, "7"]) == "7"
    assert ev.majority_vote([None, None]) is None and ev.majority_vote([]) is None
    assert ev.majority_vote(["", "  ", "$$"]) is None


def test_weighted_vote_hand():
    assert ev.weighted_vote(["a", "b", "b"], [0.9, 0.4, 0.4]) == "a"  # 0.9 > 0.8
    assert ev.weighted_vote(["a", "b", "b"], [0.7, 0.4, 0.4]) == "b"  # 0.7 < 0.8
    assert ev.weighted_vote(["a", "b"], [0.5, 0.5]) == "a"
    assert ev.weighted_vote(["b", "a", "a", "b"], [0.25, 0.5, 0.25, 0.5]) == "b"  # 0.75 each
    assert ev.weighted_vote([None, "a"], [10.0, 0.1]) == "a"
    assert ev.weighted_vote([None], [1.0]) is None
    with pytest.raises(ValueError, match="2 answers but 1 weights"):
        ev.weighted_vote(["a", "b"], [1.0])


def test_maj_at_n():
    answers = [["1", "2", "2"], ["3", None, None], [None, None, None], ["4", "9", "9"]]
    np.testing.assert_array_equal(ev.maj_at_n(answers, ["2", "4", "1", "$4$"]), [True, False, False, False])
    weights = [[5, 1, 1], [1, 1, 1], [1, 1, 1], [3, 1, 1]]
    np.testing.assert_array_equal(ev.maj_at_n(answers, ["2", "3", "1", "4"], weights_PN=weights),
                                  [False, True, False, True])
    # a caller-supplied equivalence: the vote stays on strings, correctness uses `equal`
    as_float = lambda a, g: float(a) == float(g)  # noqa: E731
    np.testing.assert_array_equal(ev.maj_at_n([["0.50", "3"]], ["0.5"], equal=as_float), [True])


# ---------------------------------------------------------------------------- best-of-N


def test_best_of_n_hand_and_ties_to_first():
    scores = [[0.1, 0.9, 0.5], [0.3, 0.3, 0.2]]
    correct = [[0, 1, 0], [0, 1, 1]]
    np.testing.assert_array_equal(ev.best_of_n(scores, correct), [1.0, 0.0])


def test_best_of_n_nan_scores_are_never_picked_over_real_ones():
    nan = float("nan")
    np.testing.assert_array_equal(ev.best_of_n([[nan, 0.1], [nan, nan]], [[1, 0], [0, 1]]), [0.0, 0.0])


def test_best_of_n_oracle_is_pass_at_n_and_constant_is_first_sample():
    correct = np.random.default_rng(0).random((64, 8)) < 0.3
    assert correct.any(1).mean() < 1  # some problems have no correct sample
    oracle = ev.best_of_n(correct.astype(float), correct)
    np.testing.assert_array_equal(oracle, correct.any(1))
    np.testing.assert_allclose(oracle, ev.pass_at_k_per_problem(correct, 8))
    np.testing.assert_array_equal(ev.best_of_n(np.full(correct.shape, 0.7), correct), correct[:, 0])


def test_best_of_n_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="problems, samples"):
        ev.best_of_n(np.zeros((2, 3)), np.zeros((2, 4), bool))


def ref_best_of_n_curve(scores, correct, n):
    """Average over every n-subset of each problem's samples of the picked sample's correctness."""
    out = []
    for s, c in zip(scores, correct):
        subsets = list(itertools.combinations(range(len(s)), n))
        out.append(np.mean([c[max(sub, key=lambda j: (s[j], -j))] for sub in subsets]))
    return float(np.mean(out))


def _scores_with_ties(rng, shape):
    return np.round(rng.random(shape), 1)  # ~10 distinct values: ties are common


def test_best_of_n_curve_exact_matches_subset_enumeration():
    rng = np.random.default_rng(2)
    scores, correct = _scores_with_ties(rng, (20, 6)), rng.random((20, 6)) < 0.4
    curve = ev.best_of_n_curve(scores, correct, ns=(1, 2, 3, 4, 5, 6, 8, 16))
    assert sorted(curve) == [1, 2, 3, 4, 5, 6]  # n > N left out
    for n, v in curve.items():
        assert v == pytest.approx(ref_best_of_n_curve(scores, correct, n), abs=1e-12)
    assert curve[6] == ev.best_of_n(scores, correct).mean()  # exactly


def test_best_of_n_curve_oracle_is_pass_at_k_and_constant_hand():
    rng = np.random.default_rng(4)
    correct = rng.random((30, 16)) < 0.2
    curve = ev.best_of_n_curve(correct.astype(float), correct)
    for n in (1, 2, 4, 8, 16):
        assert curve[n] == pytest.approx(ev.pass_at_k_mean(correct, n), abs=1e-12)
    # constant scores pick the lowest index of the subset: n=1 -> either sample, n=2 -> sample 0
    assert ev.best_of_n_curve([[0.0, 0.0]], [[0, 1]], ns=(1, 2)) == {1: 0.5, 2: 0.0}


def test_best_of_n_curve_monte_carlo_is_seeded_and_near_exact():
    rng = np.random.default_rng(6)
    scores, correct = _scores_with_ties(rng, (40, 8)), rng.random((40, 8)) < 0.5
    exact = ev.best_of_n_curve(scores, correct, ns=(1, 2, 4, 8))
    mc = ev.best_of_n_curve(scores, correct, ns=(1, 2, 4, 8), draws=2000, seed=1)
    assert mc == ev.best_of_n_curve(scores, correct, ns=(1, 2, 4, 8), draws=2000, seed=1)
    for n in exact:
        assert mc[n] == pytest.approx(exact[n], abs=0.01)
    assert mc[8] == exact[8]  # the only 8-subset is all samples


# ---------------------------------------------------------------------------- PRM quality


def ref_auroc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    return sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))


def test_auroc_hand_cases():
    assert ev.auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert ev.auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert ev.auroc([0.3] * 5, [0, 1, 0, 1, 1]) == 0.5
    # positives {2, 3} vs negatives {1, 2}: 1 + 1/2 + 1 + 1 over 4 pairs
    assert ev.auroc([1, 2, 2, 3], [0, 1, 0, 1]) == 0.875
    assert math.isnan(ev.auroc([0.1, 0.2], [1, 1])) and math.isnan(ev.auroc([0.1, 0.2], [0, 0]))
    with pytest.raises(ValueError, match="no NaN"):
        ev.auroc([float("nan"), 0.1], [0, 1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_pairwise_reference_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(300) < 0.35
    scores = rng.integers(0, 6, 300) + 0.8 * labels  # informative, with many exact ties
    assert ev.auroc(scores, labels) == pytest.approx(ref_auroc(scores, labels), abs=1e-12)


def ref_ranking_accuracy(scores, correct):
    num = den = 0.0
    for s, c in zip(scores, correct):
        for i, j in itertools.product(range(len(s)), repeat=2):
            if c[i] and not c[j]:
                num += (s[i] > s[j]) + 0.5 * (s[i] == s[j])
                den += 1
    return num / den


def test_ranking_accuracy_hand_and_reference():
    # problem 1: 0.9 beats 0.1 and 0.5; problem 2: tie with 0.2 (1/2), loses to 0.7 -> 2.5 / 4
    scores, correct = [[0.9, 0.1, 0.5], [0.2, 0.2, 0.7]], [[1, 0, 0], [1, 0, 0]]
    assert ev.ranking_accuracy(scores, correct) == 0.625
    # pairs are within a problem: perfect inside each problem though problem 2's scores are lower
    assert ev.ranking_accuracy([[0.9, 0.8], [0.2, 0.1]], [[1, 0], [1, 0]]) == 1.0
    assert math.isnan(ev.ranking_accuracy([[0.1, 0.2]], [[1, 1]]))
    rng = np.random.default_rng(8)
    scores, correct = _scores_with_ties(rng, (25, 7)), rng.random((25, 7)) < 0.5
    want = ref_ranking_accuracy(scores, correct)
    assert ev.ranking_accuracy(scores, correct) == pytest.approx(want, abs=1e-12)


def test_ranking_pairs_per_problem_hand():
    wins, pairs = ev.ranking_pairs([[0.9, 0.1, 0.5], [0.2, 0.2, 0.7], [0.1, 0.2, 0.3]], [[1, 0, 0], [1, 0, 0], [1, 1, 1]])
    np.testing.assert_array_equal(wins, [2, 0.5, 0])  # problem 1: a tie counts 1/2; problem 2: no wrong sample
    np.testing.assert_array_equal(pairs, [2, 2, 0])


def test_ratio_bootstrap_ci_pools_and_resamples_problems():
    num, den = np.array([2.0, 0.5, 0.0]), np.array([2.0, 2.0, 0.0])
    m, lo, hi = ev.ratio_bootstrap_ci(num, den, n_boot=500, seed=1)
    assert m == 2.5 / 4 and 0.25 - 1e-12 <= lo <= m <= hi <= 1.0  # resamples: 0.25 (only p1), 1 (only p0)
    assert ev.ratio_bootstrap_ci(num, den, n_boot=500, seed=1) == (m, lo, hi)
    assert ev.ratio_bootstrap_ci([1.0, 3.0], [2.0, 6.0]) == (0.5, 0.5, 0.5)  # every resample has ratio 1/2
    assert all(math.isnan(x) for x in ev.ratio_bootstrap_ci([0.0], [0.0]))
    with pytest.raises(ValueError, match="must match"):
        ev.ratio_bootstrap_ci([1.0], [1.0, 2.0])


def test_first_wrong_step():
    s = [0.9, 0.8, 0.3, 0.1]
    assert ev.first_wrong_step(s, 0.5) == 2
    assert ev.first_wrong_step(s, 0.85) == 1
    assert ev.first_wrong_step(s, 0.8) == 2  # a score equal to the threshold is not wrong
    assert ev.first_wrong_step(s, 0.05) is None
    assert ev.first_wrong_step([], 0.5) is None


def test_first_wrong_step_metrics_hand():
    pred, labels = [1, None, 2, None, 0], [1, 2, None, None, 0]
    m = ev.first_wrong_step_metrics(pred, labels)
    # erroneous samples 0, 1, 4: hits on 0 and 4 -> 2/3; correct samples 2, 3: hit on 3 -> 1/2
    assert m == pytest.approx({"accuracy": 0.6, "error_acc": 2 / 3, "correct_acc": 0.5, "f1": 4 / 7})
    m = ev.first_wrong_step_metrics([1, 0], [1, 2])  # no all-correct samples: F1 undefined
    assert m["error_acc"] == 0.5 and math.isnan(m["correct_acc"]) and math.isnan(m["f1"])
    assert math.isnan(ev.first_wrong_step_metrics([0, 1], [None, None])["f1"])  # no erroneous samples
    assert ev.first_wrong_step_metrics([None, 1], [0, None])["f1"] == 0.0
    with pytest.raises(ValueError, match="equal, non-zero"):
        ev.first_wrong_step_metrics([1], [1, 2])


def test_pick_threshold_hand():
    steps = [[0.9, 0.2, 0.8], [0.9, 0.8, 0.7], [0.6, 0.9], [0.95, 0.4]]
    labels = [1, None, 0, 1]
    # hits on t in (0.2, 0.9], t <= 0.7, t > 0.6, (0.4, 0.95]: all four only for t in (0.6, 0.7],
    # whose default candidate is the midpoint 0.65
    t = ev.pick_threshold(steps, labels)
    assert t == pytest.approx(0.65)
    assert [ev.first_wrong_step(s, t) for s in steps] == labels
    assert ev.pick_threshold(steps, labels, candidates=[0.99, 0.65, 0.1]) == 0.65
    with pytest.raises(ValueError, match="label 3 of sample 0"):
        ev.pick_threshold([[0.1, 0.2]], [3])
    with pytest.raises(ValueError, match="objective='auc'"):
        ev.pick_threshold(steps, labels, objective="auc")
    # a sample with no steps is always predicted None; candidates are -0.5 and 1.5 around 0.5
    assert ev.pick_threshold([[], [0.5]], [None, 0]) == 1.5
    assert ev.pick_threshold([[], []], [None, None]) == -1.0  # no scores: candidates around 0


@pytest.mark.parametrize("objective", ["accuracy", "f1"])
def test_pick_threshold_is_optimal_against_brute_force(objective):
    rng = np.random.default_rng(9)
    steps, labels = [], []
    for _ in range(60):
        n = int(rng.integers(1, 7))
        first_bad = int(rng.integers(0, n)) if rng.random() < 0.6 else None
        s = np.round(rng.random(n) * 0.5 + 0.5, 2)  # right steps score high, noisily
        if first_bad is not None:
            s[first_bad] = np.round(rng.random() * 0.7, 2)
        steps.append(list(s))
        labels.append(first_bad)

    def metric(t):
        return ev.first_wrong_step_metrics([ev.first_wrong_step(s, t) for s in steps], labels)[objective]

    t = ev.pick_threshold(steps, labels, objective=objective)
    grid = np.concatenate([np.linspace(-0.5, 1.5, 401), np.unique(np.concatenate(steps))])
    best = max(metric(g) for g in grid)
    assert metric(t) == pytest.approx(best, abs=1e-12)
    assert 0.3 < metric(t) <= 1.0


# ---------------------------------------------------------------------------- reporting


def test_format_ci():
    assert ev.format_ci(0.41234, 0.3512, 0.4688) == "0.412 [0.35, 0.47]"
    assert ev.format_ci(*ev.bootstrap_ci([0.0, 1.0])) == "0.500 [0.00, 1.00]"


def test_markdown_table():
    rows = [{"method": "rloo", "acc": 0.41234, "n": 3}, {"method": "a|b", "acc": None}]
    assert ev.markdown_table(rows, ["method", "acc", "n"]) == (
        "| method | acc | n |\n"
        "|---|---|---|\n"
        "| rloo | 0.412 | 3 |\n"
        "| a\\|b |  |  |"
    )
