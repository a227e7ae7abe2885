"""The PRM alone, on fixed rollouts: does rePIRL's PRM training improve on its initialisation?

The policy is frozen (the demo's start), its T=1 samples are drawn once (K = 8 for 1024 train
problems, 16 for 200 held-out ones); the PRM is trained by the real dual step (`train_step`,
policy lr 0) on groups of K' = 4 of those samples + the expert, and scored by the one evaluation
(`eval_runner.report`) on the cached held-out samples. Minutes per variant instead of a full RL run.

  python -m benchmarks.prm_offline sample START OUTDIR
  python -m benchmarks.prm_offline train START OUTDIR NAME steps=300 prm.optim.lr=1e-5 ...
      (key=val: the demo's rl config overrides, plus steps, K, G, policy=DIR (the frozen policy
       in the step when the rollouts came from another one than START, e.g. a trained run's
       final/policy sampled with `sample DIR OUTDIR`) and init=FINAL_DIR (start from a trained
       run's PRM, WORKDIR/final, instead of START's trunk); OVR="rl.data.x=..." in the
       environment overrides the demo config for both commands)
steps=0 scores the untrained PRM (with init=, that trained PRM) on OUTDIR's held-out samples.
The PRM trunk always starts from START (the run's warm-up start), as in the loop.
Prints one RESULT line per variant and writes OUTDIR/res_NAME.json.
"""
import dataclasses
import json
import os
import sys
import time

os.environ.setdefault("TQDM_DISABLE", "1")


