"""The bubblewrap sandbox: HumanEval canonical solutions, and a battery of hostile programs."""
import os
import socket
import threading
import time

import pytest

from repirl_jax.data import formats
from repirl_jax.verifiers import run_code, run_code_batch, sandbox_kind


def _status(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return dict(l.split(":", 1) for l in f if ":" in l)
    except OSError:
        return {}


def nobody_processes():
    """Live (non-zombie) sandbox-uid processes that are ours or orphaned: descendants of this test
    process, or reparented to PID 1 (a leak). Sandboxes of another xdist worker are neither.
    bwrap leaves one exited process per run reparented to PID 1, which reaps it; a zombie holds
    no resources and runs nothing."""
    me, out = os.getpid(), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        st = _status(pid)
        if st.get("Uid", "").split()[:1] != ["65534"] or st.get("State", "").strip().startswith("Z"):
            continue
        ppid, hops = int(st.get("PPid", "0").strip() or 0), 0
        if ppid == 1:
            out.append(int(pid))
            continue
        while ppid > 1 and hops < 64:  # walk up: is this sandbox ours?
            if ppid == me:
                out.append(int(pid))
                break
            ppid, hops = int(_status(ppid).get("PPid", "0").strip() or 0), hops + 1
    return out


def test_sandbox_is_bubblewrap_here():
    assert sandbox_kind() == "bwrap"  # make setup installs it; the fallback is for other machines


@pytest.mark.slow
def test_humaneval_canonical_pass_and_stubs_fail():
    problems, report = formats.humaneval()
    assert len(problems) == 164 and report.skipped == 0
    t0 = time.monotonic()
    good = run_code_batch([(p.experts[0], p.tests) for p in problems], timeout_s=10, workers=2)
    elapsed = time.monotonic() - t0
    failed = [(p.id, r.reason) for p, r in zip(problems, good) if not r.passed]
    assert not failed, failed[:5]
    assert elapsed < 120, elapsed
    stubs = run_code_batch([(p.meta["code_prompt"] + "    return None\n", p.tests) for p in problems],
                           timeout_s=10, workers=2)
    assert sum(not r.passed for r in stubs) >= 150


def test_stdin_stdout_tasks():
    prog = "n = int(input())\nprint(' '.join(str(i * i) for i in range(n)))"
    assert run_code(prog, stdin="4\n", expected_stdout="0 1 4  9\n").passed  # whitespace normalised
    r = run_code(prog, stdin="3\n", expected_stdout="0 1 5")
    assert not r.passed and r.status == "failed" and "wrong output" in r.reason


@pytest.fixture
def local_server():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    hits = []

    def accept():
        srv.settimeout(8)
        try:
            conn, _ = srv.accept()
            hits.append(1)
            conn.close()
        except OSError:
            pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1], hits
    srv.close()


HOSTILE = {
    "infinite_loop": ("while True:\n    pass", "", False),
    "fork_bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass", "", False),
    "memory_bomb": ("x = bytearray(8 << 30)", "", False),
    "memory_creep": ("x = []\nwhile True:\n    x.append(bytearray(1 << 24))", "", False),
    "huge_output": ("while True:\n    print('y' * 100000)", "", False),
    "write_outside": ("open('/etc/repirl_pwned', 'w').write('x')", "", False),
    "write_home": ("open('/root/repirl_pwned', 'w').write('x')", "", False),
    "read_env": ("import os\nassert 'PATH' not in os.environ and 'HOME' not in os.environ\n"
                 "assert not any('SECRET' in k for k in os.environ)", "", True),
    # inside the PID namespace the parent is the sandbox's init, which ignores SIGKILL from
    # inside: the program harms nothing, runs to the end, and passes; the trainer lives on
    "kill_parent": ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill(1, signal.SIGKILL)", "", True),
    "kill_all": ("import os, signal\nos.kill(-1, signal.SIGKILL)", "", False),
    "early_exit": ("import sys\ndef f(): return 1\nsys.exit(0)", "assert f() == 2", False),
    "early_os_exit": ("import os\ndef f(): return 1\nos._exit(0)", "assert f() == 2", False),
    "harmless": ("def f(): return 2", "assert f() == 2", True),
    "sleep_forever_child": ("import subprocess\nsubprocess.Popen(['sleep', '1000'])", "", True),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_programs(name, monkeypatch):
    monkeypatch.setenv("REPIRL_SECRET_TOKEN", "hunter2")
    program, tests, should_pass = HOSTILE[name]
    timeout = 3.0
    t0 = time.monotonic()
    r = run_code(program, tests, timeout_s=timeout)
    assert time.monotonic() - t0 < timeout + 3
    assert r.passed is should_pass, (r.status, r.reason, r.stderr[-300:])
    if not should_pass:
        assert r.reason
    assert len(r.stdout) <= 2000 and len(r.stderr) <= 2000
    assert not os.path.exists("/etc/repirl_pwned") and not os.path.exists("/root/repirl_pwned")
    time.sleep(0.2)
    assert nobody_processes() == [], "a sandboxed process outlived its run"


def test_network_is_unreachable(local_server):
    port, hits = local_server
    prog = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')"
    r = run_code(prog, "", timeout_s=5)
    assert not r.passed and "connected" not in r.stdout and not hits


def test_batch_survives_a_mix(tmp_path):
    cases = [("while True: pass", ""), ("def f(): return 1", "assert f() == 1"), ("raise SystemExit(3)", ""),
             {"program": "print(input())", "stdin": "hi", "expected_stdout": "hi"}]
    rs = run_code_batch(cases, timeout_s=2, workers=2)
    assert [r.status for r in rs] == ["timeout", "passed", "error", "passed"]


def test_fork_and_memory_bomb_together_is_contained():
    """Per-process rlimits alone would allow tasks x memory; the per-run cgroup caps the total."""
    prog = ("import os\nwhile True:\n    try:\n        os.fork()\n        x = bytearray(200 << 20)\n"
            "        x[::4096] = b'1' * len(x[::4096])\n    except (OSError, MemoryError):\n        pass")
    t0 = time.monotonic()
    r = run_code(prog, "", timeout_s=3)
    assert not r.passed and time.monotonic() - t0 < 6
    assert nobody_processes() == []


@pytest.mark.parametrize("name", ["harmless", "early_exit", "infinite_loop", "read_env", "write_outside",
                                  "fork_bomb"])
def test_unshare_fallback_when_bwrap_is_missing(name, monkeypatch):
    """The fallback (unshare + setpriv + rlimits + cgroup) on the same battery's core cases."""
    from repirl_jax.verifiers import code

    monkeypatch.setattr(code, "sandbox_kind", lambda: "unshare")
    program, tests, should_pass = HOSTILE[name]
    t0 = time.monotonic()
    r = code.run_code(program, tests, timeout_s=3)
    assert time.monotonic() - t0 < 6 and r.passed is should_pass, (r.status, r.reason, r.stderr[-300:])
    assert not os.path.exists("/etc/repirl_pwned")
    time.sleep(0.2)
    assert nobody_processes() == []
