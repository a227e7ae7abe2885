"""GGUF files of the llama architecture: config from metadata, tensors dequantized with
`gguf.quants.dequantize` and renamed to HF names (with llama.cpp's q/k row permutation undone),
and the tokenizer rebuilt from the metadata by transformers' GGUF converter."""
from __future__ import annotations

import logging
import os

import numpy as np

from ..sharding import Layout
from .config import ModelConfig, ModelLoadError
from .hf import hf_shapes, params_from_hf

log = logging.getLogger(__name__)
SUPPORTED_ARCH = ("llama",)

# GGUF tensor name -> HF name ({i} = layer)
GGUF_TO_HF = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}


def _hf_name(gguf_name: str) -> str | None:
    if gguf_name.startswith("blk."):
        _, i, rest = gguf_name.split(".", 2)
        pattern = GGUF_TO_HF.get(f"blk.{{i}}.{rest}")
        return pattern.format(i=i) if pattern else None
    return GGUF_TO_HF.get(gguf_name)


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k permutation (interleaved RoPE pairs -> HF's rotate-half halves).

    llama.cpp wrote w.reshape(n, 2, Dh/2, D).swapaxes(1, 2); this is its inverse.
    """
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader, key, default=None, required=False, path=""):
    f = reader.get_field(key)
    if f is None:
        if required:
            raise ModelLoadError(f"{path}: GGUF metadata field {key} missing")
        return default
    return f.contents()


def read_config(reader, path: str, dtype: str = "float32") -> ModelConfig:
    arch = _field(reader, "general.architecture", required=True, path=path)
    if arch not in SUPPORTED_ARCH:
        raise ModelLoadError(f"{path}: GGUF field general.architecture={arch!r} is not supported "
                             f"(supported: {', '.join(SUPPORTED_ARCH)})")
    req = lambda k: _field(reader, f"{arch}.{k}", required=True, path=path)
    heads = int(req("attention.head_count"))
    d_model = int(req("embedding_length"))
    tokens = reader.get_field("tokenizer.ggml.tokens")
    vocab = _field(reader, f"{arch}.vocab_size") or (len(tokens.data) if tokens else None)
    if vocab is None:
        raise ModelLoadError(f"{path}: GGUF metadata has neither {arch}.vocab_size nor tokenizer.ggml.tokens")
    rope = {}
    kind = _field(reader, f"{arch}.rope.scaling.type")
    if kind not in (None, "none"):
        if kind != "linear":
            raise ModelLoadError(f"{path}: GGUF field {arch}.rope.scaling.type={kind!r} is not supported")
        rope = {"rope_type": "linear", "factor": float(req("rope.scaling.factor"))}
    if any(t.name == "rope_freqs.weight" for t in reader.tensors):
        raise ModelLoadError(f"{path}: tensor rope_freqs.weight (per-frequency RoPE factors) is not supported")
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    return ModelConfig(
        family="llama",
        vocab_size=int(vocab),
        hidden_size=d_model,
        intermediate_size=int(req("feed_forward_length")),
        num_layers=int(req("block_count")),
        num_heads=heads,
        num_kv_heads=int(_field(reader, f"{arch}.attention.head_count_kv", heads)),
        head_dim=int(_field(reader, f"{arch}.attention.key_length", d_model // heads)),
        rope_theta=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        rope_scaling=tuple(sorted(rope.items())),
        rms_norm_eps=float(req("attention.layer_norm_rms_epsilon")),
        tie_word_embeddings=not any(t.name == "output.weight" for t in reader.tensors),
        max_position_embeddings=int(_field(reader, f"{arch}.context_length", 2048)),
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=None if eos is None else int(eos),
        pad_token_id=_field(reader, "tokenizer.ggml.padding_token_id"),
        dtype=dtype,
        param_dtype=dtype,
    )


def open_reader(path: str):
    import gguf

    if not os.path.isfile(path):
        raise ModelLoadError(f"{path}: file not found")
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # the reader raises ValueError / IndexError / struct errors on bad files
        raise ModelLoadError(f"{path}: not a readable GGUF file: {type(e).__name__}: {e}") from None


def load_gguf(path: str, layout: Layout | None = None, dtype: str = "float32") -> tuple[ModelConfig, dict]:
    import gguf

    reader = open_reader(path)
    cfg = read_config(reader, path, dtype)
    by_hf = {}
    for t in reader.tensors:
        name = _hf_name(t.name)
        if name is None:
            log.warning("%s: GGUF tensor %s not used by the model", path, t.name)
            continue
        by_hf[name] = t
    expected = hf_shapes(cfg)
    for name, shape in expected.items():
        t = by_hf.get(name)
        if t is None:
            raise ModelLoadError(f"{path}: tensor for {name} missing from the GGUF file")
        got = tuple(int(n) for n in reversed(t.shape))  # GGUF lists ne0 (fastest) first
        if got != tuple(shape):
            raise ModelLoadError(f"{path}: tensor {t.name} has shape {list(got)}, the metadata implies {list(shape)}")

    def get(name: str) -> np.ndarray:
        t = by_hf[name]
        try:
            w = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise ModelLoadError(f"{path}: tensor {t.name} has type {t.tensor_type.name}, "
                                 "which gguf cannot dequantize") from None
        w = np.asarray(w, np.float32).reshape(expected[name])
        if name.endswith("q_proj.weight"):
            w = unpermute(w, cfg.num_heads)
        elif name.endswith("k_proj.weight"):
            w = unpermute(w, cfg.num_kv_heads)
        return w

    return cfg, params_from_hf(cfg, get, layout)


def load_gguf_tokenizer(path: str):
    """A transformers fast tokenizer (with the chat template) rebuilt from the GGUF metadata."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path))
