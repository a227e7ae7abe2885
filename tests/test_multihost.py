"""The multi-host path on one machine: 2 JAX processes (one CPU device each) joined through a
localhost coordinator train the tiny config; the exports equal a single-process run of the same
global batch, only rank 0 writes metrics and exports, and each process logs its rank."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.helpers import one_device_xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Adam divides by sqrt(v) + eps: with eps 1e-8 a gradient entry near 0 whose last bits differ
# between a 2-device and a 1-device reduction moves by ~lr; eps 1e-6 and lr 1e-4 keep the
# comparison about the computation, not about that amplification (as in test_train_step).
TRAIN = [sys.executable, "-m", "repirl_jax.cli", "train", "--config", "configs/tiny_cpu.py", "--set", "train.steps=3",
         "--set", "policy.optim.eps=1e-6", "--set", "prm.optim.eps=1e-6", "--set", "policy.optim.lr=1e-4",
         "--set", "prm.optim.lr=1e-4",
         # Gumbel draws, why (issue 16, measured with the rollouts of both runs dumped): the 1- and
         # 2-process samplers' logits differ in the last bits (log-probs within 9.5e-7), and over this
         # random model's near-uniform 49k-token distribution an inverse-CDF draw now and then falls on
         # the other side of a CDF boundary (neighbouring ids 9068 vs 9067 at step 3; on CI's machine at
         # step 2), and the runs part from there. A Gumbel argmax only moves when its top two are within
         # that roundoff, so both runs train on the same rollouts and the comparison is about the
         # multi-process plumbing (test_sampling::test_t1_rows_agree_up_to_draws_on_a_cdf_boundary).
         "--set", "data.draw=gumbel"]


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    env = {**os.environ, "XLA_FLAGS": one_device_xla_flags(), "JAX_PLATFORMS": "cpu", "LOGDIR": str(tmp_path / "logs")}
    multi = subprocess.run(["launch/local_multiprocess.sh", "2", "--", *TRAIN, "--workdir", str(tmp_path / "mp")],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert multi.returncode == 0, multi.stdout[-3000:] + multi.stderr[-3000:]
    single = subprocess.run([*TRAIN, "--workdir", str(tmp_path / "sp")], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=900)
    assert single.returncode == 0, single.stderr[-3000:]
    for rank in (0, 1):
        log = (tmp_path / "logs" / f"proc_{rank}.log").read_text()
        assert f"process {rank} of 2" in log and f"[rank {rank}] " in log, log[-2000:]
    rows = [json.loads(l) for l in open(tmp_path / "mp" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3]  # written once, by rank 0
    ref = [json.loads(l) for l in open(tmp_path / "sp" / "metrics.jsonl")]
    np.testing.assert_allclose([r["prm_loss"] for r in rows], [r["prm_loss"] for r in ref], rtol=1e-4, atol=1e-6)
    for part in ("policy", "prm"):
        a = load_file(str(tmp_path / "mp" / "final" / part / "model.safetensors"))
        b = load_file(str(tmp_path / "sp" / "final" / part / "model.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_allclose(a[k], b[k], atol=1e-5, err_msg=f"{part}/{k}")
