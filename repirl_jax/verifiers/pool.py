"""A process pool where a task that hangs or crashes costs only that task: its worker is killed
at the deadline (or found dead) and replaced, and the task reports why. concurrent.futures cannot
do this: a hung task there blocks its worker forever."""
from __future__ import annotations

import logging
import multiprocessing as mp
import time
from multiprocessing.connection import wait
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)


def _serve(conn, fn):
    while True:
        try:
            item = conn.recv()
        except EOFError:
            return
        try:
            conn.send((True, fn(*item)))
        except BaseException as e:  # the task failed, the worker lives on
            conn.send((False, f"{type(e).__name__}: {str(e)[:200]}"))


class _Worker:
    def __init__(self, ctx, fn):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, fn), daemon=True)
        self.proc.start()
        child.close()
        self.task: int | None = None
        self.deadline = 0.0

    def kill(self):
        self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()


class Pool:
    """`workers` processes running `fn` (a module-level function: it is pickled by reference).
    `spawn` processes: the trainer is multi-threaded (JAX), where fork is unsafe."""

    def __init__(self, fn: Callable, workers: int = 2):
        self.fn, self.n = fn, max(1, workers)
        self.ctx = mp.get_context("spawn")
        self.workers: list[_Worker] = []

    def _ensure(self):
        self.workers = [w for w in self.workers if w.proc.is_alive()]
        while len(self.workers) < self.n:
            self.workers.append(_Worker(self.ctx, self.fn))

    def map(self, items: Sequence[tuple], timeout_s: float) -> list[tuple[bool, Any]]:
        """[(True, result) | (False, reason)] in input order; never raises for a task's failure."""
        results: list[Any] = [None] * len(items)
        todo = list(range(len(items)))[::-1]
        self._ensure()
        busy: dict[Any, _Worker] = {}
        while todo or busy:
            for w in self.workers:
                if w.task is None and todo:
                    i = todo.pop()
                    w.task, w.deadline = i, time.monotonic() + timeout_s
                    w.conn.send(items[i])
                    busy[w.conn] = w
            timeout = max(0.0, min(w.deadline for w in busy.values()) - time.monotonic())
            ready = wait(list(busy), timeout=timeout)
            for conn in ready:
                w = busy.pop(conn)
                try:
                    results[w.task] = conn.recv()
                except (EOFError, OSError):
                    results[w.task] = (False, f"worker died (exit code {w.proc.exitcode})")
                    self._replace(w)
                w.task = None
            now = time.monotonic()
            for conn, w in list(busy.items()):
                if now >= w.deadline:
                    busy.pop(conn)
                    results[w.task] = (False, f"timeout after {timeout_s:g}s")
                    self._replace(w)
        return results

    def _replace(self, w: _Worker):
        w.kill()
        self.workers.remove(w)
        self.workers.append(_Worker(self.ctx, self.fn))

    def close(self):
        for w in self.workers:
            w.kill()
        self.workers = []
