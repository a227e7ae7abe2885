"""benchmarks/ablations.py: the summary statistics, refusals, and a toy-size sweep that resumes
without redoing anything and labels its output as a toy run."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from benchmarks import ablations
from repirl_jax import compare, demo
from repirl_jax import evaluate as ev

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = ["--steps", "1", "--seeds", "1", "--variants", "rloo,repirl", "--bon-samples", "2",
       "--set", "warmup.steps=10", "--set", "warmup.lr_warmup=2",
       "--set", "warmup.n_train=100", "--set", "rl.data.n_test=6", "--set", "rl.data.n_train=32"]


def test_summary_rows():
    c = demo.default_config()
    summary = {"prm/auroc": [0.75], "prm/ranking": [0.4, 0.3, 0.5], "prm/step_auroc": [0.9],
               "prm/best_of_16": [0.6, 0.5, 0.7], "maj@16": [0.55, 0.45, 0.65], "logprob/ranking": [0.52, 0.4, 0.6],
               "length/ranking": [0.61, 0.5, 0.7], "hash/ranking": [0.5, 0.4, 0.6]}  # eval_runner.EvalReport's
    results = {"rloo": [{"greedy": [0, 1, 0, 0], "t1": [0.25, 0.5, 0, 0]}, {"greedy": [0, 1, 1, 0], "t1": [0, 1, 0.5, 0]}],
               "repirl": [{"greedy": [1, 1, 0, 0], "summary": summary, "t1": [0.5, 1, 0, 0.25]},
                          {"greedy": [1, 1, 1, 1], "t1": [1, 0.75, 0.5, 0.5]}]}
    walls = {"rloo": [{"train_s": 10.0}, {"train_s": 12.0}], "repirl": [{"train_s": 20.0}, {"train_s": 22.0}]}
    rows = ablations.summarize(c, results, walls)
    assert [r["method"] for r in rows] == ["rloo", "repirl"]
    assert rows[0]["held-out pass@1 (greedy) [95% CI]"] == ev.format_ci(
        *compare.seeds_problems_bootstrap(np.array([[0, 1, 0, 0], [0, 1, 1, 0]])))
    m, lo, hi, p = ev.paired_bootstrap([1, 1, 0.5, 0.5], [0, 1, 0.5, 0])
    assert rows[1]["diff vs rloo [95% CI]"] == ev.format_ci(m, lo, hi) and rows[1]["p"] == p
    # T=1 accuracy (avg@4 per problem) over seeds and problems, and its paired difference
    assert rows[0]["T=1 accuracy [95% CI]"] == ev.format_ci(
        *compare.seeds_problems_bootstrap(np.array([[0.25, 0.5, 0, 0], [0, 1, 0.5, 0]])))
    m, lo, hi, p = ev.paired_bootstrap([0.75, 0.875, 0.25, 0.375], [0.125, 0.75, 0.25, 0])
    assert rows[1]["T=1 diff vs rloo [95% CI]"] == ev.format_ci(m, lo, hi) and rows[1]["T=1 p"] == p
    assert "T=1 diff vs rloo [95% CI]" not in rows[0]
    assert rows[1]["PRM AUROC (seed 0)"] == 0.75 and rows[1]["train s / seed"] == 21
    assert rows[1]["PRM ranking (seed 0)"] == 0.4 and "PRM ranking (seed 0)" not in rows[0]
    assert "policy.alpha_p=" in rows[1]["overrides"] and "diff vs rloo [95% CI]" not in rows[0]
    assert (rows[1]["PRM step AUROC"], rows[1]["PRM best-of-16"], rows[1]["maj@16"]) == (0.9, 0.6, 0.55)
    assert (rows[1]["logprob ranking"], rows[1]["length ranking"], rows[1]["hash ranking"]) == (0.52, 0.61, 0.5)
    assert "PRM step AUROC" not in rows[0] and "hash ranking" not in rows[0]


def test_heldout_curves_and_the_share_of_rollouts_to_reach_the_base(tmp_path):
    """Means over seeds of the loop's held-out evaluations, and the first step reaching the base's
    final mean (here rloo ends at 0.3; repirl's mean reaches it at step 20 of 40)."""
    evals = {("rloo", 0): [0.1, 0.2, 0.2, 0.3], ("rloo", 1): [0.1, 0.1, 0.3, 0.3],
             ("repirl", 0): [0.1, 0.3, 0.4, 0.4], ("repirl", 1): [0.2, 0.3, 0.2, 0.5]}
    for (v, s), accs in evals.items():
        d = tmp_path / v / f"seed{s}"
        d.mkdir(parents=True)
        lines = [{"step": t, "rollout_acc": 0.1} for t in range(1, 41)]
        lines += [{"step": 10 * (i + 1), "eval_pass@1": a, "eval_n": 4} for i, a in enumerate(accs)]
        (d / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    rows = ablations.heldout_curves(str(tmp_path), {"rloo": [0, 1], "repirl": [0, 1]}, "rloo")
    assert rows[0] == {"method": "rloo", "seeds": 2, "step 10": "0.100", "step 20": "0.150", "step 30": "0.250",
                       "step 40": "0.300"}
    assert rows[1]["step 20"] == "0.300" and rows[1]["reaches rloo's final 0.300"] == "step 20 (50%)"
    slow = ablations.heldout_curves(str(tmp_path), {"rloo": [0], "repirl": [0]}, "repirl")  # repirl seed 0 ends at 0.4
    assert slow[0]["reaches repirl's final 0.400"] == "no"
    assert "Held-out greedy pass@1 during training" in ablations._during_section(rows, "rloo")


def test_only_smaller_sizes_make_a_toy_run():
    """A --set that changes the testbed (slip rate, PRM lr) is a result; one that lowers a size is a toy."""
    testbed = ablations.configure(ablations_args(["warmup.slip_rate=0.4", "rl.prm.optim.lr=1e-4"]))
    assert ablations.smaller_than_demo(testbed) == []
    small = ablations.configure(ablations_args(["rl.data.n_test=6", "warmup.steps=2000"]))
    assert ablations.smaller_than_demo(small) == ["rl.data.n_test=6 (demo: 400)"]


def ablations_args(sets):
    import argparse

    return argparse.Namespace(set=sets, steps=200)


def test_unknown_variant_or_no_baseline_is_refused(capsys):
    assert ablations.main(["--variants", "rloo,magic"]) == 2
    assert "['magic'] unknown" in capsys.readouterr().err
    assert ablations.main(["--variants", "repirl"]) == 2
    assert "rloo (the baseline) missing" in capsys.readouterr().err
    assert ablations.main(["--variants", "rloo,half", "--base", "rloo_half"]) == 2
    assert "--base rloo_half is not among --variants rloo,half" in capsys.readouterr().err


@pytest.mark.slow
def test_toy_sweep_runs_resumes_and_says_toy(tmp_path):
    out = tmp_path / "results.md"
    cmd = [sys.executable, "-m", "benchmarks.ablations", *TOY, "--out", str(out), "--workdir", str(tmp_path / "runs")]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# Ablations") and "TOY RUN, NOT A RESULT" in text
    assert "python -m benchmarks.ablations --steps 1 --seeds 1" in text
    assert f"**2 of {len(ablations.VARIANTS)} variants** (not run: head_zero_init," in text  # a subset says so
    for needle in ("| rloo | prm.loss=none policy.credit=last | 1 |", "| repirl | (demo default", "| repirl | PRM best-of-n |",
                   "| repirl | majority vote |", "| repirl | prm | PRM, mean token reward |", "| repirl | hash |",
                   "PRM step AUROC", "| PRM best-of-2 | maj@2 |", "| T=1 accuracy [95% CI] | T=1 diff vs rloo"):
        assert needle in text, text
    assert (tmp_path / "results_bon.png").read_bytes()[:4] == b"\x89PNG"
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "reusing" in again.stderr, again.stderr[-2000:]
    assert "train:" not in again.stderr  # no training step ran the second time
    assert out.read_text().split("\n", 4)[4] == text.split("\n", 4)[4]  # same results, below the header


def test_sweep_workers_exit_when_the_sweep_is_killed(tmp_path):
    """--jobs N: kill -9 of the sweep's process ends its pool workers (they would otherwise go on
    with the runs already queued to them)."""
    script = ("import concurrent.futures, multiprocessing, os, sys, time\n"
              "from benchmarks import ablations\n"
              "if __name__ == '__main__':\n"
              "    ctx = multiprocessing.get_context('spawn')\n"
              "    pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx, initializer=ablations.exit_with_parent,\n"
              "                                                  initargs=(os.getpid(), 0.1))\n"
              "    print(pool.submit(os.getpid).result(), flush=True)\n"
              "    pool.submit(time.sleep, 600)\n"
              "    time.sleep(600)\n")
    (tmp_path / "sweep.py").write_text(script)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parent = subprocess.Popen([sys.executable, str(tmp_path / "sweep.py")], cwd=root, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": root})
    worker = int(parent.stdout.readline())
    os.kill(parent.pid, 9)
    parent.wait()
    for _ in range(100):
        try:  # gone, or a zombie (exited; reaped by whoever adopted it)
            if open(f"/proc/{worker}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
                return
        except FileNotFoundError:
            return
        time.sleep(0.1)
    os.kill(worker, 9)
    pytest.fail(f"pool worker {worker} still running 10 s after its parent was killed")


def test_fresh_split_scores_finished_runs_on_problems_outside_both_splits(tmp_path, capsys):
    """benchmarks.fresh_split: another data.seed's problems, none in the training split, greedy of
    each variant's seed runs with a CI and the paired difference to the base."""
    import dataclasses
    import json
    import shutil

    from benchmarks import fresh_split
    from repirl_jax import loop
    from repirl_jax.config import apply_overrides

    c = apply_overrides(demo.default_config(), ["warmup.steps=2", "warmup.n_train=32", "warmup.batch=4",
                                                "warmup.width=16", "rl.data.n_train=40", "rl.data.n_test=5"])
    root = tmp_path / "sweep"
    start = demo.warmup(c, str(root))
    (root / "config.json").write_text(json.dumps(dataclasses.asdict(c)))
    for v in ("rloo", "repirl"):
        shutil.copytree(start, root / v / "seed0" / "final" / "policy")
    assert fresh_split.main([str(root), "rloo,repirl", "--seeds", "1", "--data-seed", "7"]) == 0
    out = capsys.readouterr().out
    train, test = loop.load_problems(c.rl)
    _, fresh = loop.load_problems(apply_overrides(c.rl, ["data.seed=7"]))
    kept = [q for q in fresh if q.prompt not in {p.prompt for p in train}]
    assert {q.prompt for q in fresh} != {q.prompt for q in test}  # another draw than the sweep's held-out split
    assert f"fresh split: data.seed=7, {len(kept)} problems not in the training split" in out
    assert "rloo: " in out and "repirl: " in out and "- rloo: 0.000 [0.00, 0.00], p 1.000" in out  # same policy
