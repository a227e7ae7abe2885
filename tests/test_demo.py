"""`repirl demo` end to end at toy size: every stage runs, the report has the table with CIs, the
curves are PNGs, and a second call reuses the finished stages."""
import json
import os
import shlex
import subprocess
import sys

import pytest

from repirl_jax import compare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--set", "warmup.steps=20", "--set", "warmup.n_train=200",
         "--set", "rl.train.steps=2", "--set", "rl.data.n_test=12", "--set", "rl.data.n_train=64",
         "--set", "eval_samples=2"]


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    w = tmp_path / "demo"
    cmd = [sys.executable, "-m", "repirl_jax.cli", "demo", "--workdir", str(w), *SMALL]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    report = (w / "report.md").read_text()
    for needle in ("| start |", "| rloo |", "| repirl |", "held-out pass@1 (greedy) [95% CI]", "repirl - rloo",
                   "PRM ranking (within problem)", "PRM step AUROC", "PRM best-of-2", "maj@2", "| hash |",
                   "T=1 accuracy (avg@2) [95% CI]", "T=1 accuracy difference [95% CI]",
                   "| logprob |", "| method | correct | slip | arithmetic | copy |"):
        assert needle in report, report
    assert "| repirl |" in r.stdout  # the table is printed at the end
    assert f"Reproduce: `{shlex.join(['repirl', 'demo', '--workdir', str(w), *SMALL])}`" in report  # the overrides too
    assert (w / "curves.png").read_bytes()[:4] == b"\x89PNG"
    rows = json.loads((w / "results.json").read_text())  # each row a `repirl compare` record, paired by problem id
    paired = compare.compare_runs([rows["rloo"], rows["repirl"]], ["rloo", "repirl"])
    assert any(r["metric"] == "pass@1_greedy" and r["run"] == "repirl" and 0 <= r["p"] <= 1 for r in paired)
    for run in ("rloo", "repirl"):
        assert (w / run / "final" / "policy" / "config.json").is_file()
    assert (w / "start" / "tokenizer.json").is_file()
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "reusing" in again.stderr, again.stderr[-2000:]
    assert "imitation:" not in again.stderr  # no second warm-up


def test_demo_bad_override(tmp_path):
    r = subprocess.run([sys.executable, "-m", "repirl_jax.cli", "demo", "--workdir", str(tmp_path),
                        "--set", "warmup.stepz=3"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown key 'stepz' in WarmupConfig" in r.stderr, r.stderr[-1000:]


def test_warmup_fine_tunes_a_pretrained_model_with_its_own_tokenizer(tmp_path):
    """warmup.init: the start is that model (same architecture and tokenizer), moved by imitation;
    the random-init path builds its own word-level tokenizer and model (here: the first start)."""
    import dataclasses

    import numpy as np

    from repirl_jax import demo, models
    from repirl_jax.config import apply_overrides

    c = apply_overrides(demo.default_config(), ["warmup.steps=2", "warmup.n_train=32", "warmup.batch=4",
                                                "warmup.width=16", "rl.data.n_train=8", "rl.data.n_test=4"])
    first = demo.warmup(c, str(tmp_path / "a"))
    second = demo.warmup(dataclasses.replace(c, warmup=dataclasses.replace(c.warmup, init=first)), str(tmp_path / "b"))
    (ca, pa), (cb, pb) = models.load(first), models.load(second)
    assert ca == cb and models.load_tokenizer(first).get_vocab() == models.load_tokenizer(second).get_vocab()
    assert not np.array_equal(np.asarray(pa["embed"]), np.asarray(pb["embed"]))  # it trained
    assert "a 2-layer width-16 model from random init" == demo._warmup_model(c.warmup)
