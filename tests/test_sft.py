"""Imitation (SFT): the loss is the masked mean NLL of the response tokens (checked against a
log-softmax of models.forward in numpy), and training on a fixed batch drives it down."""
import jax
import numpy as np

from repirl_jax import models, sft
from repirl_jax.config import OptimConfig

CFG = models.ModelConfig(family="llama", vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=2,
                         num_heads=4, num_kv_heads=2, head_dim=8, tie_word_embeddings=True)


def test_loss_is_masked_response_nll():
    params = models.init_params(CFG, jax.random.key(0))
    prompts_ = [[1, 2, 3], [4, 5]]
    responses = [[6, 7, 2], [8, 9, 10, 11, 2]]
    tokens, mask, cut = sft.encode_pairs(prompts_, responses, 8)
    assert cut == 0 and mask.sum() == 8 and not mask[0, :3].any() and mask[0, 3:6].all() and not mask[0, 6:].any()
    logits = np.asarray(models.forward(CFG, params, tokens), np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(
        -1, keepdims=True)
    nll = [-logp[b, t - 1, tokens[b, t]] for b in range(2) for t in range(1, 8) if mask[b, t]]
    np.testing.assert_allclose(float(sft.sft_loss(CFG, params, tokens, mask)), np.mean(nll), rtol=1e-5)
    np.testing.assert_allclose(float(sft.sft_loss(CFG, params, tokens, mask, chunk=3)), np.mean(nll), rtol=1e-5)
    _, _, cut = sft.encode_pairs(prompts_, responses, 6)
    assert cut == 1


def test_training_memorises_a_batch():
    rng = np.random.RandomState(0)
    prompts_ = [list(rng.randint(3, 32, 4)) for _ in range(8)]
    responses = [list(rng.randint(3, 32, 5)) + [2] for _ in range(8)]
    params, losses = sft.train(CFG, models.init_params(CFG, jax.random.key(1)), prompts_, responses, steps=60,
                               batch=8, length=16, optim=OptimConfig(lr=1e-2))
    assert losses[0][1] > 3.0 and losses[-1][1] < 0.3, losses


def test_packed_rows_and_unrolled_layers_give_the_padded_scanned_loss_and_gradient():
    """pack: 6 sequences of 3..9 tokens in rows of 12, first fit longest first; each attends only to
    itself with positions from 0, so the loss and its gradient equal one padded row per sequence.
    The same with the layer scan unrolled (ModelConfig.layer_unroll)."""
    rng = np.random.RandomState(0)
    prompts_ = [list(rng.randint(3, 32, n)) for n in (2, 3, 1, 4, 2, 3)]
    responses = [list(rng.randint(3, 32, n)) + [2] for n in (6, 1, 4, 4, 2, 5)]
    tokens, mask, _ = sft.encode_pairs(prompts_, responses, 12)
    lengths = np.array([len(p) + len(r) for p, r in zip(prompts_, responses)])  # 9 5 6 9 5 9
    pt, pm, pos, seg = sft.pack(tokens, mask, lengths, 12, row_multiple=2)
    assert pt.shape == (6, 12)  # rows 9+, 9+, 9+, 6+5, 5 (5 rows, rounded up to 6)
    assert pm.sum() == mask.sum() and sorted(pt[seg > 0].tolist()) == sorted(tokens[tokens > 0].tolist())
    assert seg.max() == 2 and list(pos[3, :11]) == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4] and not seg[5].any()
    params = models.init_params(CFG, jax.random.key(2))
    ref_l, ref_g = jax.value_and_grad(lambda p: sft.sft_loss(CFG, p, tokens, mask))(params)
    for cfg, args in ((CFG, (pt, pm, 0, pos, seg)), (CFG.replace(layer_unroll=2), (tokens, mask))):
        l, g = jax.value_and_grad(lambda p: sft.sft_loss(cfg, p, *args))(params)
        np.testing.assert_allclose(float(l), float(ref_l), rtol=1e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g, ref_g)
