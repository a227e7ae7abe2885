"""The one evaluation (eval_runner.report / evaluate, prm_quality) on hand-made rollouts and
token rewards against hand computations, the exported PRM's scores against the training step's,
and evaluate() end to end through a tiny model."""
import dataclasses
import hashlib
import json
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from repirl_jax import eval_runner, loop, models, prm, prm_quality, sampling
from repirl_jax import evaluate as ev
from repirl_jax.config import ModelSource, PRMConfig, TrainConfig
from repirl_jax.data import chain
from repirl_jax.data.records import Problem


def rollouts(answers, correct):
    n = len(answers[0])
    z = np.zeros((len(answers) * n, 2), np.int32)
    texts = [f"{p}/{j}" for p in range(len(answers)) for j in range(n)]
    return eval_runner.Rollouts(z, np.ones(z.shape, bool), texts, np.array(correct, bool), answers)


def test_votes_are_judged_by_the_verifier():
    s = rollouts([["3", "4", "3"], [None, None, "5"], [None, None, None]],
                 [[True, False, True], [False, False, False], [False, False, False]])
    np.testing.assert_array_equal(eval_runner._vote_correct(s), [1, 0, 0])
    w = np.array([[0.1, 0.9, 0.1], [1, 1, 1], [1, 1, 1]])  # "4" outweighs two "3" votes
    np.testing.assert_array_equal(eval_runner._vote_correct(s, w), [0, 0, 0])


def test_outcome_metrics_and_prm_selection():
    greedy = rollouts([["3"], ["5"]], [[True], [False]])
    sampled = rollouts([["3", "4", "3", "3"], ["1", "5", "5", "2"]], [[1, 0, 1, 1], [0, 0, 0, 1]])
    scores = np.array([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]])
    r = eval_runner.report(PLAIN * 2, greedy, sampled, np.repeat(scores.reshape(-1, 1), 2, 1))
    per, summary = r.per_problem, r.summary
    np.testing.assert_allclose(per["avg@4"], [0.75, 0.25])
    np.testing.assert_allclose(per["pass@4"], [1, 1])
    np.testing.assert_allclose(per["maj@4"], [1, 0])  # "3" wins problem 0, "5" (wrong) problem 1
    np.testing.assert_allclose(per["prm/best_of_4"], [0, 1])
    np.testing.assert_array_equal(per["prm_best_of_4"], per["prm/best_of_4"])
    # sigmoid weights: three "3" (0.5 each) beat one "4" (0.73); two "5" (1.0) beat one "2" (0.88)
    np.testing.assert_allclose(per["prm_weighted_maj@4"], [1, 0])
    assert summary["pass@1_greedy"][0] == 0.5 and summary["prm/ranking"][0] == 0.5  # pairs right: 0 of 3, then 3 of 3
    np.testing.assert_allclose(per["prm/ranking"], [0, 1])
    assert "lucky_rate" not in summary and "prm/step_auroc" not in summary  # not chain problems
    assert r.curves["oracle"] == {1: 0.5, 2: (1 + 0.5) / 2, 4: 1.0}  # pass@2: 1 - C(1,2)/C(4,2), 1 - C(3,2)/C(4,2)


def chain_rollouts(problems, texts, correct, values=None):
    """One token per character (so step_of is the newline count before it), answers from the texts."""
    T = max(len(t) for t in texts)
    mask = np.arange(T)[None] < np.array([len(t) for t in texts])[:, None]
    N = len(texts) // len(problems)
    answers = [[t.rsplit("{", 1)[-1].rstrip("}") if "boxed" in t else None for t in texts[p * N:(p + 1) * N]]
               for p in range(len(problems))]
    step_of = [np.cumsum([c == "\n" for c in t]) - np.array([c == "\n" for c in t]) for t in texts]
    s = eval_runner.Rollouts(np.ones(mask.shape, np.int32), mask, texts, np.array(correct, bool).reshape(-1, N),
                             answers, values)
    return s, step_of


