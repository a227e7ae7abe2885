"""launch/: tpu_pod.sh against a fake gcloud that records its arguments (and, for `ssh`, can run
the remote command locally), gpu.sh against a prepared venv, local_multiprocess.sh with two real
JAX processes joined by jax.distributed."""
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from tests.helpers import one_device_xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = os.path.join(ROOT, "launch", "tpu_pod.sh")
GPU = os.path.join(ROOT, "launch", "gpu.sh")
LOCAL = os.path.join(ROOT, "launch", "local_multiprocess.sh")

# One file per call in $GCLOUD_DIR holding the argv NUL-separated. With FAKE_GCLOUD_EXEC=1,
# `ssh ... --command C` runs C with bash in $HOME, as one worker would.
FAKE_GCLOUD = textwrap.dedent("""\
    #!/usr/bin/env bash
    n=$(ls "$GCLOUD_DIR" | wc -l)
    printf '%s\\0' "$@" > "$GCLOUD_DIR/$n"
    if [[ ${FAKE_GCLOUD_EXEC:-0} == 1 && $4 == ssh ]]; then
      while [[ $# -gt 0 && $1 != --command ]]; do shift; done
      cd "$HOME" && exec bash -c "$2"
    fi
    """)


def _exe(path, text):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)


@pytest.fixture
def gcloud(tmp_path):
    """run(args, **env) -> (CompletedProcess, [argv of each gcloud call])."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _exe(bindir / "gcloud", FAKE_GCLOUD)
    calls_dir = tmp_path / "gcloud_calls"
    home = tmp_path / "home"
    home.mkdir()

    def run(args, **env):
        shutil.rmtree(calls_dir, ignore_errors=True)
        calls_dir.mkdir()
        e = {k: v for k, v in os.environ.items() if not k.startswith(("TPU_", "REPIRL_"))}
        e.update(PATH=f"{bindir}:{os.environ['PATH']}", GCLOUD_DIR=str(calls_dir), HOME=str(home), **env)
        p = subprocess.run([TPU, *args], env=e, capture_output=True, text=True, timeout=60)
        calls = sorted(calls_dir.iterdir(), key=lambda f: int(f.name))
        return p, [f.read_text().split("\0")[:-1] for f in calls]

    run.home = home
    return run


BASE = ["--name", "pod1", "--zone", "us-central2-b"]


def _flag(argv, name):
    return argv[argv.index(name) + 1]


def test_create_passes_type_version_zone_project(gcloud):
    p, calls = gcloud(["create", *BASE, "--type", "v4-32", "--version", "tpu-ubuntu2204-base",
                       "--project", "proj", "--spot"])
    assert p.returncode == 0, p.stderr
    (c,) = calls
    assert c[:5] == ["compute", "tpus", "tpu-vm", "create", "pod1"]
    assert _flag(c, "--zone") == "us-central2-b" and _flag(c, "--project") == "proj"
    assert _flag(c, "--accelerator-type") == "v4-32" and _flag(c, "--version") == "tpu-ubuntu2204-base"
    assert "--spot" in c


def test_env_fallbacks(gcloud):
    p, calls = gcloud(["create"], TPU_NAME="n2", TPU_ZONE="europe-west4-a", TPU_TYPE="v5litepod-16",
                      TPU_VERSION="v2-alpha-tpuv5-lite", TPU_PROJECT="p2")
    assert p.returncode == 0, p.stderr
    (c,) = calls
    assert c[4] == "n2" and _flag(c, "--zone") == "europe-west4-a" and _flag(c, "--project") == "p2"
    assert _flag(c, "--accelerator-type") == "v5litepod-16" and "--spot" not in c


def test_setup_run_logs_stop_use_every_worker(gcloud):
    p, (setup,) = gcloud(["setup", *BASE, "--repo", "https://example.org/repirl.git", "--ref", "dev"])
    assert p.returncode == 0, p.stderr
    assert setup[:5] == ["compute", "tpus", "tpu-vm", "ssh", "pod1"] and "--worker=all" in setup
    script = _flag(setup, "--command")
    assert "git clone --quiet https://example.org/repirl.git repirl_jax" in script
    assert "fetch --quiet origin dev" in script and "python3 -m venv .venv" in script
    assert "pip install -q -e '.[tpu]'" in script and "already installed" in script
    assert "--project" not in setup  # gcloud's default project when none is given

    p, (run,) = gcloud(["run", *BASE, "--", "repirl", "train", "--config", "configs/my cfg.py",
                        "--workdir", "gs://b/r"])
    assert p.returncode == 0, p.stderr
    assert run[3] == "ssh" and "--worker=all" in run
    script = _flag(run, "--command")
    assert "nohup repirl train --config configs/my\\ cfg.py --workdir gs://b/r > repirl.log" in script
    assert ". .venv/bin/activate" in script and "REPIRL_DISTRIBUTED=1" in script

    p, (logs,) = gcloud(["logs", *BASE, "--lines", "7"])
    assert p.returncode == 0 and "--worker=all" in logs and "tail -n 7 repirl.log" in _flag(logs, "--command")

    p, calls = gcloud(["stop", *BASE])
    assert p.returncode == 0, p.stderr
    assert [c[3] for c in calls] == ["ssh", "delete"]
    assert "--worker=all" in calls[0] and "kill -TERM" in _flag(calls[0], "--command")
    assert calls[1][:5] == ["compute", "tpus", "tpu-vm", "delete", "pod1"] and "--quiet" in calls[1]
    p, calls = gcloud(["stop", *BASE, "--keep"])
    assert [c[3] for c in calls] == ["ssh"]


def test_every_remote_script_is_valid_bash(gcloud):
    for args in (["setup", "--repo", "u"], ["run", "--", "repirl", "train"], ["logs"], ["stop"]):
        p, calls = gcloud([args[0], *BASE, *args[1:]])
        check = subprocess.run(["bash", "-n", "-c", _flag(calls[0], "--command")], capture_output=True, text=True)
        assert check.returncode == 0, (args, check.stderr)


def test_run_logs_stop_executed_on_a_fake_worker(gcloud):
    """The remote commands themselves, run locally: background job, its log, SIGTERM by pid."""
    repo = gcloud.home / "repirl_jax"
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / ".venv" / "bin" / "activate").write_text("")
    job = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: (print('saved'), sys.exit(0))); " \
          "print('step 1', flush=True); time.sleep(60)"
    p, _ = gcloud(["run", *BASE, "--", sys.executable, "-c", job], FAKE_GCLOUD_EXEC="1")
    assert p.returncode == 0 and "started pid" in p.stdout, p.stdout + p.stderr
    pid = int((repo / ".repirl.pid").read_text())
    for _ in range(100):
        if "step 1" in (repo / "repirl.log").read_text():
            break
        time.sleep(0.1)
    p, _ = gcloud(["run", *BASE, "--", "true"], FAKE_GCLOUD_EXEC="1")
    assert p.returncode != 0 and "already running" in p.stdout
    p, _ = gcloud(["logs", *BASE], FAKE_GCLOUD_EXEC="1")
    assert "step 1" in p.stdout
    p, calls = gcloud(["stop", *BASE, "--keep"], FAKE_GCLOUD_EXEC="1")
    assert p.returncode == 0 and "stopped" in p.stdout, p.stdout + p.stderr
    assert "saved" in (repo / "repirl.log").read_text()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.parametrize("args, says", [
    ([], "missing command"),
    (["launch"], "unknown command 'launch'"),
    (["create", "--zone", "z", "--type", "v4-8", "--version", "v"], "create needs --name (or $TPU_NAME)"),
    (["create", "--name", "n", "--type", "v4-8", "--version", "v"], "needs --zone (or $TPU_ZONE)"),
    (["create", *BASE, "--version", "v"], "needs --type (or $TPU_TYPE)"),
    (["create", *BASE, "--type", "v4-8"], "needs --version (or $TPU_VERSION)"),
    (["setup", *BASE], "setup needs --repo (or $REPIRL_REPO)"),
    (["run", *BASE], "run needs the command after '--'"),
    (["logs", *BASE, "--bogus"], "unknown option '--bogus'"),
    (["logs", *BASE, "--lines"], "option --lines needs a value"),
    (["stop", *BASE, "--", "rm", "-rf"], "stop takes no command"),
])
def test_bad_arguments_one_line_error(gcloud, args, says):
    p, calls = gcloud(args)
    assert p.returncode == 2 and calls == []
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tpu_pod.sh: error:") and says in lines[0], p.stderr


def test_help(gcloud):
    p, calls = gcloud(["--help"])
    assert p.returncode == 0 and "tpu_pod.sh create" in p.stdout and calls == []


# ---------------------------------------------------------------- gpu.sh
def test_gpu_installs_once_then_runs_in_the_venv(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    os.symlink(sys.executable, venv / "bin" / "python")
    _exe(venv / "bin" / "pip", f"#!/usr/bin/env bash\necho \"$*\" >> {tmp_path}/pip.log\n")
    env = {**os.environ, "VENV": str(venv)}
    env.pop("JAX_PLATFORMS", None)
    cmd = [GPU, "python", "-c", "import os, shutil; print(os.environ['JAX_PLATFORMS'], shutil.which('python'))"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split()[-2:] == ["cuda", str(venv / "bin" / "python")]  # the venv's python, CUDA required
    pip_calls = (tmp_path / "pip.log").read_text().splitlines()
    assert pip_calls[-1] == "install -q -e . jax[cuda12]==0.10.2"
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and (tmp_path / "pip.log").read_text().splitlines() == pip_calls  # skipped


def test_gpu_needs_a_command():
    p = subprocess.run([GPU], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.startswith("gpu.sh: error: missing the command")


# ---------------------------------------------------------------- local_multiprocess.sh
PROBE = """
import jax, numpy as np
from jax.experimental import multihost_utils
from repirl_jax.distributed import initialize_from_env
i, n = initialize_from_env()
g = multihost_utils.process_allgather(np.array([10 * i + 1], np.int32)).ravel().tolist()
print("probe", i, n, jax.process_index(), jax.process_count(), jax.device_count(), jax.local_device_count(), g)
"""


def test_two_cpu_processes_join_and_gather(tmp_path):
    env = {**os.environ, "LOGDIR": str(tmp_path), "PYTHONPATH": ROOT,
           "XLA_FLAGS": one_device_xla_flags()}  # one CPU device per process, as on a real host
    p = subprocess.run([LOCAL, "2", "--", sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    for i in range(2):
        log = (tmp_path / f"proc_{i}.log").read_text().splitlines()
        assert all(line.startswith(f"[rank {i}] ") for line in log)
        assert f"[rank {i}] probe {i} 2 {i} 2 2 1 [1, 11]" in log


def test_one_failing_rank_stops_the_others(tmp_path):
    job = "import os, sys, time\nif os.environ['REPIRL_PROCESS_ID'] == '1': sys.exit(3)\ntime.sleep(60)"
    t0 = time.time()
    p = subprocess.run([LOCAL, "2", "--", sys.executable, "-c", job], env={**os.environ, "LOGDIR": str(tmp_path)},
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 3 and "rank 1 exited with status 3" in p.stderr
    assert time.time() - t0 < 30  # rank 0 was stopped, not waited for


@pytest.mark.parametrize("args, says", [([], "missing N"), (["two", "--", "true"], "positive integer"),
                                        (["2", "--"], "missing the command")])
def test_local_bad_arguments(args, says):
    p = subprocess.run([LOCAL, *args], capture_output=True, text=True)
    assert p.returncode == 2 and says in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_local_logs_go_with_the_run_not_into_the_callers_directory(tmp_path):
    """Without LOGDIR: WORKDIR/logs when the command names --workdir, else logs/local_multiprocess."""
    env = {k: v for k, v in os.environ.items() if k != "LOGDIR"}
    for cmd, where in ((["true", "--workdir", "run"], tmp_path / "run" / "logs"),
                       (["true", "--workdir=run2"], tmp_path / "run2" / "logs"),
                       (["true"], tmp_path / "logs" / "local_multiprocess")):
        p = subprocess.run([LOCAL, "2", "--", *cmd], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert (where / "proc_0.log").is_file() and (where / "proc_1.log").is_file(), cmd
    assert not list(tmp_path.glob("proc_*.log"))
