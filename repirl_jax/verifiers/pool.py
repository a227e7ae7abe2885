"""A process pool where a task that hangs or crashes costs only that task: its worker is killed
at the deadline (or found dead) and replaced, and the task reports why. `map` never raises for a
worker's fate: dead before the task was sent (the task goes to a fresh worker), killed during it
(the OOM killer, a crash in C code: the task fails with the signal), or gone after it.
concurrent.futures cannot do this: a hung task there blocks its worker forever.

Workers are fresh interpreters (`python -P -c BOOT` talking over a socketpair), not
multiprocessing children: `spawn` and `forkserver` re-run the caller's main script in every
worker, so a script without an `if __name__ == "__main__":` guard starts pools inside its own
workers and kills them (pebble's ProcessPool, built on multiprocessing, fails every task then:
"All workers expired"). `fork` is unsafe in the trainer, which is multi-threaded (JAX). A worker
imports only the module of its function, with the caller's sys.path."""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)
# A fresh worker's start-up (an interpreter importing math-verify / sympy: seconds, tens of seconds
# on a loaded machine) is not the task's time: the task's deadline starts when the worker says it is
# ready. Counting it made every task of a fresh worker time out under load, and the replacement
# start over: all verdicts "timeout" while the trainer stalled.
BOOT_S = 120.0
_READY = "ready"
# -P: no script directory or cwd on sys.path before the caller's is set (a stray random.py there
# would shadow the stdlib)
_BOOT = ("import sys; from multiprocessing.connection import Connection; c = Connection(int(sys.argv[1])); "
         "sys.path[:] = c.recv(); from repirl_jax.verifiers.pool import serve; serve(c)")


def serve(conn: Connection) -> None:
    """The worker's loop: receive `fn` and the warm-up args once, run the warm-up, say ready, then
    (args) -> (True, result) | (False, reason)."""
    fn = conn.recv()  # pickled by reference: this imports its module
    warmup = conn.recv()
    if warmup is not None:  # lazy initialisation inside fn (a parser's grammar) is start-up too
        try:
            fn(*warmup)
        except BaseException:
            pass
    conn.send(_READY)
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    while True:
        try:
            item = conn.recv()
        except EOFError:  # the pool closed or its process ended
            return
        try:
            out = (True, fn(*item))
        except BaseException as e:  # the task failed, the worker lives on
            out = (False, f"{type(e).__name__}: {str(e)[:200]}")
        conn.send(out)


def _exit_when_orphaned(parent: int) -> None:
    # a worker stuck in a hung task would outlive a killed trainer; EOF only reaches an idle one
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


class _Worker:
    def __init__(self, fn: Callable, warmup: tuple | None):
        mine, theirs = socket.socketpair()
        self.proc = subprocess.Popen([sys.executable, "-P", "-c", _BOOT, str(theirs.fileno())],
                                     pass_fds=(theirs.fileno(),))
        theirs.close()
        self.conn = Connection(mine.detach())
        self.task: int | None = None
        self.deadline = 0.0
        self.ready = False
        try:
            self.conn.send(sys.path)
            self.conn.send(fn)
            self.conn.send(warmup)
        except OSError:  # it died at once; the first task sent finds out
            pass

    def why_dead(self) -> str:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "worker stopped answering"
        return f"worker died (killed by signal {-code})" if code < 0 else f"worker died (exit code {code})"

    def kill(self):
        self.proc.kill()
        self.proc.wait()
        self.conn.close()


class Pool:
    """`workers` processes running `fn` (a module-level function: it is pickled by reference).
    `warmup`: arguments fn runs once in each fresh worker before the worker counts as started (its
    first real task's clock starts after that)."""

    def __init__(self, fn: Callable, workers: int = 2, warmup: tuple | None = None):
        self.fn, self.n, self.warmup = fn, max(1, workers), warmup
        self.workers: list[_Worker] = []

    def _ensure(self):
        for w in [w for w in self.workers if w.task is None and w.proc.poll() is not None]:
            self._replace(w)  # died while idle (between batches, or right after its last task)
        while len(self.workers) < self.n:
            self.workers.append(_Worker(self.fn, self.warmup))

    def map(self, items: Sequence[tuple], timeout_s: float) -> list[tuple[bool, Any]]:
        """[(True, result) | (False, reason)] in input order; never raises for a task's failure
        or a worker's death."""
        results: list[Any] = [None] * len(items)
        todo = list(range(len(items)))[::-1]
        resent: set[int] = set()
        busy: dict[Connection, _Worker] = {}
        while todo or busy:
            self._ensure()
            for w in [w for w in self.workers if w.task is None]:
                if not todo:
                    break
                i = todo.pop()
                try:
                    w.conn.send(items[i])
                except OSError:  # dead before the task reached it: not the task's fault, send it again once
                    reason = w.why_dead()
                    self._replace(w)
                    if i in resent:
                        results[i] = (False, f"{reason} before the task")
                    else:
                        resent.add(i)
                        todo.append(i)
                    continue
                w.task, w.deadline = i, time.monotonic() + timeout_s + (0.0 if w.ready else BOOT_S)
                busy[w.conn] = w
            if not busy:
                continue
            timeout = max(0.0, min(w.deadline for w in busy.values()) - time.monotonic())
            for conn in wait(list(busy), timeout=timeout):
                w = busy.pop(conn)
                try:
                    msg = conn.recv()
                    if not w.ready and msg == _READY:  # started: the task's own clock starts now
                        w.ready, w.deadline, busy[conn] = True, time.monotonic() + timeout_s, w
                        continue
                    results[w.task] = msg
                    w.task = None
                except (EOFError, OSError):
                    results[w.task] = (False, w.why_dead())
                    self._replace(w)
            now = time.monotonic()
            for conn, w in list(busy.items()):
                if now >= w.deadline:
                    busy.pop(conn)
                    results[w.task] = (False, f"timeout after {timeout_s:g}s" if w.ready
                                       else f"worker did not start within {BOOT_S:g}s")
                    self._replace(w)
        return results

    def _replace(self, w: _Worker):
        w.kill()
        self.workers.remove(w)
        self.workers.append(_Worker(self.fn, self.warmup))

    def close(self):
        for w in self.workers:
            w.kill()
        self.workers = []
