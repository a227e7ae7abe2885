"""Vote and summary bookkeeping of eval_runner on hand-made rollouts, and the exported PRM's
scores against the training step's."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from repirl_jax import eval_runner, loop, models, prm, sampling
from repirl_jax.config import ModelSource, PRMConfig, TrainConfig


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


@pytest.mark.parametrize("form", ["head", "implicit", "shared"])
def test_exported_prm_scores_like_the_training_step(tiny_hf, tmp_path, form):
    """loop.export_final -> PRMScorer.load gives the token rewards the dual step computes from the
    same params (here with a different prompt padding, which must not matter)."""
    path, _ = tiny_hf("qwen2")
    pc, policy = models.load(path)
    cfg = TrainConfig(model=ModelSource(policy=path), prm=PRMConfig(form=form, beta=0.5))
    k = jax.random.split(jax.random.key(0), 3)
    head = {"w": jax.random.normal(k[0], (pc.hidden_size,)), "b": jnp.float32(0.3)}
    trunk = jax.tree.map(lambda x: x * (1 + 0.05 * jax.random.normal(k[1], x.shape)), policy)  # trained != start
    prm_params = {"head": {"trunk": trunk, "head": head}, "implicit": {"lm": trunk}, "shared": {"head": head}}[form]
    loop.export_final(str(tmp_path / "final"), cfg, pc, pc, policy, prm_params, None)
    scorer = eval_runner.PRMScorer.load(str(tmp_path / "final"), (pc, policy))

    rng = np.random.RandomState(0)
    prompt_ids = [list(rng.randint(1, pc.vocab_size, n)) for n in (3, 7)]
    n, T = 2, 6
    tokens = rng.randint(1, pc.vocab_size, (len(prompt_ids) * n, T)).astype(np.int32)
    mask = np.arange(T)[None] < np.array([6, 4, 5, 1])[:, None]
    got = scorer.token_rewards(prompt_ids, tokens, mask, n)

    ptoks, pmask = sampling.left_pad(prompt_ids, 32)  # the step's padding differs from the scorer's
    seqs = prm.build_seqs(ptoks, pmask, tokens.reshape(2, n, T), mask.reshape(2, n, T))
    want = prm.token_rewards(form, 0.5, pc, pc, prm_params, policy, policy, seqs)
    np.testing.assert_allclose(got, np.where(mask, want, 0.0), atol=1e-5)
    assert np.abs(got[mask]).max() > 1e-3  # not trivially zero
