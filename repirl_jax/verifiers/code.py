"""Untrusted code in a bubblewrap sandbox.

The program and its tests run as one script under /usr/bin/python3, as uid 65534 (root ignores
RLIMIT_NPROC, so a fork bomb as root would not be contained), inside new network, PID, IPC, UTS,
user and mount namespaces with a read-only root, a private tmpfs /tmp, one writable work dir,
no environment, and rlimits on address space, processes, file size, CPU time and open files.
At the deadline bwrap is killed; --die-with-parent and the PID namespace take every process of
the sandbox with it. stdout/stderr go to files capped by RLIMIT_FSIZE, so a flood of output
cannot fill the trainer's memory.

Where this process may create cgroups (root with cgroup v1 memory + pids controllers, or a v2
hierarchy), each run also gets its own cgroup capping total memory and the number of tasks: the
rlimits are per process, so without it a fork bomb whose children each allocate could still
exhaust the host. At the end every task left in the cgroup is killed and the cgroup removed.

A run passes only when the script printed a random sentinel after the tests and exited 0: a
program that calls sys.exit(0) or os._exit(0) before its tests does not pass. Where bwrap cannot
start, `unshare` (network + PID namespaces) plus `setpriv` (uid 65534) and the same rlimits are
used instead, and the log says so once.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import resource
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Sequence

log = logging.getLogger(__name__)
NOBODY = 65534
PYTHON = "/usr/bin/python3"  # world-readable, unlike a pyenv interpreter under /root
MAX_OUTPUT_BYTES = 1 << 20  # per stream, enforced by RLIMIT_FSIZE
MAX_TASKS = 64  # processes + threads of one run (cgroup pids.max)
KEEP_CHARS = 2000  # of stdout / stderr kept in the result


@dataclasses.dataclass
class CodeResult:
    passed: bool
    status: str  # passed | failed | timeout | error
    reason: str  # short, for the logs; "" when passed
    stdout: str
    stderr: str
    wall_s: float


@dataclasses.dataclass
class CodeCase:
    program: str
    tests: str = ""  # Python appended after the program (asserts, a check() call ...)
    stdin: str | None = None  # stdin/stdout tasks: fed to the program ...
    expected_stdout: str | None = None  # ... and its output compared, whitespace normalised


class _Cgroup:
    """A per-run cgroup (v1 memory + pids, or v2) or, where none can be made, a no-op."""

    V1 = ("/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids")

    def __init__(self, memory_mb: int, max_tasks: int):
        name = f"repirl_sbx_{secrets.token_hex(6)}"
        self.dirs: list[str] = []
        try:
            if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):  # v2
                d = os.path.join("/sys/fs/cgroup", name)
                os.mkdir(d)
                self.dirs = [d]
                self._write(d, "memory.max", memory_mb << 20)
                self._write(d, "pids.max", max_tasks)
            elif all(os.path.isdir(v) for v in self.V1):
                for v in self.V1:
                    os.mkdir(os.path.join(v, name))
                    self.dirs.append(os.path.join(v, name))
                self._write(self.dirs[0], "memory.limit_in_bytes", memory_mb << 20)
                self._write(self.dirs[1], "pids.max", max_tasks)
        except OSError as e:
            _cgroup_unavailable(str(e))
            self.close()
            self.dirs = []

    @staticmethod
    def _write(d, f, v):
        with open(os.path.join(d, f), "w") as fh:
            fh.write(str(v))

    def join(self):  # in the child, before exec
        for d in self.dirs:
            self._write(d, "cgroup.procs", os.getpid())

    def close(self):
        """Kills every task left in the cgroup, then removes it."""
        for d in self.dirs:
            for _ in range(50):
                try:
                    with open(os.path.join(d, "cgroup.procs")) as f:
                        pids = [int(x) for x in f.read().split()]
                except OSError:
                    break
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.01)
            for _ in range(100):  # rmdir fails while dying tasks are still charged
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)


@lru_cache(maxsize=1)
def _cgroup_unavailable(reason: str) -> None:
    log.warning("code sandbox: no per-run cgroup (%s); memory and process caps are per-process rlimits only",
                reason)


def _limits(timeout_s: float, memory_mb: int, as_root_first: bool, cgroup: _Cgroup | None = None):
    def pre():
        os.setsid()
        if cgroup is not None:
            cgroup.join()
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
        # per-uid and slow to release across runs (exited sandboxes stay charged for a while: at 64,
        # 30% of back-to-back runs failed to fork), so it is set high; the per-run cgroup's
        # pids.max is the tight cap where cgroups are available
        resource.setrlimit(resource.RLIMIT_NPROC, (256, 256))
        resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_OUTPUT_BYTES, MAX_OUTPUT_BYTES))
        cpu = int(timeout_s) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        if not as_root_first:  # bwrap: drop to nobody before exec; unshare needs root, setpriv drops later
            os.setgid(NOBODY)
            os.setgroups([])
            os.setuid(NOBODY)
    return pre


def _bwrap_cmd(work: str) -> list[str]:
    return ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
            "--bind", work, "/tmp/sandbox", "--chdir", "/tmp/sandbox", "--unshare-all", "--unshare-user",
            "--uid", str(NOBODY), "--gid", str(NOBODY), "--die-with-parent", "--new-session", "--clearenv",
            PYTHON, "-I", "main.py"]


def _unshare_cmd(work: str) -> list[str]:
    return ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "setpriv",
            f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "env", "-i", "-C", work, PYTHON, "-I",
            "main.py"]


@lru_cache(maxsize=1)
def sandbox_kind() -> str:
    """'bwrap' when bubblewrap runs here, else 'unshare' (logged once)."""
    if not os.path.exists(PYTHON):
        raise RuntimeError(f"{PYTHON} not found: the code sandbox needs Debian's python3 (apt-get install python3)")
    if shutil.which("bwrap"):
        work = tempfile.mkdtemp(prefix="repirl_probe_")
        try:
            os.chown(work, NOBODY, NOBODY)
            with open(os.path.join(work, "main.py"), "w") as f:
                f.write("print('ok')\n")
            r = subprocess.run(_bwrap_cmd(work), capture_output=True, text=True, timeout=30,
                               preexec_fn=_limits(10, 1024, False))
            if r.returncode == 0 and r.stdout.strip() == "ok":
                return "bwrap"
            reason = (r.stderr.strip().splitlines() or ["no output"])[-1]
        except (OSError, subprocess.SubprocessError) as e:
            reason = str(e)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    else:
        reason = "bwrap not installed"
    log.warning("code sandbox: bubblewrap unavailable (%s); falling back to unshare + setpriv + rlimits", reason)
    return "unshare"


def _read(path: str) -> str:
    with open(path, "rb") as f:
        return f.read(KEEP_CHARS * 4).decode("utf-8", "replace")[:KEEP_CHARS]


def _normalise(text: str) -> str:
    return "\n".join(" ".join(line.split()) for line in text.strip().splitlines() if line.strip())


def run_code(program: str, tests: str = "", timeout_s: float = 5.0, *, stdin: str | None = None,
             expected_stdout: str | None = None, memory_mb: int = 1024) -> CodeResult:
    """Runs program + tests in the sandbox; see the module docstring for what `passed` means."""
    sentinel = f"__repirl_done_{secrets.token_hex(8)}__"
    script = f"{program}\n\n{tests}\n\nimport sys as _s\n_s.stdout.flush()\nprint({sentinel!r}, flush=True)\n"
    work = tempfile.mkdtemp(prefix="repirl_sbx_")
    io_dir = tempfile.mkdtemp(prefix="repirl_io_")  # outside the sandbox: the program cannot reach it
    t0 = time.monotonic()
    try:
        os.chown(work, NOBODY, NOBODY)
        main = os.path.join(work, "main.py")
        with open(main, "w") as f:
            f.write(script)
        os.chown(main, NOBODY, NOBODY)
        kind = sandbox_kind()
        cmd = _bwrap_cmd(work) if kind == "bwrap" else _unshare_cmd(work)
        out_path, err_path = os.path.join(io_dir, "out"), os.path.join(io_dir, "err")
        cgroup = _Cgroup(memory_mb, MAX_TASKS)
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                    stdout=out, stderr=err,
                                    preexec_fn=_limits(timeout_s, memory_mb, kind != "bwrap", cgroup))
            timed_out = False
            try:
                if stdin is not None:
                    try:
                        proc.stdin.write(stdin.encode())
                        proc.stdin.close()
                    except BrokenPipeError:
                        pass
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        cgroup.close()
        wall = time.monotonic() - t0
        stdout, stderr = _read(out_path), _read(err_path)
        ran_to_end = sentinel in stdout
        stdout = stdout.replace(sentinel, "").rstrip("\n")
        if timed_out:
            return CodeResult(False, "timeout", f"killed at the {timeout_s:g}s deadline", stdout, stderr, wall)
        if proc.returncode != 0 or not ran_to_end:
            last = (stderr.strip().splitlines() or [""])[-1][:200]
            why = (f"exit code {proc.returncode}" if proc.returncode != 0 else "exited before the tests finished")
            # a Python traceback means the program or its tests failed; otherwise a signal or limit
            status = "failed" if "Traceback" in stderr or proc.returncode == 0 else "error"
            return CodeResult(False, status, f"{why}: {last}" if last else why, stdout, stderr, wall)
        if expected_stdout is not None and _normalise(stdout) != _normalise(expected_stdout):
            return CodeResult(False, "failed", f"wrong output: {_normalise(stdout)[:60]!r}", stdout, stderr, wall)
        return CodeResult(True, "passed", "", stdout, stderr, wall)
    except OSError as e:
        return CodeResult(False, "error", f"sandbox could not start: {e}", "", "", time.monotonic() - t0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(io_dir, ignore_errors=True)


def run_code_batch(cases: Sequence[CodeCase | tuple | dict], timeout_s: float = 5.0, workers: int = 2,
                   memory_mb: int = 1024) -> list[CodeResult]:
    """Runs cases concurrently (threads waiting on sandboxed subprocesses); order preserved.
    A case is a CodeCase, a (program, tests) tuple or a dict of CodeCase fields."""
    def norm(c):
        return c if isinstance(c, CodeCase) else CodeCase(*c) if isinstance(c, tuple) else CodeCase(**c)

    def one(c: CodeCase) -> CodeResult:
        r = run_code(c.program, c.tests, timeout_s, stdin=c.stdin, expected_stdout=c.expected_stdout,
                     memory_mb=memory_mb)
        if not r.passed:
            log.debug("code case %s: %s", r.status, r.reason)
        return r

    with ThreadPoolExecutor(max(1, workers)) as ex:
        return list(ex.map(one, [norm(c) for c in cases]))
