"""Decoder LMs (Llama / Qwen2 / Qwen3) as pure functions, and their weights in and out.

    cfg, params = models.load(path, dtype="float32")    # HF dir or .gguf file
    logits = models.forward(cfg, params, tokens)        # int32 [B, L] -> float32 [B, L, V]
    models.export_hf(cfg, params, out_dir)              # transformers loads it back
"""
from __future__ import annotations

import os

import jax

from ..sharding import Layout
from . import transformer
from .config import ModelConfig, ModelLoadError
from .gguf_io import load_gguf, load_gguf_tokenizer
from .hf import export_hf, load_hf_dir
from .packaged import model_dir, smollm2_dir, smollm2_gguf
from .transformer import (abstract_params, hidden_states, init_cache, init_params, param_axes,
                          unembed)

# Jitted; cfg and layout are static (both hashable).
forward = jax.jit(transformer.forward, static_argnums=0, static_argnames=("layout",))


def load(path: str, dtype: str = "float32", layout: Layout | None = None) -> tuple[ModelConfig, dict]:
    """Loads an HF directory (config.json + safetensors, sharded index too) or a .gguf file,
    placing the params on `layout`'s mesh when given. Bad input raises ModelLoadError."""
    if path.endswith(".gguf"):
        return load_gguf(path, layout, dtype)
    if os.path.isdir(path):
        return load_hf_dir(path, layout, dtype)
    raise ModelLoadError(f"{path}: not found (expected an HF model directory or a .gguf file)")


def load_tokenizer(path: str):
    """The transformers tokenizer of an HF directory or a .gguf file."""
    if path.endswith(".gguf"):
        return load_gguf_tokenizer(path)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


__all__ = ["ModelConfig", "ModelLoadError", "load", "load_tokenizer", "forward", "export_hf", "init_params",
           "param_axes", "abstract_params", "hidden_states", "unembed", "init_cache", "model_dir", "smollm2_dir",
           "smollm2_gguf", "transformer"]
