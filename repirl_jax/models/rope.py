"""Rotary position embeddings in the HF "rotate half" layout, with the scaling types that
Llama-3 (`llama3`), Qwen2.5 long-context (`yarn`) and older configs (`linear`) use."""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from .config import ModelConfig


def inv_freq_and_scale(cfg: ModelConfig) -> tuple[np.ndarray, float]:
    """Returns (inv_freq [head_dim/2] float32, attention factor applied to cos and sin).

    Computed on the host in numpy: it depends only on the config, so it is a constant of the graph.
    """
    dim, base = cfg.head_dim, cfg.rope_theta
    p = dict(cfg.rope_scaling)
    inv_freq = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float32) / dim)
    kind = cfg.rope_type
    if kind == "default":
        return inv_freq, 1.0
    if kind == "linear":
        return inv_freq / p["factor"], 1.0
    if kind == "llama3":
        factor, lo, hi = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
        old_len = p["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > old_len / lo, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old_len / hi) & ~(wavelen > old_len / lo)
        return np.where(medium, smoothed, scaled).astype(np.float32), 1.0
    if kind == "yarn":
        old_len = p["original_max_position_embeddings"]
        factor = p.get("factor") or cfg.max_position_embeddings / old_len

        def mscale(scale, m=1.0):
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        attn = p.get("attention_factor")
        if attn is None:
            m, m_all = p.get("mscale"), p.get("mscale_all_dim")
            attn = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)

        def corr_dim(rot):
            return dim * math.log(old_len / (rot * 2 * math.pi)) / (2 * math.log(base))

        low, high = corr_dim(p.get("beta_fast") or 32), corr_dim(p.get("beta_slow") or 1)
        if p.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
        extrap = 1 - ramp
        inv = inv_freq / factor * (1 - extrap) + inv_freq * extrap
        return inv.astype(np.float32), float(attn)
    raise ValueError(f"rope type {kind!r} unsupported")


def cos_sin(cfg: ModelConfig, positions_BL: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """cos, sin of shape [B, L, head_dim] in float32."""
    inv_freq, scale = inv_freq_and_scale(cfg)
    ang_BLH = positions_BL.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    ang_BLD = jnp.concatenate([ang_BLH, ang_BLH], axis=-1)
    return jnp.cos(ang_BLD) * scale, jnp.sin(ang_BLD) * scale


def apply(x_BLND: jnp.ndarray, cos_BLD: jnp.ndarray, sin_BLD: jnp.ndarray) -> jnp.ndarray:
    """x * cos + rotate_half(x) * sin, computed in float32, returned in x's dtype."""
    x = x_BLND.astype(jnp.float32)
    x1, x2 = jnp.split(x, 2, axis=-1)
    rot = jnp.concatenate([-x2, x1], axis=-1)
    out = x * cos_BLD[:, :, None, :] + rot * sin_BLD[:, :, None, :]
    return out.astype(x_BLND.dtype)