def per_token(texts, step_values):
    """[S, T] token values: each step's value on its own characters."""
    T = max(len(t) for t in texts)
    out = np.zeros((len(texts), T))
    for i, (t, v) in enumerate(zip(texts, step_values)):
        steps = np.cumsum([c == "\n" for c in t]) - np.array([c == "\n" for c in t])
        out[i, :len(t)] = np.asarray(v, float)[steps]
    return out


PLAIN = [Problem(id="x", prompt="q", gold="3")]
P0 = chain.make_problem(random.Random(0), 3, "test", 0, modulus=100, style="symbols", operand_max=9, instruction=False)
# 49-1=48 / 48-9=39 / 39-7=32 / \boxed{32}
RIGHT = P0.experts[0]
WRONG1 = "49-1=48\n48-9=38\n38-7=31\n\\boxed{31}"  # first wrong step 1
LUCKY = "49-1=47\n47-9=39\n39-7=32\n\\boxed{32}"  # wrong step 0, right answer
WRONG0 = "49-1=40\n40-9=31\n\\boxed{31}"  # first wrong step 0, 3 steps


def oks(problem, texts):
    return [chain.step_labels(problem, t).ok for t in texts]


def test_a_scorer_equal_to_the_labels_is_perfect():
    """Token reward 1 on steps on the correct path, 0 off it: every metric at its best."""
    texts = [RIGHT, WRONG1, WRONG0, RIGHT] * 2
    probs = [P0, dataclasses.replace(P0, id="chain/test/3/1")]
    correct = [1, 0, 0, 1] * 2
    rew = per_token(texts, oks(P0, texts))
    s, step_of = chain_rollouts(probs, texts, correct, values=rew - 1.0)  # log-probs: the labels shifted
    r = eval_runner.report(probs, chain_rollouts(probs, texts[::4], [1, 1])[0], s, rew, step_of)
    for name in ("prm", "prm_min", "logprob"):
        assert r.summary[f"{name}/ranking"][0] == 1 and r.summary[f"{name}/auroc"] == (1.0,), name
        assert r.summary[f"{name}/best_of_4"][0] == 1.0  # = pass@4
    assert r.curves["prm/best_of_n"] == r.curves["oracle"]
    for name in ("prm", "logprob"):  # step scores = the ok labels
        assert r.summary[f"{name}/step_auroc"] == (1.0,)
        assert r.summary[f"{name}/fws_f1"] == (1.0,) and r.summary[f"{name}/fws_accuracy"] == (1.0,)
        assert r.summary[f"{name}/fws_n"] == (4.0,)
    assert 0 < r.summary["prm/fws_tau"][0] <= 1 and -1 < r.summary["logprob/fws_tau"][0] <= 0
    assert r.summary["lucky_rate"][0] == 0.0
    # first wrong steps: WRONG1 and WRONG0 miscompute a '-' step (not its slip, which would be a '+')
    assert {k: r.summary[f"errors/{k}"][0] for k in ("correct", "arithmetic", "slip", "copy")} == {
        "correct": 0.5, "arithmetic": 0.5, "slip": 0.0, "copy": 0.0}
    assert r.summary["prm/auroc_within_level"] == (1.0,) and r.summary["prm/auroc/steps=3"] == (1.0,)
    # the last step (\boxed) is off the path exactly when the answer is wrong
    assert r.summary["prm_last/ranking"][0] == 1
    assert "step_auroc" not in str([k for k in r.summary if k.startswith(("length/", "hash/"))])
    assert "prm_init/ranking" not in r.summary  # only with the untrained PRM's rewards
    # the prm_init null: an untrained PRM scoring every token alike ranks at chance
    r0 = eval_runner.report(probs, chain_rollouts(probs, texts[::4], [1, 1])[0], s, rew, step_of,
                            init_rewards_ST=np.where(s.mask, 0.0, 0.0))
    assert r0.summary["prm_init/ranking"][0] == 0.5 and r0.summary["prm/ranking"][0] == 1
    assert r0.summary["prm_init/step_auroc"] == (0.5,)


