"""Tiny random HF models written with transformers' own save_pretrained: the numerics reference."""
import os
import zlib

import numpy as np
import torch


def one_device_xla_flags() -> str:
    """This session's XLA_FLAGS without the 8 emulated devices: one CPU device per process, as on a
    real host, with the other flags (conftest's compile setting, a user's own) kept."""
    return " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                    if not f.startswith("--xla_force_host_platform_device_count"))


# name -> (transformers config class name, kwargs). Odd widths, GQA, tied and untied
# embeddings, non-default rope_theta, Qwen3 head_dim != hidden / heads, rope scaling.
TINY_CONFIGS = {
    "llama_tied": ("LlamaConfig", dict(vocab_size=101, hidden_size=36, intermediate_size=70, num_hidden_layers=2,
                                       num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True,
                                       rope_theta=5000.0)),
    "llama_mha_untied": ("LlamaConfig", dict(vocab_size=97, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                                             num_attention_heads=4, num_key_value_heads=4, rms_norm_eps=1e-5)),
    "llama3_rope": ("LlamaConfig", dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, rope_theta=500000.0,
                                        max_position_embeddings=256,
                                        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                      "high_freq_factor": 4.0,
                                                      "original_max_position_embeddings": 16})),
    "qwen2": ("Qwen2Config", dict(vocab_size=103, hidden_size=40, intermediate_size=72, num_hidden_layers=2,
                                  num_attention_heads=5, num_key_value_heads=1, rope_theta=1e6)),
    "qwen2_yarn": ("Qwen2Config", dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                       rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                                     "original_max_position_embeddings": 32})),
    "qwen3": ("Qwen3Config", dict(vocab_size=99, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                                  num_attention_heads=6, num_key_value_heads=3, head_dim=20, tie_word_embeddings=True)),
    # Divisible by every mesh size we test: for the sharding tests.
    "llama_shard": ("LlamaConfig", dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=8, num_key_value_heads=4)),
}


def build_torch(name):
    import transformers

    cls_name, kw = TINY_CONFIGS[name]
    hf_cfg = getattr(transformers, cls_name)(**kw)
    # zlib.crc32, not hash(): str hashes are salted per process, so the weights (and every greedy path
    # a test builds on them) would change from run to run
    torch.manual_seed(zlib.crc32(name.encode()) % 1000)
    model = transformers.AutoModelForCausalLM.from_config(hf_cfg).float().eval()
    with torch.no_grad():  # random norms and biases too, so a swapped norm or bias is caught
        for n, p in model.named_parameters():
            if "norm" in n or "bias" in n:
                p.copy_(1 + 0.3 * torch.randn_like(p) if "norm" in n else 0.3 * torch.randn_like(p))
    return model


def save_tiny_hf(name, path):
    model = build_torch(name)
    model.save_pretrained(path)
    return path, model


def torch_logits(model, tokens):
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.float().numpy()


def random_tokens(vocab, shape, seed=0):
    return np.random.RandomState(seed).randint(0, vocab, shape).astype(np.int32)


def trees_equal(a, b) -> bool:
    """Same structure, dtypes and values, bit for bit."""
    import jax

    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(la, lb))