def sample(start, out):
    import numpy as np
    from repirl_jax import demo, eval_runner, models
    from repirl_jax.data import prompts
    from repirl_jax import sampling
    from repirl_jax.verifiers.dispatch import verify
    from repirl_jax.config import apply_overrides
    c = apply_overrides(demo.default_config(), os.environ.get("OVR", "").split())
    _, (train, test) = demo.problems(c)
    pc, params = models.load(start)
    tok = models.load_tokenizer(start)
    train = train[:1024]
    enc = prompts.encode(train, tok, c.rl.data.max_prompt_len)
    assert not enc.dropped
    K = 8
    t0 = time.time()
    o = sampling.generate(pc, params, enc.ids, max_new_tokens=c.rl.data.max_new_tokens, temperature=1.0, num_samples=K,
                          eos_id=pc.eos_ids, seed=123, max_prompts=256)
    texts = [tok.decode(r[m], skip_special_tokens=True) for r, m in zip(o.tokens, o.mask)]
    ok = np.array([v.correct for v in verify([train[i // K] for i in range(len(texts))], texts, 5.0, 2)])
    print("train sampled", time.time() - t0, "acc", ok.mean(), flush=True)
    np.savez(os.path.join(out, "train.npz"), tokens=o.tokens, mask=o.mask, slp=o.sample_logprobs, ok=ok)
    test = test[:200]
    tenc = prompts.encode(test, tok, c.rl.data.max_prompt_len)
    T = c.rl.data.max_new_tokens
    g = eval_runner.rollouts(pc, params, tok, test, tenc.ids, max_new_tokens=T)
    s = eval_runner.rollouts(pc, params, tok, test, tenc.ids, n=16, temperature=1.0, seed=0, max_new_tokens=T)
    import pickle
    with open(os.path.join(out, "test.pkl"), "wb") as f:
        pickle.dump((g, s), f)
    print("test sampled; greedy", g.correct_PN.mean(), "avg16", s.correct_PN.mean(), flush=True)


def train(start, out, name, args):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from repirl_jax import demo, eval_runner, models, sampling, steps as steps_mod
    from repirl_jax import train_step as ts
    from repirl_jax.config import OptimConfig, apply_overrides
    from repirl_jax.data import prompts
    kv = dict(a.split("=", 1) for a in args)
    n_steps = int(kv.pop("steps", 300))
    Ksub = int(kv.pop("K", 4))
    G = int(kv.pop("G", 8))
    policy_dir, init = kv.pop("policy", start), kv.pop("init", "")
    c = apply_overrides(demo.default_config(), os.environ.get("OVR", "").split())
    rl = apply_overrides(c.rl, [f"{k}={v}" for k, v in kv.items()])
    _, (train_p, test) = demo.problems(c)
    train_p, test = train_p[:1024], test[:200]
    pc, params = models.load(policy_dir)
    _, trunk = models.load(start)
    tok = models.load_tokenizer(start)
    enc = prompts.encode(train_p, tok, rl.data.max_prompt_len)
    d = np.load(os.path.join(out, "train.npz"))
    K = 8
    tokens, mask, slp, ok = d["tokens"], d["mask"], d["slp"], d["ok"].astype(np.float32)
    T = tokens.shape[1]
    P = sampling.bucket(max(len(x) for x in enc.ids))
    # the policy is frozen: its credit rule (which may need step indices) changes nothing
    pol = dataclasses.replace(rl.policy, optim=OptimConfig(lr=0.0), credit="last")
    cfg = ts.StepConfig(pc, pc, rl.prm, pol)
    step = ts.make_train_step(cfg)
    state = ts.init_state(cfg, params, trunk, seed=0)
    if init:
        loaded = eval_runner.PRMScorer.load(init, (pc, params))
        if (loaded.form, loaded.scale) != (rl.prm.form, rl.prm.head_scale):
            raise SystemExit(f"init={init}: a {loaded.form} PRM (head_scale {loaded.scale}); this run's prm.form is "
                             f"{rl.prm.form} (head_scale {rl.prm.head_scale})")
        state = dataclasses.replace(state, prm=loaded.params)
    experts = [tok(p.experts[0] + tok.eos_token, add_special_tokens=False)["input_ids"] for p in train_p]
    etoks, emask = sampling.pad_right(experts, T)
    labels = None
    if rl.prm.loss == "oracle":
        labels = np.zeros(tokens.shape, np.float32)
        for i in range(len(tokens)):
            n = int(mask[i].sum())
            labels[i, :n] = steps_mod.labels(train_p[i // K], tok, tokens[i, :n])[1]
    rng = np.random.RandomState(0)
    has_fail = [i for i in range(len(train_p)) if ok[i * K:(i + 1) * K].min() < 0.5]
    print(name, "groups with a failure", len(has_fail), flush=True)
    t0 = time.time()
    hist = []
    for it in range(n_steps):
        gs = rng.choice(has_fail, G, replace=False)
        rows = np.stack([i * K + rng.choice(K, Ksub, replace=False) for i in gs])  # [G, Ksub], as the loop's K=4
        ptoks, pmask = sampling.left_pad([enc.ids[i] for i in gs], P)
        b = ts.Batch(prompt_GP=ptoks, prompt_mask_GP=pmask, rollout_GKT=tokens[rows], rollout_mask_GKT=mask[rows],
                     sampler_logp_GKT=slp[rows], outcome_GK=ok[rows], format_GK=np.zeros((G, Ksub), np.float32),
                     expert_GET=etoks[gs][:, None], expert_mask_GET=emask[gs][:, None],
                     step_ok_GKT=None if labels is None else labels[rows])
        state, m = step(state, b)
        m = jax.device_get(m)
        hist.append({k: float(m[k]) for k in ("prm_loss", "reward_gap", "ess", "ranking_acc", "prm_grad_norm")
                     if k in m})
        if (it + 1) % 50 == 0:
            h = hist[-50:]
            print(it + 1, {k: round(float(np.nanmean([x[k] for x in h])), 3) for k in h[0]},
                  "c", float(state.prm["head"]["c"]) if "c" in state.prm.get("head", {}) else None,
                  round(time.time() - t0), flush=True)
    scorer = eval_runner.PRMScorer(rl.prm.form, rl.prm.beta, pc, jax.device_get(state.prm), scale=rl.prm.head_scale)
    held = HeldOut(out, test, tok, rl.data.max_prompt_len)
    rew = held.rewards(scorer)
    np.save(os.path.join(out, f"rew_{name}.npy"), rew)
    held.result(name, rew, args)


KEYS = ["lucky_rate", "prm/ranking", "prm/step_auroc", "prm/fws_f1", "prm_best_of_16", "prm_min/best_of_16",
        "prm_last/best_of_16", "maj@16", "avg@16", "logprob/ranking", "logprob/best_of_16", "logprob/step_auroc"]


class HeldOut:
    """The held-out samples `sample` cached in OUTDIR (greedy and 16 T=1 samples of each of `test`,
    the first 200 held-out problems), ready to score: every scorer of a benchmark here goes
    through the one evaluation (`eval_runner.report`) on the same samples."""

    def __init__(self, out, test, tok, max_prompt_len):
        import pickle
        from repirl_jax import steps as steps_mod
        from repirl_jax.data import prompts
        with open(os.path.join(out, "test.pkl"), "rb") as f:
            self.greedy, self.sampled = pickle.load(f)
        self.out, self.test = out, test
        self.prompt_ids = prompts.encode(test, tok, max_prompt_len).ids
        self.step_of = [steps_mod.token_steps(tok, t[m]) for t, m in zip(self.sampled.tokens, self.sampled.mask)]

    def rewards(self, scorer):
        """[200 * 16, T] token rewards of the cached samples under `scorer` (an eval_runner.PRMScorer)."""
        from repirl_jax import eval_runner
        return eval_runner._token_rewards(scorer, self.prompt_ids, self.sampled, 16, 50)

    def report(self, rewards):
        from repirl_jax import eval_runner
        return eval_runner.report(self.test, self.greedy, self.sampled, rewards, self.step_of)

    def result(self, name, rewards, args) -> dict:
        """Prints `RESULT name {KEYS}` and writes OUTDIR/res_NAME.json (with the best-of-n curves)."""
        rep = self.report(rewards)
        res = {k: round(rep.summary[k][0], 3) for k in KEYS if k in rep.summary}
        print("RESULT", name, json.dumps(res), flush=True)
        with open(os.path.join(self.out, f"res_{name}.json"), "w") as f:
            json.dump({"args": args, "res": res, "curves": rep.curves}, f)
        return res

if __name__ == "__main__":
    if sys.argv[1] == "sample":
        sample(sys.argv[2], sys.argv[3])
    else:
        train(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