def test_initial_scorer_is_the_untrained_prm():
    """PRMScorer.initial: same form and scale, the start's trunk, a fresh head (c = logprob_init)."""
    cfg = models.ModelConfig(family="llama", vocab_size=16, hidden_size=8, intermediate_size=16, num_layers=1,
                             num_heads=2, num_kv_heads=1, head_dim=4)
    trunk = models.init_params(cfg, jax.random.key(0))
    trained = eval_runner.PRMScorer("head_logprob", 0.05, cfg, {"trunk": models.init_params(cfg, jax.random.key(1)),
                                    "head": {"w": np.ones(8, np.float32), "b": np.float32(1), "c": np.float32(3)}},
                                    scale=2.0, logprob_init=1.0)
    init = trained.initial((cfg, trunk))
    assert init.scale == 2.0 and init.params["trunk"] is trunk
    assert float(init.params["head"]["c"]) == 1.0 and not np.any(np.asarray(init.params["head"]["w"]))
    with pytest.raises(ValueError, match="implicit"):
        dataclasses.replace(trained, form="implicit").initial((cfg, trunk))


def test_constant_scorer_ranks_at_chance_and_picks_the_first_sample():
    s = rollouts([["1", "2", "3"], ["1", "2", "3"]], [[0, 1, 1], [1, 0, 0]])
    r = eval_runner.report(PLAIN * 2, rollouts([["1"], ["1"]], [[0], [0]]), s, np.full((6, 2), 0.7))
    assert r.summary["prm/ranking"][0] == 0.5 and r.summary["prm/auroc"] == (0.5,)
    np.testing.assert_allclose(r.per_problem["prm/best_of_3"], [0, 1])


def test_null_scorers():
    texts = ["aa", "a", "aaaa", "b", "bbb", "bb"]
    mask = np.arange(4)[None] < np.array([2, 1, 4, 1, 3, 2])[:, None]
    lp = np.where(mask, np.arange(6)[:, None] * -0.1, 0.0)
    got = prm_quality.response_scores(texts, mask, 3, lp)
    np.testing.assert_allclose(got["length"], [[-2, -1, -4], [-1, -3, -2]])  # shorter is better
    np.testing.assert_allclose(got["logprob"], [[0, -0.1, -0.2], [-0.3, -0.4, -0.5]])
    want = [int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "big") / 2 ** 64 for t in texts]
    np.testing.assert_allclose(got["hash"].ravel(), want)
    assert prm_quality.hash_score("aa") == prm_quality.hash_score("aa") != prm_quality.hash_score("ab")
    assert set(got) == {"length", "logprob", "hash"}  # no PRM without rewards


def test_min_and_last_aggregations_pick_the_right_step():
    texts = [RIGHT, WRONG0]
    rew = per_token(texts, [[0.5, -1.0, 2.0, 0.25], [3.0, 1.0, -2.0]])
    _, step_of = chain_rollouts([P0], texts, [1, 0])
    mask = rew != 0
    st = prm_quality.step_values(rew, mask, step_of, texts)
    np.testing.assert_allclose(st[0], [0.5, -1.0, 2.0, 0.25])
    got = prm_quality.response_scores(texts, mask, 2, None, rew, st)
    np.testing.assert_allclose(got["prm_min"], [[-1.0, -2.0]])
    np.testing.assert_allclose(got["prm_last"], [[0.25, -2.0]])
    # mean over tokens: step i weighs by its characters (8, 8, 8, 10 and 8, 8, 10)
    np.testing.assert_allclose(got["prm"], [[(8 * 0.5 - 8 + 16 + 2.5) / 34, (24 + 8 - 20) / 26]])


def test_a_step_without_tokens_takes_the_score_before_it():
    # token 1 holds "\n\n": step 1 (an empty line) has no token of its own
    st = prm_quality.step_values(np.array([[1.0, 2.0, 5.0]]), np.ones((1, 3), bool), [np.array([0, 0, 2])],
                                 ["a\n\nb"])
    np.testing.assert_allclose(st[0], [1.5, 1.5, 5.0])


def test_lucky_rate_counts_outcome_correct_samples_with_a_wrong_step():
    texts = [RIGHT, LUCKY, LUCKY, WRONG1]
    labels = prm_quality.chain_labels([P0, P0], texts, 2)
    assert [lab.first_wrong for lab in labels] == [None, 0, 0, 1]
    assert prm_quality.lucky(np.array([[1, 1], [1, 0]]), labels)[0] == pytest.approx(2 / 3)


