"""The host loop through the `repirl train` command: exact resume after SIGKILL, and one clear
line for bad config keys, values and workdirs."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

CMD = [sys.executable, "-m", "repirl_jax.cli", "train", "--config", "configs/tiny_cpu.py"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ["--set", "train.steps=6", "--set", "train.checkpoint_every=1"]


def train(workdir, *extra, timeout=600, env=None):
    return subprocess.run(CMD + ["--workdir", str(workdir), *extra], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def exports(workdir):
    out = {}
    for part in ("policy", "prm"):
        for k, v in load_file(os.path.join(workdir, "final", part, "model.safetensors")).items():
            out[f"{part}/{k}"] = v
    return out


@pytest.mark.slow
def test_resume_after_sigkill_is_bitwise_identical(tmp_path, subprocess_env):
    env = subprocess_env
    straight = tmp_path / "straight"
    r = train(straight, *STEPS, env=env)
    assert r.returncode == 0, r.stderr[-2000:]

    resumed = tmp_path / "resumed"
    proc = subprocess.Popen(CMD + ["--workdir", str(resumed), *STEPS], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 600
    while not (resumed / "checkpoints" / "3").is_dir():  # orbax renames a step's dir only when complete
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before step 3's checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (resumed / "final").exists()
    r = train(resumed, *STEPS, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from step" in r.stderr

    a, b = exports(straight), exports(resumed)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    untimed = lambda path: [{k: v for k, v in json.loads(l).items() if not k.endswith("_s")} for l in open(path)]
    rows = untimed(resumed / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5, 6]
    assert rows == untimed(straight / "metrics.jsonl")  # every metric of every step, timings aside
    assert "eval_pass@1" in rows[-1] and rows[-1]["eval_n"] == 8  # held-out eval at the end
    check_outputs(straight, rows)


def tb_scalars(workdir):
    """tag -> [(step, value)] from the TensorBoard event files (TFRecord framing, Event protos)."""
    import struct

    from tensorboardX.proto import event_pb2

    out = {}
    for name in sorted(os.listdir(workdir / "tb")):
        data = (workdir / "tb" / name).read_bytes()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            ev = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in ev.summary.value:
                out.setdefault(v.tag, []).append((ev.step, v.simple_value))
    return out


def check_outputs(workdir, rows):
    """TensorBoard mirrors metrics.jsonl; `repirl plot` and `repirl eval` work on the run's outputs."""
    tb = tb_scalars(workdir)
    assert [s for s, _ in tb["rollout_acc"]] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([v for _, v in tb["prm_loss"]], [r["prm_loss"] for r in rows], rtol=1e-6)
    r = subprocess.run([sys.executable, "-m", "repirl_jax.cli", "plot", str(workdir)], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-1500:]
    for name in ("curves.png", "prm_loss.png", "reward_gap.png", "ess_frac.png", "entropy.png"):
        assert (workdir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    new = workdir / "plots" / "new"  # --out into a directory that does not exist yet
    r = subprocess.run([sys.executable, "-m", "repirl_jax.cli", "plot", str(workdir), "--out", str(new)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and (new / "curves.png").is_file(), r.stderr[-1500:]
    out = workdir / "eval.json"
    r = subprocess.run([sys.executable, "-m", "repirl_jax.cli", "eval", "--policy", str(workdir / "final" / "policy"),
                        "--prm", str(workdir / "final"), "--task", "chain", "--n", "5", "--samples", "4",
                        "--max-new-tokens", "8", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-1500:]
    res = json.loads(out.read_text())
    assert res["n"] == 5 and len(res["problem_ids"]) == 5
    assert {"pass@1_greedy", "avg@4", "pass@4", "maj@4", "prm_best_of_4", "prm_weighted_maj@4"} <= res["per_problem"].keys()
    assert all(len(v) == 5 for v in res["per_problem"].values())
    assert "| prm_best_of_4 |" in r.stdout


def test_sigterm_saves_and_the_same_command_resumes(tmp_path, subprocess_env):
    w = tmp_path / "w"
    proc = subprocess.Popen(CMD + ["--workdir", str(w), "--set", "train.steps=30"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env)
    deadline = time.monotonic() + 600
    while not (w / "metrics.jsonl").exists() or not (w / "metrics.jsonl").read_text().strip():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "stopped by SIGTERM after step" in err, err[-1500:]
    done = [json.loads(l)["step"] for l in open(w / "metrics.jsonl")]
    assert (w / "checkpoints" / str(done[-1])).is_dir() and done[-1] < 30
    r = train(w, "--set", f"train.steps={done[-1] + 1}", env=subprocess_env)
    assert r.returncode == 0 and f"resumed from step {done[-1]}" in r.stderr, r.stderr[-1500:]
    assert [json.loads(l)["step"] for l in open(w / "metrics.jsonl")] == list(range(1, done[-1] + 2))


@pytest.mark.parametrize("args,needle", [
    (["--set", "train.stepz=3"], "unknown key 'stepz' in LoopConfig; valid: steps,"),
    (["--set", "prm.loss=magic"], "PRMConfig.loss='magic'"),
    (["--set", "train.steps=many"], "train.steps=many: expected a int"),
    (["--set", "data.samples=1"], "DataConfig.samples=1"),
    (["--set", "model.layer_unroll=0"], "ModelSource.layer_unroll=0: must be >= 1"),
    (["--set", "data.rollout_slots=2", "--set", "data.rollout_prompts=1"], "DataConfig.rollout_slots=2: rollout_prompts=1"),
    (["--set", "mesh.shape=2,2,2", "--set", "data.rollout_slots=2"],
     "data.rollout_slots=2: must be a multiple of the mesh's batch shards (4)"),
    (["--set", "data.task=gsm8k", "--set", "data.path=/nonexistent/gsm8k.jsonl"], "/nonexistent/gsm8k.jsonl: file not found"),
    (["--set", "policy.credit=exact_error", "--set", "data.task=gsm_symbolic"],
     "policy.credit=exact_error uses exact step labels, which only data.task=chain"),
    (["--set", "policy.credit=prm_error", "--set", "prm.loss=none"], "policy.credit=prm_error locates errors with the PRM"),
])
def test_bad_overrides_are_one_line(tmp_path, args, needle):
    r = train(tmp_path / "w", *args)
    errors = [l for l in r.stderr.splitlines() if "error" in l]
    assert r.returncode == 2 and len(errors) == 1 and needle in errors[0], r.stderr[-1500:]


def test_missing_config_and_incompatible_workdir(tmp_path):
    r = subprocess.run([sys.executable, "-m", "repirl_jax.cli", "train", "--config", "configs/nope.py",
                        "--workdir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "configs/nope.py: config file not found" in r.stderr
    from repirl_jax.cli import load_config

    w = tmp_path / "w"
    w.mkdir()  # as a run with prm.loss=none would have left it
    other = load_config(os.path.join(ROOT, "configs/tiny_cpu.py"), ["prm.loss=none", "train.steps=9"])
    (w / "config.json").write_text(json.dumps(dataclasses.asdict(other)))
    r = train(w)
    assert r.returncode == 2 and "holds a run with a different config" in r.stderr and "prm.loss" in r.stderr
