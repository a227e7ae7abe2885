"""Architecture config of a decoder LM, read from and written to HF `config.json` dicts."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

FAMILIES = ("llama", "qwen2", "qwen3")
ROPE_TYPES = ("default", "linear", "llama3", "yarn")
DTYPES = ("float32", "bfloat16")
REMAT = ("none", "full", "dots")


class ModelLoadError(ValueError):
    """Raised with one line naming the file and the field or tensor that is wrong."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    family: str  # llama | qwen2 | qwen3
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    # Sorted (key, value) pairs of the HF rope parameters besides theta (hashable, so the
    # config can be a static jit argument); () means plain RoPE.
    rope_scaling: tuple = ()
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v biases (always in Qwen2; optional in Llama/Qwen3, with o bias)
    qk_norm: bool = False  # per-head RMSNorm on q and k (Qwen3)
    max_position_embeddings: int = 2048
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    dtype: str = "float32"  # compute dtype; logits and softmax are always float32
    param_dtype: str = "float32"
    remat: str = "none"  # none | full | dots: what each scanned layer saves for the backward pass
    # lax.scan's unroll factor over the layers in passes without a KV cache (training, scoring): on
    # XLA:CPU the demo's 2-layer width-128 model trains 1.3x faster fully unrolled (the scan's per-layer
    # slices and stacked residuals cost as much as its small matmuls); compile time grows with it, and
    # the decode keeps the plain scan (unrolled, its per-layer cache reads were slower here)
    layer_unroll: int = 1
    # training a part of the model: the lowest frozen_layers layers (and the embedding lookup that feeds
    # them) take no gradient. Passes without a KV cache run them as their own scan under stop_gradient,
    # so the backward pass stops above them: no residuals kept for them and no backward compute. Values
    # are unchanged; a tied embedding still trains through the unembedding.
    frozen_layers: int = 0

    def __post_init__(self):
        def bad(field, why):
            raise ValueError(f"ModelConfig.{field}={getattr(self, field)!r}: {why}")

        if self.family not in FAMILIES:
            bad("family", f"unsupported; expected one of {FAMILIES}")
        for f in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                  "num_kv_heads", "head_dim"):
            if not isinstance(getattr(self, f), int) or getattr(self, f) <= 0:
                bad(f, "must be a positive int")
        if self.num_heads % self.num_kv_heads:
            bad("num_kv_heads", f"must divide num_heads={self.num_heads}")
        if self.dtype not in DTYPES:
            bad("dtype", f"expected one of {DTYPES}")
        if self.param_dtype not in DTYPES:
            bad("param_dtype", f"expected one of {DTYPES}")
        if self.remat not in REMAT:
            bad("remat", f"expected one of {REMAT}")
        if not isinstance(self.layer_unroll, int) or self.layer_unroll < 1:
            bad("layer_unroll", "must be an int >= 1 (1 = a plain scan over the layers)")
        if not isinstance(self.frozen_layers, int) or not 0 <= self.frozen_layers <= self.num_layers:
            bad("frozen_layers", f"must be an int in [0, num_layers={self.num_layers}]")
        if self.family == "qwen2" and not self.attention_bias:
            bad("attention_bias", "qwen2 always has q/k/v biases")
        if self.rope_type not in ROPE_TYPES:
            bad("rope_scaling", f"rope type {self.rope_type!r} unsupported; expected one of {ROPE_TYPES}")

    @property
    def rope_type(self) -> str:
        return dict(self.rope_scaling).get("rope_type", "default")

    @property
    def o_bias(self) -> bool:
        """HF Llama/Qwen3 put a bias on o_proj too when attention_bias; Qwen2 never does."""
        return self.attention_bias and self.family != "qwen2"

    @property
    def eos_ids(self) -> tuple[int, ...]:
        e = self.eos_token_id
        return () if e is None else (e,) if isinstance(e, int) else tuple(e)

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    # ---------------------------------------------------------------- HF config.json
    @classmethod
    def from_hf(cls, d: dict[str, Any], source: str = "config.json", **overrides) -> "ModelConfig":
        """Builds a config from an HF config dict; errors name `source` and the field."""
        mt = d.get("model_type")
        if mt not in FAMILIES:
            raise ModelLoadError(f"{source}: field model_type={mt!r} is not supported "
                                 f"(supported: {', '.join(FAMILIES)})")
        if d.get("hidden_act", "silu") != "silu":
            raise ModelLoadError(f"{source}: field hidden_act={d['hidden_act']!r} is not supported (only 'silu')")
        if d.get("use_sliding_window"):
            raise ModelLoadError(f"{source}: field use_sliding_window=true is not supported")
        if d.get("mlp_bias"):
            raise ModelLoadError(f"{source}: field mlp_bias=true is not supported")
        for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads"):
            if not isinstance(d.get(k), int):
                raise ModelLoadError(f"{source}: field {k}={d.get(k)!r} missing or not an int")
        heads = d["num_attention_heads"]
        # transformers 5 writes rope_parameters (theta inside); older files rope_theta + rope_scaling.
        rope = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
        theta = float(rope.pop("rope_theta", d.get("rope_theta", 10000.0)))
        if "type" in rope:  # pre-4.45 spelling
            rope["rope_type"] = rope.pop("type")
        rope = {k: v for k, v in rope.items() if v is not None}
        if rope.get("rope_type", "default") == "default":
            rope = {}
        if rope.get("rope_type", "default") not in ROPE_TYPES:
            raise ModelLoadError(f"{source}: field rope_type={rope['rope_type']!r} is not supported "
                                 f"(supported: {', '.join(ROPE_TYPES)})")
        kw = dict(
            family=mt,
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_layers=d["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or d["hidden_size"] // heads,
            rope_theta=theta,
            rope_scaling=tuple(sorted(rope.items())),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=mt == "qwen2" or bool(d.get("attention_bias", False)),
            qk_norm=mt == "qwen3",
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=tuple(d["eos_token_id"]) if isinstance(d.get("eos_token_id"), list) else d.get("eos_token_id"),
            pad_token_id=d.get("pad_token_id"),
        )
        kw.update(overrides)
        try:
            return cls(**kw)
        except ValueError as e:
            raise ModelLoadError(f"{source}: {e}") from None

    @classmethod
    def from_file(cls, path: str, **overrides) -> "ModelConfig":
        if not os.path.isfile(path):
            raise ModelLoadError(f"{path}: file not found")
        try:
            with open(path) as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise ModelLoadError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
        return cls.from_hf(d, source=path, **overrides)

    def to_hf(self) -> dict[str, Any]:
        arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
        d = {
            "architectures": [arch[self.family]],
            "model_type": self.family,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_theta": self.rope_theta, "rope_type": "default", **dict(self.rope_scaling)},
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": self.param_dtype,
        }
        if self.family != "qwen2":
            d["attention_bias"] = self.attention_bias
        if self.family != "llama":
            d["use_sliding_window"] = False
        return d
