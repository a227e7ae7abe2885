"""PRM beam search on a tiny random policy and a hand-set PRM whose preference is known: a head PRM
whose trunk passes each token's embedding straight through (attention and MLP outputs zeroed), so
r_t = w . norm(embed[a_t]) and w = embed[TARGET] rewards exactly the token TARGET."""
import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from repirl_jax import models, sampling, search
from repirl_jax.eval_runner import PRMScorer

V, TARGET = 32, 28  # the policy samples 28 in about 3% of tokens
PROMPTS = [[3, 9, 11], [5, 6, 20, 21, 22], [30, 4, 8, 12, 13, 14, 15, 16, 17]]


@pytest.fixture(scope="module")
def setup():
    cfg = models.ModelConfig(family="llama", vocab_size=V, hidden_size=32, intermediate_size=64, num_layers=2,
                             num_heads=4, num_kv_heads=2, head_dim=8, tie_word_embeddings=False,
                             max_position_embeddings=128)
    params = models.init_params(cfg, jax.random.key(0))
    # a larger (untied) unembedding: peaked next-token distributions, so greedy has clear argmaxes
    params = dict(params, lm_head=params["lm_head"] * 40)
    trunk = dict(params, layers=dict(params["layers"], wo=jnp.zeros_like(params["layers"]["wo"]),
                                     w_down=jnp.zeros_like(params["layers"]["w_down"])))
    e = params["embed"][TARGET]
    head = {"w": 5.0 * e / jnp.linalg.norm(e), "b": jnp.zeros(())}
    return cfg, params, PRMScorer("head", 0.05, cfg, {"trunk": trunk, "head": head})


def test_hand_set_prm_rewards_the_target_token(setup):
    cfg, _, scorer = setup
    toks = np.arange(V, dtype=np.int32)[None]
    r = scorer.token_rewards([[1, 2]], toks, np.ones_like(toks, bool), 1)[0]
    assert np.argmax(r) == TARGET and r[TARGET] > np.sort(r)[-2] + 10


@pytest.mark.parametrize("with_eos", [False, True])
def test_width_one_at_temperature_zero_is_greedy(setup, with_eos):
    cfg, params, scorer = setup
    ref = sampling.generate(cfg, params, PROMPTS, max_new_tokens=20)
    # delimiter: the most common generated token, so the search takes many steps
    delim = collections.Counter(ref.tokens.ravel().tolist()).most_common(1)[0][0]
    eos = int(ref.tokens[0, 9]) if with_eos else None
    if eos is not None:
        ref = sampling.generate(cfg, params, PROMPTS, max_new_tokens=20, eos_id=eos)
    res = search.beam_search(cfg, params, scorer, PROMPTS, beam=1, expansions=1, stop=[[delim]], eos_id=eos,
                             step_tokens=4, max_new_tokens=20, max_steps=100, temperature=0.0)
    for p in range(len(PROMPTS)):
        assert res.tokens[p] == ref.tokens[p][ref.mask[p]].tolist(), p
    assert res.steps > 5  # steps really were cut at the delimiter / the per-step cap


def test_one_step_keeps_the_prm_best_of_all_expansions(setup):
    """max_steps=1: the result must be the highest-reward of the B * M candidates drawn."""
    cfg, params, scorer = setup
    B, M = 2, 4
    res = search.beam_search(cfg, params, scorer, PROMPTS, beam=B, expansions=M, stop=[[0]], step_tokens=6,
                             max_new_tokens=6, max_steps=1, temperature=1.0, seed=3)
    # the same draws: one slot per beam (the root fills all B slots), M samples each, seed 3 * 1_000_003
    out = sampling.generate(cfg, params, [p for p in PROMPTS for _ in range(B)], max_new_tokens=6,
                            temperature=1.0, num_samples=M, seed=3 * 1_000_003)
    s = scorer.scores(PROMPTS, out.tokens, out.mask, B * M)
    for p in range(len(PROMPTS)):
        j = p * B * M + int(np.argmax(s[p]))
        assert res.tokens[p] == out.tokens[j][out.mask[j]].tolist(), p
        assert res.scores[p] == pytest.approx(s[p].max(), rel=1e-5)
        assert [b.score for b in res.beams[p]] == sorted((b.score for b in res.beams[p]), reverse=True)


def test_search_prefers_what_the_prm_rewards(setup, monkeypatch):
    cfg, params, scorer = setup
    calls = []
    real = sampling.generate
    monkeypatch.setattr(sampling, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    kw = dict(stop=[[1], [2]], step_tokens=3, max_new_tokens=12, max_steps=10, temperature=1.0)
    res = search.beam_search(cfg, params, scorer, PROMPTS, beam=2, expansions=4, **kw)
    assert len(calls) == res.steps  # one batched sampler call per search step
    plain = real(cfg, params, PROMPTS, max_new_tokens=12, temperature=1.0, num_samples=8)
    rate = lambda rows: np.mean([t == TARGET for r in rows for t in r])
    plain_rate = rate(r[m].tolist() for r, m in zip(plain.tokens, plain.mask))
    assert rate(res.tokens) > 4 * plain_rate, (rate(res.tokens), plain_rate)  # measured: 0.19 vs 0.03
    # the reported score is the PRM's mean token reward of the returned response
    T = max(map(len, res.tokens))
    toks = np.array([r + [0] * (T - len(r)) for r in res.tokens], np.int32)
    mask = np.array([[True] * len(r) + [False] * (T - len(r)) for r in res.tokens])
    np.testing.assert_allclose(scorer.scores(PROMPTS, toks, mask, 1)[:, 0], res.scores, rtol=1e-4)
    # width 1 with one expansion is a single random path: the search must do better
    one = search.beam_search(cfg, params, scorer, PROMPTS, beam=1, expansions=1, **kw)
    assert res.scores.mean() > one.scores.mean()


def test_continuous_batching_runs_the_same_search(setup):
    """Each step's expansions (rows cut at a delimiter: skewed lengths) through 8 decode slots
    instead of the static batch: the same draws, so the same beams and scores."""
    cfg, params, scorer = setup
    kw = dict(beam=2, expansions=4, stop=[[1], [2]], step_tokens=3, max_new_tokens=6, max_steps=10, temperature=1.0)
    want = search.beam_search(cfg, params, scorer, PROMPTS, **kw)  # prompt + beam <= 15: one prompt bucket
    got = search.beam_search(cfg, params, scorer, PROMPTS, slots=8, **kw)
    assert got.tokens == want.tokens and got.steps == want.steps > 1
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5)


def test_delimiter_ids_finds_merged_newline_tokens():
    from repirl_jax.data import vocab

    tok = vocab.build_tokenizer(["a b\nc", "1+2=3\n"])
    ids = search.delimiter_ids(tok, "\n")
    assert [tok.decode(i) for i in ids] == ["\n"]
    with pytest.raises(ValueError, match="delimiter"):
        search.delimiter_ids(tok, "@")
    with pytest.raises(ValueError, match="beam=0"):
        search.beam_search(None, None, None, [[1]], beam=0, stop=[[1]])
