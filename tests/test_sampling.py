"""The generation core: greedy equals transformers' generate; log-probs equal the forward's."""
import jax
import numpy as np
import torch

from repirl_jax import models, sampling
from tests.helpers import random_tokens

PROMPTS = [[5, 17, 3], [9, 1, 44, 20, 8, 31, 2, 60], [12, 40, 7, 7, 13]]


def test_greedy_equals_transformers_generate(tiny_hf):
    path, ref = tiny_hf("qwen3")
    cfg, params = models.load(path)
    out = sampling.generate(cfg, params, PROMPTS, max_new_tokens=24)
    assert out.tokens.shape == (3, 24) and out.mask.all()
    for i, p in enumerate(PROMPTS):
        want = ref.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                            max_new_tokens=24, min_new_tokens=24, do_sample=False, pad_token_id=0)[0, len(p):]
        assert out.tokens[i].tolist() == want.tolist(), i


def test_logprobs_equal_forward_and_rows_stop_at_eos(tiny_hf):
    path, _ = tiny_hf("llama_tied")
    cfg, params = models.load(path)
    out = sampling.generate(cfg, params, PROMPTS, max_new_tokens=12, temperature=1.0, num_samples=2, seed=3,
                            eos_id=[4, 11, 30])
    assert out.tokens.shape == (6, 12)
    for n in range(6):
        p = PROMPTS[n // 2]
        L = int(out.lengths[n])
        assert out.mask[n, :L].all() and not out.mask[n, L:].any()
        if L < 12:
            assert out.tokens[n, L - 1] in (4, 11, 30)
        seq = np.array([p + out.tokens[n, :L].tolist()], np.int32)
        logp = jax.nn.log_softmax(models.forward(cfg, params, seq)[0], axis=-1)
        want = np.asarray(logp)[len(p) - 1:len(p) - 1 + L][np.arange(L), out.tokens[n, :L]]
        np.testing.assert_allclose(out.logprobs[n, :L], want, atol=1e-4)
        # temperature 1, no truncation: the sampling distribution is the model's own
        np.testing.assert_allclose(out.sample_logprobs[n, :L], want, atol=1e-4)


def test_same_seed_same_samples_different_seed_different(tiny_hf):
    path, _ = tiny_hf("qwen2")
    cfg, params = models.load(path)
    a = sampling.generate(cfg, params, PROMPTS, max_new_tokens=10, temperature=1.0, top_k=20, top_p=0.9, seed=1)
    b = sampling.generate(cfg, params, PROMPTS, max_new_tokens=10, temperature=1.0, top_k=20, top_p=0.9, seed=1)
    c = sampling.generate(cfg, params, PROMPTS, max_new_tokens=10, temperature=1.0, top_k=20, top_p=0.9, seed=2)
    assert np.array_equal(a.tokens, b.tokens) and not np.array_equal(a.tokens, c.tokens)
    assert (a.sample_logprobs >= a.logprobs - 1e-5).all()  # truncation only raises kept tokens' mass