def test_first_wrong_step_metrics_on_a_tiny_case():
    """4 problems x 1 sample, 3 steps each. tau is picked on the dev half (problems 0, 2) to
    maximise F1, the metrics come from the test half (1, 3): one false alarm, one hit."""
    assert prm_quality.dev_split(4, seed=0).tolist() == [True, False, True, False]
    labels = [chain.StepLabels(["a"] * 3, ok, fw) for ok, fw in
              [([True] * 3, None), ([True] * 3, None), ([True, False, False], 1), ([False] * 3, 0)]]
    scores = [np.array(x) for x in ([1, 1, 1], [0.9, 0.1, 0.9], [1, 0, 0], [0.2, 0.9, 0.9])]
    m = prm_quality.step_metrics(scores, labels, 1, seed=0)
    # dev: candidates -1, 0.5, 2 give F1 0, 1, 0 -> tau 0.5; test: sample 1 predicted 1 (label
    # None: miss), sample 3 predicted 0 (hit)
    assert m["fws_tau"] == (0.5,) and m["fws_n"] == (2.0,)
    assert (m["fws_accuracy"], m["fws_error_acc"], m["fws_correct_acc"], m["fws_f1"]) == ((0.5,), (1.0,), (0.0,), (0.0,))
    # all 12 steps by prefix score (running min): ok 1,1,1,1,.9,.1,.1 vs wrong 0,0,.2,.2,.2
    # (sample 3's .9s follow its wrong first step): 4 * 5 + 5 + 2 * 2 of 35 pairs
    assert m["step_auroc"][0] == pytest.approx(29 / 35)
    # lowest step of the two wrong samples: [1, 0, 0] -> 1 (first of the tie; label 1: hit),
    # [0.2, 0.9, 0.9] -> 0 (label 0: hit); a random step hits 1/3 of the time
    assert m["locate_acc"] == (1.0,) and m["locate_chance"] == (pytest.approx(1 / 3),)
    assert m["locate_first_acc"] == (1.0,)  # the first step below the sample's mean: 1 and 0, hits
    scores[3] = np.array([0.9, 0.2, 0.9])  # the slip scored above a later step: a miss for both rules
    m = prm_quality.step_metrics(scores, labels, 1, seed=0)
    assert m["locate_acc"] == (0.5,) and m["locate_first_acc"] == (0.5,)
    # the steps after the slip scored lower still: the lowest step (2) misses, the first low one (1) hits
    scores[2] = np.array([1.0, 0.3, 0.1])
    m = prm_quality.step_metrics(scores, labels, 1, seed=0)
    assert m["locate_acc"] == (0.0,) and m["locate_first_acc"] == (0.5,)


def test_a_stopped_short_sample_is_left_out_of_first_wrong_step():
    """Sample 1 (test half) has every step right but stops early: its label is past its last step."""
    labels = [chain.StepLabels(["a"], [True], None), chain.StepLabels(["a", "b"], [True, True], 2),
              chain.StepLabels(["a", "b"], [True, False], 1), chain.StepLabels(["a"], [False], 0)]
    m = prm_quality.step_metrics([np.ones(1), np.ones(2), np.array([1.0, 0.0]), np.zeros(1)], labels, 1, seed=0)
    assert m["fws_n"] == (1.0,) and m["fws_accuracy"] == (1.0,)


def test_auroc_within_level_does_not_reward_telling_levels_apart():
    probs = [Problem(id=str(i), prompt="q", gold="1", meta={"steps": k}) for i, k in enumerate([3, 4])]
    s = rollouts([["1", "2"], ["1", "2"]], [[1, 0], [1, 0]])
    rew = np.repeat(np.array([2.0, 1.0, 0.5, 0.0])[:, None], 2, 1)  # level 3 scored higher throughout
    r = eval_runner.report(probs, rollouts([["1"], ["2"]], [[1], [0]]), s, rew)
    assert r.summary["prm/auroc"] == (0.75,)  # the level-4 correct sample (0.5) is below a level-3 wrong one (1)
    assert r.summary["prm/auroc_within_level"] == (1.0,)
    assert r.summary["prm/auroc/steps=3"] == (1.0,) and r.summary["prm/auroc/steps=4"] == (1.0,)
    assert r.summary["pass@1_greedy/steps=3"][0] == 1 and r.summary["pass@1_greedy/steps=4"][0] == 0


