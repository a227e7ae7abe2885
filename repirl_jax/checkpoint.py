"""Checkpoints with orbax: the whole TrainState (restored straight into its shardings) plus a
JSON item for everything the host loop needs to resume exactly (data cursor, sampler seed,
config, metrics so far). Saves are async; the last `keep` are kept. orbax writes each step to a
temporary directory and renames it when complete, and the manager lists only finished steps, so a
save interrupted mid-write is never restored."""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
        self.dir = os.path.abspath(os.path.join(workdir, "checkpoints"))
        opts = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(self.dir, options=opts, item_names=("state", "extras"))

    def save(self, step: int, state: Any, extras: dict) -> None:
        """Starts saving `state` (any pytree of arrays) and `extras` (JSON-serialisable) as `step`."""
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        extras=ocp.args.JsonSave(extras)))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """(state, extras) of `step` (default: the latest). `abstract_state` is a pytree of
        jax.ShapeDtypeStruct whose `sharding` says where each restored array goes."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{self.dir}: no finished checkpoint")
        out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                                 extras=ocp.args.JsonRestore()))
        return out.state, out.extras

    def wait(self) -> None:
        """Blocks until the async save in flight (if any) is on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a live pytree: the restore target that puts every
    array back where it is now."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
