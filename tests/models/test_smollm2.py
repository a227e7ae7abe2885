"""The packaged SmolLM2-135M-Instruct GGUF against transformers' own GGUF loader."""
import os

import numpy as np
import pytest
import torch

from repirl_jax import models, sampling

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def chat_ids(smollm2):
    _, _, tok, _ = smollm2
    return tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=True)["input_ids"]


def test_gguf_logits_match_transformers_gguf_loader(smollm2, chat_ids):
    import transformers

    cfg, params, _, _ = smollm2
    gguf_path = models.smollm2_gguf()
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path), dtype=torch.float32).eval()
    with torch.no_grad():
        want = ref(torch.tensor([chat_ids])).logits[0, -1].numpy()
    got = np.asarray(models.forward(cfg, params, np.array([chat_ids], np.int32)))[0, -1]
    assert list(np.argsort(-got)[:5]) == list(np.argsort(-want)[:5])
    assert np.abs(got - want).max() <= 1e-3


def test_direct_gguf_load_equals_converted_dir(smollm2):
    cfg, params, _, _ = smollm2
    cfg_g, params_g = models.load(models.smollm2_gguf())
    assert cfg_g == cfg
    for a, b in zip(*map(lambda t: __import__("jax").tree.leaves(t), (params, params_g))):
        assert np.array_equal(a, b)


def test_gguf_tokenizer_and_chat_template(smollm2, chat_ids):
    cfg, _, tok, _ = smollm2
    assert tok.decode(chat_ids).startswith("<|im_start|>system\n")
    assert tok.convert_ids_to_tokens(cfg.eos_token_id) == "<|im_end|>"
    assert tok("12345")["input_ids"] == tok("1")["input_ids"] + tok("2")["input_ids"] + tok("3")["input_ids"] + \
        tok("4")["input_ids"] + tok("5")["input_ids"]  # SmolLM2 splits digits


def test_greedy_answer_says_paris(smollm2, chat_ids):
    cfg, params, tok, _ = smollm2
    out = sampling.generate(cfg, params, [chat_ids], max_new_tokens=24, eos_id=cfg.eos_ids)
    text = tok.decode(out.tokens[0][out.mask[0]])
    assert "Paris" in text, text
    assert out.tokens[0][out.mask[0]][-1] == cfg.eos_token_id  # it stopped on its own EOS
