"""Faults a long run meets, injected: kill -9 during an async checkpoint write, a truncated or
deleted file in the latest checkpoint, a half-written metrics line, a full disk, a verifier worker
killed mid-task, SIGTERM during a rollout, a missing extra. Each ends in one line (no traceback)
and a resumable workdir; where a checkpoint survived, the resumed run's exports equal the
uninterrupted run's bit for bit.

Every training run here is the same tiny config (configs/tiny_cpu.py, 4 steps) in a subprocess;
they share a persistent XLA compilation cache, so only the first one compiles."""
import contextlib
import gc
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest

from repirl_jax import checkpoint
from repirl_jax.verifiers import check_math_batch, verify_math_batch
from repirl_jax.verifiers.pool import Pool
from tests.test_loop import ROOT, exports

STEPS = ["--set", "train.steps=4", "--set", "train.checkpoint_every=1"]
# A driver around `repirl train` that injects one fault at a chosen point, from inside the run,
# so the fault lands exactly where the test says (an outside observer would race the run).
DRIVER = """
import glob, os, signal, sys, time
from repirl_jax import checkpoint, cli, sampling
fault, at = sys.argv[1], int(sys.argv[2])
if fault == "kill_mid_save":  # SIGKILL once step `at`'s async write has put its first files down
    save = checkpoint.Checkpointer.save
    def killing_save(self, step, state, extras):
        save(self, step, state, extras)
        if step == at:
            while not (glob.glob(os.path.join(self.dir, f"{step}.orbax-checkpoint-tmp*", "*", "*"))
                       or os.path.isdir(os.path.join(self.dir, str(step)))):  # too late: the test says so
                time.sleep(0.001)
            os.kill(os.getpid(), signal.SIGKILL)
    checkpoint.Checkpointer.save = killing_save
if fault == "sigterm_in_rollout":  # SIGTERM arrives while step `at`'s rollout is being sampled
    generate, calls = sampling.generate, []
    def signalled_generate(*a, **kw):
        calls.append(1)
        if len(calls) == at:
            os.kill(os.getpid(), signal.SIGTERM)
        return generate(*a, **kw)
    sampling.generate = signalled_generate
sys.exit(cli.main(["train", "--config", "configs/tiny_cpu.py", *sys.argv[3:]]))
"""


@pytest.fixture(scope="module")
def env(subprocess_env):
    return subprocess_env


def train(env, workdir, *extra, fault=None, at=0):
    head = ["-c", DRIVER, fault, str(at)] if fault else ["-m", "repirl_jax.cli", "train", "--config",
                                                          "configs/tiny_cpu.py"]
    return subprocess.run([sys.executable, *head, "--workdir", str(workdir), *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def one_error_line(r, needle):
    """Exit 2 with exactly one error line, holding `needle`, and no traceback."""
    errors = [l for l in r.stderr.splitlines() if "error" in l.lower()]
    assert r.returncode == 2 and len(errors) == 1 and needle in errors[0], r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]


def untimed(path):
    return [{k: v for k, v in json.loads(l).items() if not k.endswith("_s")} for l in open(path)]


def assert_same_run(workdir, reference):
    a, b = exports(reference), exports(workdir)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert untimed(workdir / "metrics.jsonl") == untimed(reference / "metrics.jsonl")


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory):
    w = tmp_path_factory.mktemp("faults") / "straight"
    r = train(env, w, *STEPS)
    assert r.returncode == 0, r.stderr[-2000:]
    return w


def test_kill9_during_async_checkpoint_write_and_a_cut_off_metrics_line(env, reference, tmp_path):
    w = tmp_path / "w"
    r = train(env, w, *STEPS, fault="kill_mid_save", at=3)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert glob.glob(str(w / "checkpoints" / "3.orbax-checkpoint-tmp*")) and not (w / "checkpoints" / "3").exists()
    with open(w / "metrics.jsonl", "a") as f:  # as a kill during the next metrics write leaves it
        f.write('{"step": 4, "rollout_acc": 0.')
    r = train(env, w, *STEPS)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from step 2" in r.stderr and "dropped 1 unreadable line" in r.stderr
    assert "dropped the rows of step 3, which come after checkpoint step 2" in r.stderr
    assert not glob.glob(str(w / "checkpoints" / "*tmp*"))  # the half-written save was cleaned up
    assert_same_run(w, reference)


# orbax's abandoned reads and writes print nothing (checkpoint._drop_orbax_leftovers)
QUIET = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


