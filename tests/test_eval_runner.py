"""Vote and summary bookkeeping of eval_runner on hand-made rollouts (no model needed)."""
import numpy as np

from repirl_jax import eval_runner


def rollouts(answers, correct):
    n = len(answers[0])
    z = np.zeros((len(answers) * n, 2), np.int32)
    return eval_runner.Rollouts(z, z.astype(bool), [""] * len(z), np.array(correct, bool), answers)


def test_votes_are_judged_by_the_verifier():
    s = rollouts([["3", "4", "3"], [None, None, "5"], [None, None, None]],
                 [[True, False, True], [False, False, False], [False, False, False]])
    np.testing.assert_array_equal(eval_runner._vote_correct(s), [1, 0, 0])
    w = np.array([[0.1, 0.9, 0.1], [1, 1, 1], [1, 1, 1]])  # "4" outweighs two "3" votes
    np.testing.assert_array_equal(eval_runner._vote_correct(s, w), [0, 0, 0])


def test_summary_keys_and_values():
    greedy = rollouts([["3"], ["5"]], [[True], [False]])
    sampled = rollouts([["3", "4", "3", "3"], ["1", "5", "5", "2"]], [[1, 0, 1, 1], [0, 0, 0, 1]])
    scores = np.array([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]])
    summary, per = eval_runner.metrics(greedy, sampled, scores)
    np.testing.assert_allclose(per["avg@4"], [0.75, 0.25])
    np.testing.assert_allclose(per["pass@4"], [1, 1])
    np.testing.assert_allclose(per["maj@4"], [1, 0])  # "3" wins problem 0, "5" (wrong) problem 1
    np.testing.assert_allclose(per["prm_best_of_4"], [0, 1])
    assert summary["pass@1_greedy"][0] == 0.5 and summary["prm_ranking_acc"][0] == 0.5  # pairs right: 0 of 3, then 3 of 3
