"""Checkpoints with orbax: the whole TrainState (restored straight into its shardings) plus a
JSON item for everything the host loop needs to resume exactly (data cursor, sampler seed,
config, metrics so far). Saves are async; the last `keep` are kept. orbax writes each step to a
temporary directory and renames it when complete, and the manager lists only finished steps, so a
save interrupted mid-write is never restored (its leftover temporary directory is removed when
the next run starts).

Faults a long run meets end in one CheckpointError line, never a half-written state: a finished
checkpoint that no longer restores (truncated or deleted files) is skipped for the newest one
that does, and a save that cannot fit on the disk is refused before it starts."""
from __future__ import annotations

import logging
import os
import shutil
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)
HEADROOM_BYTES = 8 << 20  # metadata, manifests and the tree's JSON beside the arrays' bytes


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or none restores: one line saying which and what to do."""


def _first_line(e: BaseException) -> str:
    """The first line of the innermost cause: orbax wraps tensorstore's telling error (OUT_OF_RANGE,
    NOT_FOUND, RESOURCE_EXHAUSTED ...) in a generic one whose first line is a repr of its spec."""
    while e.__cause__ is not None and e.__cause__ is not e:
        e = e.__cause__
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300]}" if text else type(e).__name__


def _drop_orbax_leftovers() -> None:
    """When a restore or an async save fails, orbax abandons its other reads and writes: their
    coroutines, once collected, and tensorstore's callbacks into orbax's event loop, already closed,
    each print an unraisable-exception traceback ('Exception ignored ...', 'RuntimeError: Event loop
    is closed'), and the gathered reads whose first error was already raised are logged by asyncio
    ('Future exception was never retrieved', when collected, so only in some runs); a failed async
    save is also logged by orbax's writer thread with its traceback ('... raised an exception').
    Pages of them for a fault already reported in one line. Those, and only those, are dropped."""
    default = sys.unraisablehook
    if getattr(default, "drops_orbax_leftovers", False):
        return
    for name in ("asyncio", "absl"):
        logging.getLogger(name).addFilter(_not_an_orbax_leftover)

    def hook(u):
        code = getattr(u.object, "cr_code", None)  # a coroutine object
        abandoned = code is not None and f"orbax{os.sep}checkpoint" in code.co_filename
        closed_loop = (u.object is None and isinstance(u.exc_value, RuntimeError)
                       and str(u.exc_value) == "Event loop is closed")
        if not (abandoned or closed_loop):
            default(u)
    hook.drops_orbax_leftovers = True
    sys.unraisablehook = hook


_DIRS: set[str] = set()  # the checkpoint directories of this process's Checkpointers


# how asyncio and orbax word the records of a failed read or write whose error our code reports itself
_LEFTOVER_PHRASES = ("exception was never retrieved", "raised an exception", "Failed to run",
                     "Save Finalize thread")


def _not_an_orbax_leftover(record: logging.LogRecord) -> bool:
    """False for asyncio's and orbax's records (with their tracebacks) of a failed read or write of
    one of our checkpoint directories, named in the message or in the logged exception's chain:
    restore() warns of that error and a failed save raises it as one CheckpointError line."""
    msg = record.getMessage()
    if not any(p in msg for p in _LEFTOVER_PHRASES):
        return True
    text, e = [msg], record.exc_info[1] if record.exc_info else None
    while e is not None and len(text) < 10:
        text.append(str(e))
        e = e.__cause__ or e.__context__
    return not any(d in t for d in _DIRS for t in text)


class Checkpointer:
    def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
        _drop_orbax_leftovers()
        self.dir = os.path.abspath(os.path.join(workdir, "checkpoints"))
        _DIRS.add(self.dir)
        self.aside = self.dir + ".set_aside"  # skipped checkpoints go here, never deleted
        opts = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
                                            cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.dir, options=opts, item_names=("state", "extras"))
        self.saving: int | None = None  # the step of the last save started
        self.failed = False

    def save(self, step: int, state: Any, extras: dict) -> None:
        """Starts saving `state` (any pytree of arrays) and `extras` (JSON-serialisable) as `step`.
        Raises CheckpointError when the previous save failed or this one cannot fit on the disk
        (checked first: orbax's own failure arrives later, from a background thread, as pages of
        tracebacks)."""
        self.check()
        need = self._size_of(self.latest_step(), state) + HEADROOM_BYTES
        free = shutil.disk_usage(self.dir).free
        if free < need:
            self.failed = True
            raise CheckpointError(f"{self.dir}: no space for step {step}'s checkpoint ({free >> 20} MiB free, it needs "
                                  f"about {need >> 20} MiB); {self._resume_hint()}")
        try:  # orbax first waits for the save in flight, and raises its failure here
            self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                            extras=ocp.args.JsonSave(extras)))
        except Exception as e:
            raise self._save_failed(e) from None
        self.saving = step

    def _size_of(self, step: int | None, state: Any) -> int:
        """Bytes the next checkpoint of `state` takes: as many as the last finished one (the same
        tree; OCDBT compresses, e.g. the all-zero rows of Adam's moments for unseen tokens), or,
        before the first, the arrays' own bytes (an upper bound)."""
        if step is None:
            return sum(x.nbytes for x in jax.tree.leaves(state))
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(os.path.join(self.dir, str(step)))
                   for f in files)

    def check(self) -> None:
        """Raises CheckpointError if an async save that has already finished failed."""
        try:
            self.manager.check_for_errors()
        except Exception as e:  # orbax passes on whatever the storage layer raised
            raise self._save_failed(e) from None

    def _save_failed(self, e: BaseException) -> CheckpointError:
        self.failed = True
        self.manager.reload()  # the failed step is not a finished one
        return CheckpointError(f"{self.dir}: saving step {self.saving} failed ({_first_line(e)}); {self._resume_hint()}")

    def _resume_hint(self) -> str:
        latest = self.latest_step()
        return ("stopped; " + (f"the latest finished checkpoint is step {latest}" if latest is not None else
                               "no checkpoint is finished yet") + ": fix the cause and rerun the same command")

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """The finished checkpoints' steps, oldest first."""
        return sorted(self.manager.all_steps())

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """(state, extras) of `step`, or by default of the newest checkpoint that restores: each
        newer one that does not is named in a warning with its error's first line. Checkpoints
        newer than the one restored are moved to checkpoints.set_aside/ (orbax skips any save of a
        step below its latest, so the resumed run could not save beside them). `abstract_state`
        is a pytree of jax.ShapeDtypeStruct whose `sharding` says where each restored array goes."""
        steps = self.all_steps()[::-1]
        if not steps:
            raise FileNotFoundError(f"{self.dir}: no finished checkpoint")
        if step is not None and step not in steps:
            raise CheckpointError(f"train.resume_from={step}: {self.dir} holds steps {sorted(steps)}")
        for s in steps if step is None else [step]:
            try:
                out = self.manager.restore(s, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), extras=ocp.args.JsonRestore()))
            except Exception as e:  # a damaged file surfaces as any of orbax's / tensorstore's errors
                log.warning("checkpoint step %d in %s does not restore (%s); %s", s, self.dir, _first_line(e),
                            "trying an older one" if step is None and s != steps[-1] else "none left to try")
                if step is not None:
                    raise CheckpointError(f"train.resume_from={step}: that checkpoint does not restore "
                                          f"({_first_line(e)})") from None
                continue
            self._set_aside([x for x in steps if x > s])
            return out.state, out.extras
        raise CheckpointError(f"{self.dir}: none of the checkpoints (steps {sorted(steps)}) restores (see the "
                              "warnings above); move the directory away or use a new --workdir to start over")

    def _set_aside(self, steps: list[int]) -> None:
        if not steps:
            return
        if jax.process_index() == 0:  # one process moves; every process then sees the same directory
            os.makedirs(self.aside, exist_ok=True)
            for s in steps:
                dest, n = os.path.join(self.aside, str(s)), 1
                while os.path.exists(dest):  # set aside before, by an earlier resume
                    dest, n = os.path.join(self.aside, f"{s}.{n}"), n + 1
                os.rename(os.path.join(self.dir, str(s)), dest)
                log.warning("moved checkpoint step %d to %s: it is newer than the step resumed from", s, dest)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("repirl_checkpoint_set_aside")
        self.manager.reload()

    def wait(self) -> None:
        """Blocks until the async save in flight (if any) is on disk."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise self._save_failed(e) from None

    def close(self) -> None:
        """Waits for the save in flight; after a failure already reported, only releases the manager."""
        try:
            if not self.failed:
                self.wait()
        finally:
            try:
                self.manager.close()
            except Exception:  # a failed save is re-raised here too; it was reported above
                if not self.failed:
                    raise


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a live pytree: the restore target that puts every
    array back where it is now."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