@QUIET
@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_unreadable_checkpoint_is_skipped_for_the_newest_that_restores(tmp_path, damage, caplog):
    """Checkpointer level, on a small tree: the fallback, the set-aside, resume_from and the
    one line when none restores."""
    state = {"w": jnp.arange(64 * 1024, dtype=jnp.float32), "b": jnp.ones(3)}
    ck = checkpoint.Checkpointer(str(tmp_path), keep=3, async_save=False)
    for s in (1, 2, 3):
        ck.save(s, scaled(state, s), {"step": s})
    ck.close()
    break_step(tmp_path / "checkpoints" / "3", damage)
    ck = checkpoint.Checkpointer(str(tmp_path), keep=3, async_save=False)
    restored, extras = ck.restore(checkpoint.abstract_like(state))
    assert extras == {"step": 2} and np.array_equal(restored["w"], state["w"] * 2)
    assert "checkpoint step 3" in caplog.text and "does not restore" in caplog.text and "trying an older one" in caplog.text
    assert (tmp_path / "checkpoints.set_aside" / "3").is_dir() and ck.all_steps() == [1, 2]
    ck.save(3, state, {"step": 3})  # the resumed run can save beside what is left
    ck.wait()
    assert ck.latest_step() == 3
    _, extras = ck.restore(checkpoint.abstract_like(state), step=1)  # train.resume_from=1: newer set aside
    assert extras == {"step": 1} and ck.all_steps() == [1]
    assert sorted(os.listdir(tmp_path / "checkpoints.set_aside")) == ["2", "3", "3.1"]
    with pytest.raises(checkpoint.CheckpointError, match=r"train.resume_from=7: .* holds steps \[1\]"):
        ck.restore(checkpoint.abstract_like(state), step=7)
    break_step(tmp_path / "checkpoints" / "1", damage)
    with pytest.raises(checkpoint.CheckpointError, match=r"none of the checkpoints \(steps \[1\]\) restores.*"
                                                         r"use a new --workdir to start over"):
        ck.restore(checkpoint.abstract_like(state))
    ck.close()
    gc.collect()  # the abandoned reads' coroutines, while this test watches


def scaled(tree, s):
    return {k: v * s for k, v in tree.items()}


def break_step(step_dir, damage):
    """Truncates (a partial copy) or deletes (a lost file) the largest array-data file of a step."""
    files = [f for f in glob.glob(str(step_dir / "state" / "**" / "*"), recursive=True)
             if os.path.isfile(f) and "/d/" in f]
    biggest = max(files, key=os.path.getsize)
    if damage == "truncate":
        os.truncate(biggest, 100)
    else:
        os.remove(biggest)


def test_truncated_latest_checkpoint_resumes_from_the_one_before(env, reference, tmp_path):
    w = tmp_path / "w"
    shutil.copytree(reference, w, ignore=shutil.ignore_patterns("final"))
    break_step(w / "checkpoints" / "4", "truncate")
    r = train(env, w, *STEPS)
    assert r.returncode == 0, r.stderr[-2000:]
    warned = [l for l in r.stderr.splitlines() if "checkpoint step 4" in l and "does not restore" in l]
    assert len(warned) == 1 and "OUT_OF_RANGE" in warned[0] and "trying an older one" in warned[0], r.stderr[-2000:]
    assert "resumed from step 3" in r.stderr and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "never retrieved" not in r.stderr, r.stderr[-3000:]
    assert (w / "checkpoints.set_aside" / "4").is_dir() and (w / "checkpoints" / "4").is_dir()  # saved anew
    assert_same_run(w, reference)
    r = train(env, w, *STEPS, "--set", "train.resume_from=7")  # choosing one: the steps there are named
    one_error_line(r, "train.resume_from=7: ")
    assert "holds steps [3, 4]" in r.stderr


@contextlib.contextmanager
def tmpfs(path, size):
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"a full disk needs a small tmpfs, and mounting one failed here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def test_full_disk_stops_at_once_and_the_rerun_resumes(env, reference, tmp_path):
    """90 MB: the first checkpoint fits (46 MB on disk; the check allows for its arrays' 73 MB),
    a second does not."""
    with tmpfs(tmp_path / "disk", "90m") as disk:
        w = disk / "w"
        r = train(env, w, "--set", "train.steps=4", "--set", "train.checkpoint_every=2")
        one_error_line(r, "no space for step 4's checkpoint")
        assert "the latest finished checkpoint is step 2: fix the cause and rerun the same command" in r.stderr
        assert [row["step"] for row in untimed(w / "metrics.jsonl")] == [1, 2, 3, 4]
        subprocess.run(["mount", "-o", "remount,size=200m", str(disk)], check=True)  # space freed
        r = train(env, w, "--set", "train.steps=4", "--set", "train.checkpoint_every=2")
        assert r.returncode == 0, r.stderr[-2000:]
        assert "resumed from step 2" in r.stderr and "dropped the rows of steps 3-4, which come after checkpoint step 2" in r.stderr
        assert_same_run(w, reference)  # the checkpoint cadence does not change what is computed


