"""CHAMP first-wrong-step evaluation: steps and labels from text, token -> step mapping, step and
prefix scores by hand, the dev/test threshold protocol on synthetic scores, real labels land on
the marked line, and `repirl eval --champ / --beam` end to end on a tiny exported PRM."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from repirl_jax import champ_eval
from repirl_jax import evaluate as ev

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = "a\n\nb c\n  \nd"  # lines: "a" @0, "" @2, "b c" @3, "  " @7, "d" @10


def test_steps_and_labels_from_text():
    assert champ_eval.step_starts(TEXT) == [0, 3, 10]
    assert champ_eval.step_starts("") == [0]
    assert champ_eval.step_label(TEXT, None) is None
    assert champ_eval.step_label(TEXT, (3, 6)) == 1
    assert champ_eval.step_label(TEXT, (1, 5)) == 1  # leading newlines of a span are skipped
    assert champ_eval.step_label(TEXT, (0, 1)) == 0
    assert champ_eval.step_label(TEXT, (10, 11)) == 2


def test_token_steps_by_offsets():
    from repirl_jax.data import vocab

    tok = vocab.build_tokenizer([TEXT])
    ids, step = champ_eval.token_steps(tok, TEXT)
    assert tok.decode(ids) == TEXT
    # a \n \n | b ' ' c \n ' ' ' ' \n | d : newlines belong to the step before them
    assert step.tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 2]


def test_step_and_prefix_scores_hand():
    own, prefix = champ_eval.step_scores(np.array([1.0, 2, 3, 4, 5]), np.array([0, 0, 1, 1, 2]))
    np.testing.assert_allclose(own, [1.5, 3.5, 5.0])
    np.testing.assert_allclose(prefix, [1.5, 2.5, 3.0])
    own, _ = champ_eval.step_scores(np.array([1.0, 2]), np.array([0, 3]))  # steps without tokens are skipped
    np.testing.assert_allclose(own, [1.0, 2.0])


def synthetic(n_problems=40, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    recs = []
    for p in range(n_problems):
        for k in range(2):
            n = int(rng.integers(2, 6))
            label = None if rng.random() < 0.4 else int(rng.integers(0, n))
            s = np.where(np.arange(n) < (n if label is None else label), 1.0, -1.0) + noise * rng.normal(size=n)
            recs.append({"problem_id": f"p{p}", "label": label, "step": s.tolist(),
                         "prefix": (np.cumsum(s) / np.arange(1, n + 1)).tolist(), "solution_score": float(s.mean())})
    return recs


def test_perfect_step_scores_give_perfect_metrics():
    out = champ_eval.evaluate_records(synthetic(), seed=0)
    assert out["n_dev"] + out["n_test"] == out["n_solutions"] == 80
    assert out["step"]["accuracy"] == (1.0, 1.0, 1.0) and out["step"]["f1"] == (1.0, 1.0, 1.0)
    assert -1.0 < out["step"]["threshold"] <= 1.0
    assert out["auroc"][0] == 1.0


def test_threshold_from_dev_half_metrics_on_test_half():
    recs = synthetic(noise=0.8, seed=1)
    out = champ_eval.evaluate_records(recs, seed=5)
    pids = sorted({r["problem_id"] for r in recs})
    dev_ids = set(np.random.default_rng(5).permutation(pids)[:len(pids) // 2].tolist())
    dev = [r for r in recs if r["problem_id"] in dev_ids]
    test = [r for r in recs if r["problem_id"] not in dev_ids]
    tau = ev.pick_threshold([r["prefix"] for r in dev], [r["label"] for r in dev], objective="f1")
    m = ev.first_wrong_step_metrics([ev.first_wrong_step(r["prefix"], tau) for r in test], [r["label"] for r in test])
    assert out["prefix"]["threshold"] == tau
    for k in ("accuracy", "f1", "error_acc", "correct_acc"):
        point, lo, hi = out["prefix"][k]
        assert point == pytest.approx(m[k]) and lo <= point <= hi and hi - lo > 0.01, k
    s = [r["solution_score"] for r in recs]
    assert out["auroc"][0] == pytest.approx(ev.auroc(s, [r["label"] is None for r in recs]))


def test_real_champ_labels_point_at_the_marked_line():
    from repirl_jax.data import packaged

    _, sols = packaged.champ()
    n = 0
    for s in sols:
        if s.first_wrong_span is None:
            continue
        starts = champ_eval.step_starts(s.text)
        k = champ_eval.step_label(s.text, s.first_wrong_span)
        end = starts[k + 1] if k + 1 < len(starts) else len(s.text)
        assert starts[k] < s.first_wrong_span[1] and s.first_wrong_span[0] < end, (s.problem_id, k)
        n += 1
    assert n > 400


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A training run's final dir, by hand: a tiny random policy and a head PRM on SmolLM2's tokenizer."""
    import jax

    from repirl_jax import models

    tok = models.load_tokenizer(models.smollm2_dir())
    cfg = models.ModelConfig(family="llama", vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_layers=1,
                             num_heads=2, num_kv_heads=1, head_dim=8, tie_word_embeddings=True,
                             eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), max_position_embeddings=2048)
    params = models.init_params(cfg, jax.random.key(0))
    final = tmp_path_factory.mktemp("run") / "final"
    models.export_hf(cfg, params, str(final / "policy"), tokenizer=tok)
    models.export_hf(cfg, params, str(final / "prm"), tokenizer=tok)
    np.savez(final / "prm_head.npz", w=np.random.default_rng(0).normal(size=16).astype(np.float32),
             b=np.zeros((), np.float32))
    (final / "prm.json").write_text(json.dumps({"form": "head", "beta": 0.05, "loss": "repirl",
                                                "ref": str(final / "policy")}))
    return final


