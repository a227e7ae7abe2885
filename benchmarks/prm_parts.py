"""A trained head_logprob PRM taken apart, on the held-out samples `benchmarks.prm_offline sample`
cached in OUTDIR: the whole PRM, its trunk's log-likelihood alone (w = b = 0, c = 1) and its
learned head alone (c = 0), each through the one evaluation (`eval_runner.report`).

  python -m benchmarks.prm_parts FINAL_DIR START OUTDIR

FINAL_DIR: a run's WORKDIR/final; START: the run's warm-up start (its tokenizer). Prints the head's
c, b and |w| and one RESULT line per part.
"""
import dataclasses
import json
import os
import sys

os.environ.setdefault("TQDM_DISABLE", "1")


def main(final, start, out):
    import jax.numpy as jnp
    from benchmarks.prm_offline import HeldOut
    from repirl_jax import demo, eval_runner, models
    from repirl_jax.config import apply_overrides

    c = apply_overrides(demo.default_config(), os.environ.get("OVR", "").split())
    _, (_, test) = demo.problems(c)
    held = HeldOut(out, test[:200], models.load_tokenizer(start), c.rl.data.max_prompt_len)
    sc = eval_runner.PRMScorer.load(final)
    if sc.form != "head_logprob":
        raise SystemExit(f"{final}: a {sc.form} PRM; the parts are those of head_logprob")
    h, trunk = sc.params["head"], sc.params["trunk"]
    print(f"head: c {float(h['c']):.4f}  b {float(h['b']):.4f}  |w| {float(jnp.linalg.norm(h['w'])):.4f}")
    parts = {"whole": sc.params,
             "trunk_only": {"trunk": trunk, "head": {"w": 0 * h["w"], "b": 0 * h["b"], "c": jnp.float32(1.0)}},
             "head_only": {"trunk": trunk, "head": {"w": h["w"], "b": h["b"], "c": jnp.float32(0.0)}}}
    for name, params in parts.items():
        sm = held.report(held.rewards(dataclasses.replace(sc, params=params))).summary
        keys = ["prm/ranking", "prm/step_auroc", "prm/fws_f1", "prm_best_of_16", "prm_min/best_of_16", "maj@16"]
        print("RESULT", name, json.dumps({k: round(sm[k][0], 3) for k in keys}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
