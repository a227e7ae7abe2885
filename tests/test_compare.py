"""`repirl compare` on hand-made eval files, the seeds x problems bootstrap and the majority-vote
curve against brute-force enumeration."""
import itertools
import json

import numpy as np
import pytest

from repirl_jax import cli, compare
from repirl_jax import evaluate as ev


def write(path, ids, per):
    path.write_text(json.dumps({"problem_ids": ids, "per_problem": per, "summary": {}}))
    return str(path)


def test_compare_aligns_by_problem_id_and_matches_paired_bootstrap(tmp_path, capsys):
    a = write(tmp_path / "a.json", ["p1", "p2", "p3", "p4"], {"acc": [1, 0, 1, 0], "only_a": [1, 1, 1, 1]})
    # same problems in another order; b is right on p2 and p4 where a was wrong
    b = write(tmp_path / "b.json", ["p4", "p3", "p2", "p1"], {"acc": [1, 1, 1, 1], "auroc_like": [0, 0, 0, 0]})
    rows = compare.compare_runs([compare.load_run(a), compare.load_run(b)], ["a", "b"], seed=3)
    assert [(r["metric"], r["run"]) for r in rows] == [("acc", "a"), ("acc", "b")]  # only shared metrics
    m, lo, hi, p = ev.paired_bootstrap([1, 1, 1, 1], [1, 0, 1, 0], seed=3)
    assert m == 0.5 and rows[1]["diff vs a [95% CI]"] == ev.format_ci(m, lo, hi) and rows[1]["p"] == p
    assert rows[0]["value [95% CI]"] == ev.format_ci(*ev.bootstrap_ci([1, 0, 1, 0], seed=3))
    assert cli.main(["compare", a, b, "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "| acc | b.json | 4 | 1.000 [1.00, 1.00] | 0.500 [" in out and "diff vs a.json [95% CI]" in out


def test_compare_three_runs_and_missing_values(tmp_path):
    ids = [f"q{i}" for i in range(6)]
    f = [write(tmp_path / f"r{k}.json", ids, {"m": v}) for k, v in
         enumerate([[0, 0, 1, 1, 0, 1], [1, 0, 1, 1, None, 1], [0, 0, 0, 0, 0, 0]])]
    rows = compare.compare_runs([compare.load_run(x) for x in f], ["r0", "r1", "r2"])
    assert len(rows) == 3 and "p" not in rows[0]
    assert rows[1]["n"] == 5  # the null is left out of that pair
    m, lo, hi, p = ev.paired_bootstrap([1, 0, 1, 1, 1], [0, 0, 1, 1, 1])
    assert rows[1]["diff vs r0 [95% CI]"] == ev.format_ci(m, lo, hi) and rows[1]["p"] == p
    assert rows[2]["diff vs r0 [95% CI]"].startswith("-0.500")


def test_compare_pools_seeds_as_per_problem_means(tmp_path, capsys):
    ids = ["p1", "p2", "p3"]
    a0 = write(tmp_path / "a0.json", ids, {"acc": [1, 0, 0], "x": [1, 1, 1]})
    a1 = write(tmp_path / "a1.json", ids[::-1], {"acc": [1, None, 1]})  # p3, p2, p1: aligned by problem id
    b = write(tmp_path / "b.json", ids, {"acc": [1, 1, 1]})
    pooled = compare.pool_seeds([compare.load_run(a0), compare.load_run(a1)], "a")
    assert pooled["per_problem"] == {"acc": [1.0, None, 0.5]}  # a missing seed value is missing; x not in a1
    assert cli.main(["compare", f"{a0},{a1}", b]) == 0
    out = capsys.readouterr().out
    m, lo, hi, p = ev.paired_bootstrap([1, 1], [1.0, 0.5])
    assert f"| acc | b.json | 3 | 1.000 [1.00, 1.00] | {ev.format_ci(m, lo, hi)} |" in out and "a0.json,a1.json" in out
    c = write(tmp_path / "c.json", ["p1", "p2", "p9"], {"acc": [1, 1, 1]})
    assert cli.main(["compare", f"{a0},{c}", b]) == 2
    assert "its seeds were evaluated on different problems" in capsys.readouterr().err


@pytest.mark.parametrize("content,needle", [
    ({"problem_ids": ["p2", "p9"], "per_problem": {"acc": [1, 0]}}, "different problems (2 differ, e.g. 'p3')"),
    ({"problem_ids": ["p1", "p2"], "per_problem": {"acc": [1]}}, "per_problem['acc'] has 1 values for 2 problems"),
    ({"problem_ids": ["p1", "p1"], "per_problem": {"acc": [1, 1]}}, "problem_ids repeat"),
    ({"summary": {}}, "not a `repirl eval --out` file"),
    ({"problem_ids": ["p2", "p3"], "per_problem": {"other": [1, 0]}}, "share no per-problem metric"),
])
def test_compare_refuses_with_one_line(tmp_path, capsys, content, needle):
    a = write(tmp_path / "a.json", ["p2", "p3"], {"acc": [1, 0]})
    b = tmp_path / "b.json"
    b.write_text(json.dumps(content))
    assert cli.main(["compare", a, str(b)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("repirl compare: error: ") and needle in err and err.count("\n") == 1, err


def test_compare_needs_two_readable_files(tmp_path, capsys):
    a = write(tmp_path / "a.json", ["p"], {"acc": [1]})
    assert cli.main(["compare", a]) == 2 and "at least two" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{")
    assert cli.main(["compare", a, str(tmp_path / "bad.json")]) == 2
    assert "cannot be read as JSON" in capsys.readouterr().err


def test_seeds_problems_bootstrap():
    x = np.array([[1.0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 0]])
    m, lo, hi = compare.seeds_problems_bootstrap(x, seed=1)
    assert m == pytest.approx(x.mean()) and lo < m < hi
    assert compare.seeds_problems_bootstrap(x, seed=1) == (m, lo, hi)  # seeded
    assert compare.seeds_problems_bootstrap(np.full((2, 5), 0.25)) == (0.25, 0.25, 0.25)
    # seed variance widens the interval over the problems-only bootstrap of the seed means
    noisy = np.array([[1.0] * 20, [0.0] * 20])
    _, lo2, hi2 = compare.seeds_problems_bootstrap(noisy)
    assert (lo2, hi2) == (0.0, 1.0) and ev.bootstrap_ci(noisy.mean(0))[1:] == (0.5, 0.5)


def brute_vote_curve(answers, correct, n):
    """Exact E[maj@n] by enumerating every n-subset (in sample order) with evaluate.majority_vote."""
    out = []
    for a_row, c_row in zip(answers, correct):
        accs = []
        for sub in itertools.combinations(range(len(a_row)), n):
            v = ev.majority_vote([a_row[j] for j in sub])
            accs.append(v is not None and any(c_row[j] for j in range(len(a_row))
                                              if ev.normalize_answer(a_row[j]) == v))
        out.append(np.mean(accs))
    return float(np.mean(out))


def test_majority_vote_curve_hand_cases():
    # tie at n = N goes to the answer seen first; None never wins
    assert compare.majority_vote_curve([["1", "2"]], [[True, False]], ns=(2,)) == {2: 1.0}
    assert compare.majority_vote_curve([["2", "1"]], [[False, True]], ns=(2,)) == {2: 0.0}
    assert compare.majority_vote_curve([[None, None, "3"]], [[False, False, True]], ns=(3,)) == {3: 1.0}
    assert compare.majority_vote_curve([[None, None]], [[False, False]], ns=(1, 2)) == {1: 0.0, 2: 0.0}
    # n larger than N is left out
    assert compare.majority_vote_curve([["1"]], [[True]], ns=(1, 4)) == {1: 1.0}


def test_majority_vote_curve_matches_enumeration():
    rng = np.random.default_rng(0)
    answers = [[rng.choice(["1", "2", "3", None, " 2."]) for _ in range(6)] for _ in range(5)]
    correct = [[a is not None and ev.normalize_answer(a) == "2" for a in row] for row in answers]
    curve = compare.majority_vote_curve(answers, correct, ns=(1, 2, 3, 6), draws=4000, seed=1)
    for n in (1, 2, 3, 6):
        assert curve[n] == pytest.approx(brute_vote_curve(answers, correct, n), abs=0.02), n
    assert curve[6] == brute_vote_curve(answers, correct, 6)  # n = N: one exact vote
