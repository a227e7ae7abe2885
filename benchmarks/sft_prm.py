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
import os

os.environ.setdefault("TQDM_DISABLE", "1")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("start")
    p.add_argument("outdir")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--steps", default="200,600")
    a = p.parse_args()
    from benchmarks.prm_offline import HeldOut
    from repirl_jax import demo, eval_runner, models, prm, sft
    from repirl_jax.config import OptimConfig, apply_overrides
    from repirl_jax.data import prompts

    c = apply_overrides(demo.default_config(), os.environ.get("OVR", "").split())
    _, (train, test) = demo.problems(c)
    mc, params = models.load(a.start)
    tok = models.load_tokenizer(a.start)
    enc = prompts.encode(train, tok, c.rl.data.max_prompt_len)
    sols = [tok(train[i].experts[0] + tok.eos_token, add_special_tokens=False)["input_ids"] for i in enc.kept]
    held = HeldOut(a.outdir, test[:200], tok, c.rl.data.max_prompt_len)  # the problems `prm_offline sample` drew
    length = c.rl.data.max_prompt_len + c.rl.data.max_new_tokens
    done = 0
    for n in map(int, a.steps.split(",")):
        params, _ = sft.train(mc, params, enc.ids, sols, steps=n - done, batch=a.batch, length=length, seed=done,
                              optim=OptimConfig(lr=a.lr, grad_clip=10.0), desc="sft")
        done = n
        scorer = eval_runner.PRMScorer("head_logprob", 0.05, mc, prm.init_params("head_logprob", mc, params, 1.0),
                                       logprob_init=1.0)
        held.result(f"sft{n}", held.rewards(scorer), vars(a))

if __name__ == "__main__":
    main()
