"""HF checkpoint directories: the name map between HF tensors and our params, loading
safetensors (single file or sharded index) straight onto the mesh, and export."""
from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from ..sharding import Layout
from .config import ModelConfig, ModelLoadError
from .transformer import param_shapes_and_axes

log = logging.getLogger(__name__)
Getter = Callable[[str], np.ndarray]  # HF tensor name -> host array


def layer_map(cfg: ModelConfig) -> dict[str, tuple[str, Callable, Callable]]:
    """our layer key -> (HF name under model.layers.{i}., HF -> ours, ours -> HF).

    HF Linear weights are [out, in]; ours are [in, ...] with heads split out.
    """
    H, K, Dh, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size
    same = (lambda w: w, lambda w: w)
    T = (lambda w: w.T, lambda w: w.T)

    def proj(n):  # q/k/v: [n*Dh, D] <-> [D, n, Dh]
        return (lambda w: w.reshape(n, Dh, D).transpose(2, 0, 1),
                lambda w: w.transpose(1, 2, 0).reshape(n * Dh, D))

    def bias(n):
        return (lambda b: b.reshape(n, Dh), lambda b: b.reshape(n * Dh))

    m = {
        "attn_norm": ("input_layernorm.weight", *same),
        "wq": ("self_attn.q_proj.weight", *proj(H)),
        "wk": ("self_attn.k_proj.weight", *proj(K)),
        "wv": ("self_attn.v_proj.weight", *proj(K)),
        # o_proj: [D, H*Dh] <-> [H, Dh, D]
        "wo": ("self_attn.o_proj.weight", lambda w: w.reshape(D, H, Dh).transpose(1, 2, 0),
               lambda w: w.transpose(2, 0, 1).reshape(D, H * Dh)),
        "mlp_norm": ("post_attention_layernorm.weight", *same),
        "w_gate": ("mlp.gate_proj.weight", *T),
        "w_up": ("mlp.up_proj.weight", *T),
        "w_down": ("mlp.down_proj.weight", *T),
    }
    if cfg.attention_bias:
        m |= {"bq": ("self_attn.q_proj.bias", *bias(H)), "bk": ("self_attn.k_proj.bias", *bias(K)),
              "bv": ("self_attn.v_proj.bias", *bias(K))}
    if cfg.o_bias:
        m["bo"] = ("self_attn.o_proj.bias", *same)
    if cfg.qk_norm:
        m |= {"q_norm": ("self_attn.q_norm.weight", *same), "k_norm": ("self_attn.k_norm.weight", *same)}
    return m


TOP_MAP = {"embed": "model.embed_tokens.weight", "final_norm": "model.norm.weight", "lm_head": "lm_head.weight"}


def hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every HF tensor name the config needs -> its HF shape."""
    shapes, _ = param_shapes_and_axes(cfg)
    out = {TOP_MAP[k]: shapes[k] for k in TOP_MAP if k in shapes}
    for key, (name, _, to_hf) in layer_map(cfg).items():
        hf_shape = to_hf(np.empty(shapes["layers"][key][1:], np.int8)).shape
        for i in range(cfg.num_layers):
            out[f"model.layers.{i}.{name}"] = hf_shape
    return out


def params_from_hf(cfg: ModelConfig, get: Getter, layout: Layout | None = None) -> dict:
    """Builds our params from HF-named host tensors, placing each on the mesh as it is built
    (each device receives only its slice; at most one param is assembled on the host at a time)."""
    shapes, axes = param_shapes_and_axes(cfg)
    dt = jnp.dtype(cfg.param_dtype)

    def place(x: np.ndarray, ax) -> jax.Array:
        x = x.astype(dt)
        return jnp.asarray(x) if layout is None else layout.put(x, ax)

    params = {k: place(get(TOP_MAP[k]), axes[k]) for k in TOP_MAP if k in shapes}
    params["layers"] = {}
    for key, (name, to_ours, _) in layer_map(cfg).items():
        stacked = np.stack([to_ours(get(f"model.layers.{i}.{name}")) for i in range(cfg.num_layers)])
        params["layers"][key] = place(stacked, axes["layers"][key])
    return params


def params_to_hf(cfg: ModelConfig, params: dict) -> dict[str, np.ndarray]:
    """Our params -> HF-named host arrays in the param dtype."""
    host = jax.device_get(params)
    out = {TOP_MAP[k]: np.asarray(host[k]) for k in TOP_MAP if k in host}
    for key, (name, _, to_hf) in layer_map(cfg).items():
        for i in range(cfg.num_layers):
            out[f"model.layers.{i}.{name}"] = np.ascontiguousarray(to_hf(np.asarray(host["layers"][key][i])))
    return out


# ------------------------------------------------------------------------------- loading
def _open_safetensors(path: str):
    try:
        return safe_open(path, framework="np")
    except (SafetensorError, OSError) as e:
        raise ModelLoadError(f"{path}: unreadable safetensors file (truncated or corrupt?): {e}") from None


def safetensors_index(model_dir: str) -> dict[str, str]:
    """HF tensor name -> the file holding it (single file or sharded index)."""
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ModelLoadError(f"{index}: not a valid index (field weight_map): {e}") from None
        return {k: os.path.join(model_dir, v) for k, v in weight_map.items()}
    single = os.path.join(model_dir, "model.safetensors")
    if not os.path.isfile(single):
        raise ModelLoadError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")
    with _open_safetensors(single) as f:
        return {k: single for k in f.keys()}


def load_hf_dir(model_dir: str, layout: Layout | None = None, dtype: str = "float32") -> tuple[ModelConfig, dict]:
    """Loads an HF directory. Every shape is checked from the file headers before any tensor
    is read, so a bad checkpoint fails fast with the file and tensor named."""
    if not os.path.isdir(model_dir):
        raise ModelLoadError(f"{model_dir}: not a directory")
    cfg = ModelConfig.from_file(os.path.join(model_dir, "config.json"), dtype=dtype, param_dtype=dtype)
    where = safetensors_index(model_dir)
    expected = hf_shapes(cfg)
    handles = {}
    try:
        for name, shape in expected.items():
            if name not in where:
                raise ModelLoadError(f"{model_dir}: tensor {name} missing from the checkpoint")
            path = where[name]
            if path not in handles:
                if not os.path.isfile(path):
                    raise ModelLoadError(f"{path}: file not found (named by the index for {name})")
                handles[path] = _open_safetensors(path).__enter__()
            try:
                got = tuple(handles[path].get_slice(name).get_shape())
            except SafetensorError as e:
                raise ModelLoadError(f"{path}: tensor {name}: {e}") from None
            if got != tuple(shape):
                raise ModelLoadError(f"{path}: tensor {name} has shape {list(got)}, config.json implies {list(shape)}")
        unused = sorted(set(where) - set(expected) - {"lm_head.weight"})
        if unused:
            log.warning("%s: %d tensors not used by the model, e.g. %s", model_dir, len(unused), unused[0])

        def get(name: str) -> np.ndarray:
            try:
                return handles[where[name]].get_tensor(name)
            except SafetensorError as e:
                raise ModelLoadError(f"{where[name]}: tensor {name}: unreadable ({e})") from None

        return cfg, params_from_hf(cfg, get, layout)
    finally:
        for h in handles.values():
            h.__exit__(None, None, None)


# ------------------------------------------------------------------------------- export
def export_hf(cfg: ModelConfig, params: dict, out_dir: str, tokenizer=None,
              max_shard_bytes: int = 2 << 30) -> str:
    """Writes config.json, safetensors (sharded with an index above max_shard_bytes) and the
    tokenizer files. Written to a temp dir and renamed, so a crash never leaves a half export."""
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.isfile(os.path.join(out_dir, "config.json")):
        raise FileExistsError(f"{out_dir}: exists and is not a model directory; refusing to overwrite it")
    tensors = params_to_hf(cfg, params)
    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(cfg.to_hf(), f, indent=2)
    gen = {k: v for k, v in {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.to_hf()["eos_token_id"],
                             "pad_token_id": cfg.pad_token_id}.items() if v is not None}
    with open(os.path.join(tmp, "generation_config.json"), "w") as f:
        json.dump(gen, f, indent=2)
    shards, cur, size = [], {}, 0
    for name, arr in tensors.items():
        if cur and size + arr.nbytes > max_shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[name], size = arr, size + arr.nbytes
    shards.append(cur)
    if len(shards) == 1:
        save_file(shards[0], os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, os.path.join(tmp, fname), metadata={"format": "pt"})
            weight_map |= {k: fname for k in shard}
        total = sum(a.nbytes for a in tensors.values())
        with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir
