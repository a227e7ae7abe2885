"""The device mesh and the one place where logical axis names become mesh axes.

Every array dimension carries a logical name (`batch, seq, embed, heads, kv_heads, head_dim, mlp,
vocab, layers`, and `act_*` for activations). A rules table maps each name to zero or more mesh
axes. A mesh axis is dropped for a dimension it does not divide (e.g. 9 heads over tensor=2) or
that another dimension of the same array already uses, so every config runs on every mesh, with
replication where sharding is impossible.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from .config import MeshConfig

Axes = tuple  # a tuple of logical names (or None) per array dimension


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Mesh with axes cfg.axis_names; the one -1 size takes the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    shape = cfg.resolved_shape(len(devices))
    # Auto axis types: this jax's make_mesh defaults to Explicit (sharding-in-types), which we don't use.
    dev_array = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(dev_array, cfg.axis_names, axis_types=(AxisType.Auto,) * len(shape))


@dataclasses.dataclass(frozen=True)
class Layout:
    """A mesh plus the logical-axis rules; hashable, so it can be a static jit argument."""

    mesh: Mesh
    rules: tuple[tuple[str, Any], ...]

    @classmethod
    def from_config(cls, cfg: MeshConfig, devices=None) -> "Layout":
        return cls(make_mesh(cfg, devices), cfg.rules)

    def spec(self, axes: Axes, shape: Sequence[int] | None = None) -> P:
        """PartitionSpec for an array with these logical axes (and shape, to check divisibility)."""
        table = dict(self.rules)
        used: set[str] = set()
        out = []
        for i, name in enumerate(axes):
            target = table.get(name) if name is not None else None
            if name is not None and name not in table:
                raise KeyError(f"logical axis {name!r} has no sharding rule (known: {sorted(table)})")
            cands = (target,) if isinstance(target, str) else tuple(target or ())
            picked, size = [], 1
            for ax in cands:
                n = self.mesh.shape[ax]
                if ax in used or n == 1:
                    continue
                if shape is not None and shape[i] % (size * n):
                    continue
                picked.append(ax)
                size *= n
            used.update(picked)
            out.append(None if not picked else picked[0] if len(picked) == 1 else tuple(picked))
        while out and out[-1] is None:
            out.pop()
        return P(*out)

    def sharding(self, axes: Axes, shape: Sequence[int] | None = None) -> NamedSharding:
        return NamedSharding(self.mesh, self.spec(axes, shape))

    def shardings(self, axes_tree, shapes_tree) -> Any:
        """Tree of NamedShardings; `shapes_tree` holds arrays or ShapeDtypeStructs."""
        return jax.tree.map(lambda ax, x: self.sharding(ax, x.shape), axes_tree, shapes_tree,
                            is_leaf=_is_axes)

    def constrain(self, x: jax.Array, axes: Axes) -> jax.Array:
        return jax.lax.with_sharding_constraint(x, self.sharding(axes, x.shape))

    def put(self, x: np.ndarray, axes: Axes) -> jax.Array:
        """Host array -> global array; each device receives only its own slice."""
        sh = self.sharding(axes, x.shape)
        return jax.make_array_from_callback(x.shape, sh, lambda idx: x[idx])

    @property
    def batch_size_multiple(self) -> int:
        """Global batch sizes must be a multiple of this for the batch to be sharded evenly."""
        ax = dict(self.rules).get("batch")
        ax = (ax,) if isinstance(ax, str) else tuple(ax or ())
        return math.prod(self.mesh.shape[a] for a in ax)


def _is_axes(x) -> bool:
    return isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)


def constrain(layout: Layout | None, x: jax.Array, axes: Axes) -> jax.Array:
    """Activation sharding constraint; a no-op without a layout (single device, plain jit)."""
    return x if layout is None else layout.constrain(x, axes)
