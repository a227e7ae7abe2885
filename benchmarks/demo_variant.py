"""python -m benchmarks.demo_variant START WORKDIR [key=value ...]: one RL stage of the demo from START (an
imitation start, e.g. runs/demo/start) with overrides of demo.default_config().rl, then the one evaluation
(demo.evaluate_run); prints a RESULT line and writes WORKDIR/eval_summary.json, a `repirl compare` file (two
variants' files give the paired difference over the same held-out problems). Produced the issue-15 tables."""
import sys, time, json, os, logging
os.environ["TQDM_DISABLE"] = "1"
logging.basicConfig(level=logging.WARNING)
from repirl_jax import demo, loop
def main():
    start, wd, *sets = sys.argv[1:]
    c = demo.default_config()
    cfg = demo.rl_config(c, start, sets)
    t0 = time.time()
    if not os.path.isfile(os.path.join(wd, "final", "policy", "config.json")):
        loop.run(cfg, wd)
    tr = time.time() - t0
    _, (_, test) = demo._problems(c)
    r = demo.evaluate_run(c, os.path.join(wd, "final", "policy"), os.path.join(wd, "final") if cfg.prm.loss != "none" else None, test, 0,
                          start_dir=start)
    sm = r.summary
    keys = [k for k in sm if k.startswith(("pass@1_greedy", "prm/ranking", "prm/step_auroc", "prm_best_of", "maj@", "avg@", "logprob/ranking", "hash/ranking", "length/ranking", "lucky", "prm/fws_f1", "prm_min/ranking", "prm/auroc", "prm_init/ranking",
                                                 "prm_init/best_of", "prm_init/step_auroc"))]
    print("RESULT", wd, sets, f"train_s={tr:.0f}", json.dumps({k: [round(x, 3) for x in sm[k]] for k in keys}), flush=True)
    with open(os.path.join(wd, "eval_summary.json"), "w") as f:
        json.dump({"problem_ids": [p.id for p in test], **r.to_json()}, f)


if __name__ == "__main__":
    main()