def test_report_renders_and_serialises_with_a_beam_search():
    texts = [RIGHT, WRONG1, LUCKY, WRONG0]
    s, step_of = chain_rollouts([P0], texts, [1, 0, 1, 0], values=per_token(texts, oks(P0, texts)))
    rew = per_token(texts, [[0.1, 0.2, 0.3, 0.4], [1, 0, 0, 0], [0, 1, 1, 1], [2, 2, 2]])
    r = eval_runner.report([P0], chain_rollouts([P0], [RIGHT], [1])[0], s, rew, step_of,
                           beam_correct=[1.0], beam_n=2)
    assert r.summary["prm_beam"][0] == 1.0 and 2 in r.curves["prm/best_of_n"]
    text = r.markdown()
    for needle in ("| prm_beam |", "prm best-of-2", "| prm | PRM, mean token reward |", "| hash |",
                   "| length | null: minus length (shorter is better) |", "| maj |", "| oracle |", "lucky_rate"):
        assert needle in text, text
    back = json.loads(json.dumps(r.to_json()))
    assert back["summary"]["prm/ranking"] == list(r.summary["prm/ranking"]) and back["curves"]["maj"]["4"] >= 0


def test_greedy_only():
    r = eval_runner.report(PLAIN * 2, rollouts([["1"], ["2"]], [[1], [0]]))
    assert set(r.summary) == {"pass@1_greedy"} and r.n_samples == 0 and not r.curves
    assert "Scorers" not in r.markdown()


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


def test_evaluate_end_to_end_on_a_tiny_model():
    """evaluate() on chain problems with a random tiny policy and head PRM: every part runs, and
    the PRM's best-of-N is that of PRMScorer.scores on the same (seeded) samples."""
    from repirl_jax.data import prompts, vocab

    probs, _ = chain.splits(chain.ChainTask(2, 3, modulus=10, instruction=False, style="symbols"), 1, 4)
    tok = vocab.build_tokenizer([p.prompt for p in probs] + [p.experts[0] for p in probs])
    cfg = models.ModelConfig(family="llama", vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                             num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8, tie_word_embeddings=True,
                             eos_token_id=tok.eos_token_id, max_position_embeddings=64)
    params = models.init_params(cfg, jax.random.key(0))
    head = {"w": jax.random.normal(jax.random.key(1), (32,)), "b": jnp.float32(0.0)}
    scorer = eval_runner.PRMScorer("head", 0.1, cfg, {"trunk": params, "head": head})
    ids = prompts.encode(probs, tok, 32).ids
    kw = dict(max_new_tokens=12, workers=1)
    r = eval_runner.evaluate(cfg, params, tok, probs, ids, scorer=scorer, samples=4, seed=3, beam=1, expansions=2,
                             max_prompts=2, **kw)
    for k in ("pass@1_greedy", "maj@4", "prm/ranking", "prm_min/best_of_4", "prm_last/auroc", "hash/ranking",
              "length/auroc_within_level", "logprob/step_auroc", "prm/fws_f1", "lucky_rate", "prm_beam"):
        assert k in r.summary, k
    s = eval_runner.rollouts(cfg, params, tok, probs, ids, n=4, temperature=1.0, seed=3, **kw)
    assert np.all(s.logprobs[~s.mask] == 0) and np.all(s.logprobs[s.mask] < 0)
    np.testing.assert_array_equal(r.per_problem["prm/best_of_4"],
                                  ev.best_of_n(scorer.scores(ids, s.tokens, s.mask, 4), s.correct_PN))
    assert "| prm_beam |" in r.markdown()
    # continuous batching (4 decode slots) for the greedy answers, the samples and the beam search:
    # the same rollouts, so the same report
    c = eval_runner.evaluate(cfg, params, tok, probs, ids, scorer=scorer, samples=4, seed=3, beam=1, expansions=2,
                             slots=4, **kw)
    np.testing.assert_equal(c.summary, r.summary)
