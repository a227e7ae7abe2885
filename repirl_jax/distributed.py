"""Multi-controller JAX: which process this is, and joining the others.

One Python process per host (TPU pod) or per rank (launch/local_multiprocess.sh); each sees its
own devices and the global ones, and jax.distributed connects them. Call initialize_from_env()
once, before anything touches a device (jax.distributed.initialize must precede backend
creation).

  REPIRL_COORDINATOR=HOST:PORT  explicit: with REPIRL_NUM_PROCESSES and REPIRL_PROCESS_ID
                                (what launch/local_multiprocess.sh sets, or --coordinator ...)
  REPIRL_DISTRIBUTED=1          jax.distributed.initialize() with JAX's own cluster detection
                                (launch/tpu_pod.sh run sets it on every worker)
  REPIRL_DISTRIBUTED=0          never initialise (one process, whatever the environment says)
  otherwise                     auto: a multi-host TPU slice (TPU_WORKER_HOSTNAMES names more
                                than one host) -> jax.distributed.initialize(); else nothing.
"""
from __future__ import annotations

import os
import re

import jax

from .config import ConfigError


def _int_env(name: str, value) -> int:
    raw = os.environ.get(name) if value is None else value
    if raw is None or raw == "":
        raise ConfigError(f"{name}: not set (needed with REPIRL_COORDINATOR / --coordinator)")
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected an integer") from None


def on_multihost_tpu() -> bool:
    """A TPU slice spanning several hosts, as the TPU runtime describes it in the environment.
    Single-host TPU VMs (v5e-8, Colab) are left alone: one process needs no coordinator."""
    hosts = [h.strip() for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    # libtpu, loaded without a TPU, writes a warning sentence (with a comma) into this variable
    return len(hosts) > 1 and all(re.fullmatch(r"[\w.:\-]+", h) for h in hosts)


def initialize_from_env(coordinator: str | None = None, num_processes: int | None = None,
                        process_id: int | None = None) -> tuple[int, int]:
    """Joins the other processes when the environment (or the arguments, which win) asks for it.
    Returns (process_index, process_count); (0, 1) for a single process."""
    if jax.distributed.is_initialized():  # a second call (tests, notebooks) is a no-op
        return jax.process_index(), jax.process_count()
    coordinator = coordinator or os.environ.get("REPIRL_COORDINATOR") or None
    mode = os.environ.get("REPIRL_DISTRIBUTED", "auto").lower()
    if mode not in ("auto", "0", "1"):
        raise ConfigError(f"REPIRL_DISTRIBUTED={mode!r}: expected 0, 1 or unset")
    if coordinator:
        n = _int_env("REPIRL_NUM_PROCESSES", num_processes)
        i = _int_env("REPIRL_PROCESS_ID", process_id)
        if ":" not in coordinator:
            raise ConfigError(f"REPIRL_COORDINATOR={coordinator!r}: expected HOST:PORT")
        if n < 1 or not 0 <= i < n:
            raise ConfigError(f"REPIRL_PROCESS_ID={i}: expected 0 <= id < REPIRL_NUM_PROCESSES={n}")
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=n, process_id=i)
    elif mode == "1" or (mode == "auto" and on_multihost_tpu()):
        jax.distributed.initialize()
    return jax.process_index(), jax.process_count()