def repirl(*args):
    r = subprocess.run([sys.executable, "-m", "repirl_jax.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    return r


def test_cli_eval_champ(exported, tmp_path):
    out = tmp_path / "champ.json"
    r = repirl("eval", "--champ", "6", "--policy", exported / "policy", "--prm", exported,
               "--prm-start", exported / "policy", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["summary"]["n_solutions"] == len(res["solutions"]) >= 10
    assert {"accuracy", "f1", "threshold"} <= res["summary"]["step"].keys() and len(res["summary"]["auroc"]) == 3
    assert "| f1 step-score" in r.stdout and "AUROC" in r.stdout and "| prm | prm_init | random | length |" in r.stdout
    # the nulls score the same solutions; the untrained head (w = 0) gives every token the same reward
    # and the random scorer different ones, so their solution scores differ from the PRM's
    nulls = res["nulls"]
    assert set(nulls) == {"prm_init", "random", "length"}
    assert all(v["n_solutions"] == res["summary"]["n_solutions"] and v["n_test"] == res["summary"]["n_test"]
               for v in nulls.values())
    assert nulls["random"]["auroc"] != res["summary"]["auroc"]
    # the length null's solution score is the token count: its AUROC is length's against "no wrong step"
    lengths = [s["tokens"] for s in res["solutions"]]
    assert nulls["length"]["auroc"][0] == pytest.approx(ev.auroc(lengths, [s["label"] is None for s in res["solutions"]]))
    r = repirl("eval", "--champ", "--policy", exported / "policy")
    assert r.returncode == 2 and "--champ needs --prm" in r.stderr


def test_cli_eval_beam_then_compare(exported, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    common = ["--policy", exported / "policy", "--prm", exported, "--task", "chain", "--n", "3",
              "--max-new-tokens", "6", "--beam", "2", "--expansions", "2"]
    r = repirl("eval", *common, "--out", a)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(a.read_text())
    assert len(res["per_problem"]["prm_beam"]) == 3 and len(res["summary"]["prm_beam"]) == 3
    # no --set data.max_prompt_len: the limit is what the model's context leaves after the response
    assert res["dropped"] == 0 and res["max_prompt_len"] == 2048 - 6
    assert "| prm_beam |" in r.stdout
    assert repirl("eval", *common, "--seed", "1", "--out", b).returncode == 0
    r = repirl("compare", a, b)
    assert r.returncode == 0 and "| prm_beam | b.json | 3 |" in r.stdout, r.stderr[-2000:]
    r = repirl("eval", "--policy", exported / "policy", "--task", "chain", "--n", "3", "--set", "max_prompt_len=8")
    assert r.returncode == 2 and "every prompt exceeds data.max_prompt_len=8 tokens" in r.stderr, r.stderr[-2000:]
    r = repirl("eval", "--policy", exported / "policy", "--task", "chain", "--beam", "2")
    assert r.returncode == 2 and "--beam needs --prm" in r.stderr