@QUIET
def test_async_save_failure_is_one_line(tmp_path, monkeypatch, caplog):
    """Where the space check cannot see it coming (another writer, a quota), orbax's own failure
    from its background thread becomes one CheckpointError (and orbax's traceback of it is not
    logged), and the run's close does not raise again."""
    with tmpfs(tmp_path / "disk", "1m") as disk, caplog.at_level("WARNING"):
        monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: SimpleNamespace(free=1 << 40))
        ck = checkpoint.Checkpointer(str(disk))
        ck.save(1, {"w": jnp.asarray(np.random.RandomState(0).rand(1 << 20), jnp.float32)}, {"step": 1})  # 4 MB, incompressible
        with pytest.raises(checkpoint.CheckpointError, match=r"saving step 1 failed \(.*RESOURCE_EXHAUSTED.*\); "
                                                             "stopped; no checkpoint is finished yet"):
            ck.wait()
        ck.close()
        gc.collect()
    assert not [r for r in caplog.records if r.levelname == "ERROR"], [r.getMessage()[:200] for r in caplog.records]


def test_sigterm_during_a_rollout_saves_the_step_and_resumes(env, reference, tmp_path):
    w = tmp_path / "w"
    r = train(env, w, *STEPS, fault="sigterm_in_rollout", at=2)
    one_error_line(r, "stopped by SIGTERM after step 2 (checkpoint saved)")
    assert (w / "checkpoints" / "2").is_dir() and not (w / "final").exists()
    r = train(env, w, *STEPS)
    assert r.returncode == 0 and "resumed from step 2" in r.stderr, r.stderr[-2000:]
    assert_same_run(w, reference)


def test_verifier_worker_killed_mid_task_fails_only_that_task():
    pool = Pool(time.sleep, workers=2)
    try:
        killer = threading.Thread(target=kill_when_busy, args=(pool, 1))
        killer.start()
        out = pool.map([(0.0,), (30.0,), (0.0,), (0.0,)], timeout_s=20)
        killer.join()
        assert out[1] == (False, "worker died (killed by signal 9)")  # as the OOM killer leaves it
        assert out[0] == out[2] == out[3] == (True, None)
        for w in pool.workers:  # died idle, between batches: the next task goes to a fresh worker
            w.proc.kill()
            w.proc.wait()
        assert pool.map([(0.0,)] * 3, timeout_s=20) == [(True, None)] * 3
        assert pool.map([(5.0,)], timeout_s=0.5) == [(False, "timeout after 0.5s")]
    finally:
        pool.close()


def test_a_slow_worker_start_is_not_the_tasks_time():
    """Fresh workers that need 1.5 s to import their function and 1.5 s more for its first call,
    tasks with a 0.5 s timeout: the clock starts when the worker has imported fn and run the warm-up
    call (it used to start at the send: every task of a fresh worker timed out under load)."""
    from tests.verifiers.slow_start import double

    pool = Pool(double, workers=2, warmup=(0,))
    try:
        assert pool.map([(1,), (2,), (3,)], timeout_s=0.5) == [(True, 2), (True, 4), (True, 6)]
    finally:
        pool.close()


def kill_when_busy(pool, task):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for w in list(pool.workers):
            if w.task == task:
                time.sleep(0.2)  # well into the task
                os.kill(w.proc.pid, signal.SIGKILL)
                return
        time.sleep(0.01)


def test_math_verifier_survives_dead_workers_with_large_responses():
    """A send of a 600 KB response to a worker that died idle (the BrokenPipeError of old)."""
    big = "x" * 600_000 + " \\boxed{3}"
    assert check_math_batch([(big, "3"), ("\\boxed{4}", "5")], timeout_s=10, workers=2) == [True, False]
    from repirl_jax.verifiers.math import _POOLS

    for w in _POOLS[2].workers:
        w.proc.kill()
        w.proc.wait()
    verdicts = verify_math_batch([(big, "3")] * 3, timeout_s=10, workers=2)
    assert [v.correct for v in verdicts] == [True] * 3


def test_a_script_without_a_main_guard_runs_once(tmp_path):
    """Workers are fresh interpreters: the caller's script is not re-run in each of them."""
    script = tmp_path / "unguarded.py"
    script.write_text("print('script body')\nfrom repirl_jax.verifiers import check_math_batch\n"
                      "print(check_math_batch([('x' * 600000 + ' \\\\boxed{3}', '3'), ('\\\\boxed{1}', '2')] * 2))\n")
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines() == ["script body", "[True, False, True, False]"]


def test_a_missing_extra_is_one_line_before_any_work(monkeypatch, capsys):
    import importlib.util

    import benchmarks.iteration
    from repirl_jax import cli, loop  # noqa: F401  (imported before find_spec is faked: libraries probe with it)

    # every peer installed but trl, whatever this machine has
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trl" else object())
    monkeypatch.setattr(benchmarks.iteration, "run", lambda **kw: pytest.fail("the benchmark started"))
    assert cli.main(["bench", "iteration"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["repirl bench: error: bench iteration needs trl, not installed: pip install -e '.[bench]'"]
