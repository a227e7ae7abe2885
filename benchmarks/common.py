"""Shared pieces of the benchmarks: timing, the machine's matmul peak, result output."""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp


def median_time(fn, reps: int) -> tuple[float, list[float]]:
    """Median wall time of fn() over reps runs (fn must block until its result is ready)."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def matmul_peak_flops(n: int = 2048, dtype=jnp.float32, reps: int = 5) -> float:
    """Achieved FLOP/s of one large jitted matmul: this machine's practical peak."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t, _ = median_time(lambda: f(a).block_until_ready(), reps)
    return 2 * n ** 3 / t


def machine() -> str:
    d = jax.devices()[0]
    return f"{platform.machine()} {d.platform} ({d.device_kind}), {jax.device_count()} device(s)"


def write(result: dict, out: str | None) -> None:
    if out:
        with open(out, "w") as f:
            json.dump(result, f, indent=2)


def report(result: dict, out: str | None, line: str, size: str = "") -> dict:
    """Writes the result JSON (when `out`) and prints the benchmark's one summary line, tagged
    with the run's size and the machine. Returns the result."""
    write(result, out)
    print(f"{line} [{size + ', ' if size else ''}{machine()}]")
    return result


def arg_parser(doc: str) -> argparse.ArgumentParser:
    """The command line every benchmark module starts from: its docstring's first line, --out."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--out", help="write the result JSON here")
    return ap
