"""The expert-likelihood PRM, a baseline that needs neither failures nor step labels: the run's
start fine-tuned by SFT on the clean expert solutions of the RL train problems, scored as the
head_logprob form with a zero head (r_t = log p(a_t | s_t) of that model) on the held-out samples
that `benchmarks.prm_offline sample` cached in OUTDIR (the same samples the oracle and the in-loop
PRM are scored on by benchmarks/oracle_ceiling.sh). The max-likelihood optimum of rePIRL's energy
with a uniform base measure is the expert log-density, so this is what that objective aims at,
reached by the exact gradient instead of the importance-sampled one.

  python -m benchmarks.sft_prm START OUTDIR [--batch 8] [--lr 1e-4] [--steps 200,600]

--steps: cumulative SFT steps at which to score (batch 8 = the in-loop PRM's experts per RL step).
Prints one RESULT line per point and writes OUTDIR/res_sft<steps>.json.
"""
import argparse
import json
import os
import pickle

os.environ.setdefault("TQDM_DISABLE", "1")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("start")
    p.add_argument("outdir")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--steps", default="200,600")
    a = p.parse_args()
    from repirl_jax import demo, eval_runner, models, prm, sft, steps as steps_mod
    from repirl_jax.config import OptimConfig, apply_overrides
    from repirl_jax.data import prompts

    c = apply_overrides(demo.default_config(), os.environ.get("OVR", "").split())
    _, (train, test) = demo._problems(c)
    test = test[:200]  # as benchmarks.prm_offline sample
    mc, params = models.load(a.start)
    tok = models.load_tokenizer(a.start)
    enc = prompts.encode(train, tok, c.rl.data.max_prompt_len)
    sols = [tok(train[i].experts[0] + tok.eos_token, add_special_tokens=False)["input_ids"] for i in enc.kept]
    with open(os.path.join(a.outdir, "test.pkl"), "rb") as f:
        g, s = pickle.load(f)
    tenc = prompts.encode(test, tok, c.rl.data.max_prompt_len)
    step_of = [steps_mod.token_steps(tok, t[m]) for t, m in zip(s.tokens, s.mask)]
    length = c.rl.data.max_prompt_len + c.rl.data.max_new_tokens
    done = 0
    for n in map(int, a.steps.split(",")):
        params, _ = sft.train(mc, params, enc.ids, sols, steps=n - done, batch=a.batch, length=length, seed=done,
                              optim=OptimConfig(lr=a.lr, grad_clip=10.0), desc="sft")
        done = n
        scorer = eval_runner.PRMScorer("head_logprob", 0.05, mc, prm.init_params("head_logprob", mc, params, 1.0),
                                       logprob_init=1.0)
        rep = eval_runner.report(test, g, s, eval_runner._token_rewards(scorer, tenc.ids, s, 16, 50), step_of)
        keys = ["lucky_rate", "prm/ranking", "prm/step_auroc", "prm/fws_f1", "prm_best_of_16", "prm_min/best_of_16",
                "prm_last/best_of_16", "maj@16", "avg@16", "logprob/ranking", "logprob/best_of_16", "logprob/step_auroc"]
        res = {k: round(rep.summary[k][0], 3) for k in keys if k in rep.summary}
        print("RESULT", f"sft{n}", json.dumps(res), flush=True)
        with open(os.path.join(a.outdir, f"res_sft{n}.json"), "w") as f:
            json.dump({"args": vars(a), "res": res, "curves": rep.curves}, f)


if __name__ == "__main__":
    main()
