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
