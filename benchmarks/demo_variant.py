"""python -m benchmarks.demo_variant START WORKDIR [key=value ...]: one RL stage of the demo from START (an
imitation start, e.g. runs/demo/start) with overrides of demo.default_config().rl, then the one evaluation
(demo.evaluate_run); prints a RESULT line and writes WORKDIR/eval_summary.json, a `repirl compare` file (two
variants' files give the paired difference over the same held-out problems). Where START is a demo's start
(its workdir holds results.json), it also prints the paired difference to each of that demo's rows (greedy
and T=1 accuracy, the same 400 held-out problems). A finished run and its evaluation are reused. Produced
the issue-15 tables.

    python -m benchmarks.demo_variant START WORKDIR [--config configs/demo_smollm2.py] [--set KEY=VALUE] [key=value ...]

--config: the demo config (a configs/*.py file whose config() is a demo.DemoConfig, as `repirl demo
--config`; default the toy demo's); --set KEY=VALUE: an override of that DemoConfig (as `repirl demo --set`),
for what the start and the held-out problems share (e.g. rl.data.ops=+-)."""
import argparse, sys, time, json, os, logging
os.environ["TQDM_DISABLE"] = "1"
logging.basicConfig(level=logging.WARNING)
from repirl_jax import compare, demo, loop
from repirl_jax.cli import load_config
from repirl_jax.config import apply_overrides

KEYS = ("pass@1_greedy", "prm/ranking", "prm/step_auroc", "prm_best_of", "maj@", "avg@", "logprob/ranking", "hash/ranking",
        "length/ranking", "lucky", "prm/fws_f1", "prm_min/ranking", "prm/auroc", "prm_init/ranking", "prm_init/best_of",
        "prm_init/step_auroc", "errors/")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("start")
    ap.add_argument("workdir")
    ap.add_argument("--config", help="a configs/*.py file whose config() is a demo.DemoConfig (default: the demo's)")
    ap.add_argument("--set", action="append", default=[], help="a DemoConfig override (e.g. rl.data.ops=+-: the "
                    "held-out problems follow it too), where the bare key=value ones override its RL stage")
    a, sets = ap.parse_known_args()
    start, wd = a.start, a.workdir
    c = load_config(a.config, a.set) if a.config else apply_overrides(demo.default_config(), a.set)
    cfg = demo.rl_config(c, start, sets)
    t0 = time.time()
    if not os.path.isfile(os.path.join(wd, "final", "policy", "config.json")):
        loop.run(cfg, wd)
    tr = time.time() - t0
    _, (_, test) = demo.problems(c)
    out = os.path.join(wd, "eval_summary.json")
    if not os.path.isfile(out):
        r = demo.evaluate_run(c, os.path.join(wd, "final", "policy"),
                              os.path.join(wd, "final") if cfg.prm.loss != "none" else None, test, 0, start_dir=start)
        with open(out, "w") as f:
            json.dump({"problem_ids": [p.id for p in test], **r.to_json()}, f)
    res = json.load(open(out))
    sm = res["summary"]
    print("RESULT", wd, sets, f"train_s={tr:.0f}",
          json.dumps({k: [round(x, 3) for x in sm[k]] for k in sm if k.startswith(KEYS)}), flush=True)
    demo_results = os.path.join(os.path.dirname(os.path.abspath(start)), "results.json")
    if os.path.isfile(demo_results):  # its rows are `repirl compare` records of the same held-out problems
        for name, row in json.load(open(demo_results)).items():
            if "problem_ids" not in row:
                sys.exit(f"{demo_results}: row {name!r} has no problem_ids (a demo report older than its "
                         "`repirl compare` rows); rerun that demo's evaluation to pair with it")
            for r in compare.compare_runs([row, res], [name, wd]):
                if r["run"] == wd and r["metric"] in ("pass@1_greedy", "avg@16"):
                    print(f"PAIRED {r['metric']}: {r['value [95% CI]']} - {name} {r[f'diff vs {name} [95% CI]']}, "
                          f"p {r['p']:.3f}")


if __name__ == "__main__":
    main()
