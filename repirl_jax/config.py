"""Frozen, validated dataclasses for every knob. Errors name the field and the value."""
from __future__ import annotations

import dataclasses
import math

# Logical axis -> mesh axes. Params: FSDP shards the embed dim, tensor parallelism the
# heads / mlp / vocab dims (Megatron-style). Activations (act_*): batch over data+fsdp,
# heads / mlp / vocab over tensor, the residual stream's embed dim unsharded.
DEFAULT_RULES: tuple = (
    ("batch", ("data", "fsdp")),
    ("seq", None),
    ("layers", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh. One size may be -1: it takes the devices left over by the others."""

    shape: tuple[int, ...] = (-1, 1, 1)
    axis_names: tuple[str, ...] = ("data", "fsdp", "tensor")
    rules: tuple = DEFAULT_RULES

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(self.shape))
        object.__setattr__(self, "axis_names", tuple(self.axis_names))
        if len(self.shape) != len(self.axis_names):
            raise ValueError(f"MeshConfig.shape={self.shape}: needs one size per axis {self.axis_names}")
        if sum(s == -1 for s in self.shape) > 1 or any(s == 0 or s < -1 for s in self.shape):
            raise ValueError(f"MeshConfig.shape={self.shape}: sizes must be positive, at most one -1")
        names = set(self.axis_names)
        for logical, target in self.rules:
            for ax in (target,) if isinstance(target, str) else (target or ()):
                if ax not in names:
                    raise ValueError(f"MeshConfig.rules: {logical!r} -> {ax!r} is not a mesh axis {self.axis_names}")

    def resolved_shape(self, n_devices: int) -> tuple[int, ...]:
        known = math.prod(s for s in self.shape if s != -1)
        if -1 in self.shape:
            if n_devices % known:
                raise ValueError(f"MeshConfig.shape={self.shape}: {n_devices} devices not divisible by {known}")
            return tuple(n_devices // known if s == -1 else s for s in self.shape)
        if known != n_devices:
            raise ValueError(f"MeshConfig.shape={self.shape}: needs {known} devices, have {n_devices}")
        return self.shape
