"""One full RL iteration (rollouts -> verification -> update) of plain outcome RLOO on
SmolLM2-135M-Instruct: ours (sampling.generate + verifiers.check_math_batch + the jitted dual
step with prm.loss=none) against TRL's RLOOTrainer (PyTorch CPU), same model weights, prompts,
batch (G prompts x K samples), lengths, objective and optimizer (AdamW, lr 1e-6, clip 1.0, one update
per iteration, no KL, no entropy bonus, the G*K sequences in 8 accumulated microbatches on both sides). Both sides
generate exactly T new tokens per sample at temperature 1 (TRL via min_new_tokens, ours with no
EOS), so both do the same work; each side runs one warm-up iteration (compiles, allocator
warm-up) and then one timed iteration on the same prompts. Each side reports `cpu_share`, the
fraction of the machine's cores it got: below ~0.9 another process competed and times inflate.
`repirl_s` is our full rePIRL iteration: the same plus the head PRM (a second SmolLM2 copy,
repirl loss, one expert solution per prompt).

    repirl bench iteration [--out F]
    python -m benchmarks.iteration [--sides ours,repirl,trl] [--micro M] [--remat R]
"""
from __future__ import annotations

import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from .common import arg_parser, machine, report

LR = 1e-6


def load(small: bool):
    """(cfg, params, tokenizer, HF dir) of SmolLM2-135M-Instruct, or with small=True a tiny
    random model with its tokenizer (exported to an HF dir so TRL can load the same weights)."""
    from repirl_jax import models

    tok = models.load_tokenizer(models.smollm2_dir())
    if not small:
        path = models.smollm2_dir()
        return (*models.load(path), tok, path)
    cfg = models.ModelConfig(family="llama", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_layers=2,
                             num_heads=4, num_kv_heads=2, head_dim=8, tie_word_embeddings=True,
                             eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"))
    params = models.init_params(cfg, jax.random.key(0))
    path = models.export_hf(cfg, params, tempfile.mkdtemp(prefix="bench_tiny_") + "/hf", tokenizer=tok)
    return cfg, params, tok, path


def problems_and_ids(tok, G: int):
    from repirl_jax.data import packaged, prompts

    problems = packaged.gsm_symbolic(G)
    return problems, prompts.encode(problems, tok, 1024).ids


def make_ours(cfg, params, tok, problems, ids, K, T, prm_loss="none", micro=1, remat="none"):
    """Returns iteration() -> timings of one of our iterations (the loop's host code, minus
    logging, the accuracy filter and checkpoints)."""
    from repirl_jax import sampling
    from repirl_jax import train_step as ts
    from repirl_jax.config import OptimConfig, PolicyConfig, PRMConfig
    from repirl_jax.verifiers import check_math_batch

    cfg = cfg.replace(remat=remat)
    G = len(ids)
    opt = OptimConfig(lr=LR, grad_clip=1.0)
    # plain RLOO keeps no PRM trunk: the `shared` form's PRM is a head on the policy, unused with loss none
    form = "shared" if prm_loss == "none" else "head"
    # plain RLOO: TRL's objective, so no entropy bonus; rePIRL keeps its default one
    ent = dict(entropy_coef=0.0) if prm_loss == "none" else {}
    sc = ts.StepConfig(cfg, cfg, PRMConfig(form=form, loss=prm_loss, microbatches=micro, optim=opt),
                       PolicyConfig(microbatches=micro, optim=opt, **ent))
    copy = lambda t: jax.tree.map(jnp.copy, t)
    state = [ts.init_state(sc, copy(params), None if form == "shared" else copy(params))]  # the step donates it
    step = ts.make_train_step(sc)
    P = -(-max(map(len, ids)) // 32) * 32  # the step's prompt width: the longest prompt, rounded up to 32
    ptoks, pmask = sampling.left_pad(ids, P)
    experts = [tok(p.experts[0] + "<|im_end|>", add_special_tokens=False)["input_ids"][:T] for p in problems]
    etoks, emask = np.zeros((G, 1, T), np.int32), np.zeros((G, 1, T), bool)
    for g, e in enumerate(experts):
        etoks[g, 0, :len(e)], emask[g, 0, :len(e)] = e, True
    calls = [0]

    def iteration() -> dict:
        t0, c0 = time.perf_counter(), time.process_time()
        calls[0] += 1
        out = sampling.generate(cfg, state[0].policy, ids, max_new_tokens=T, temperature=1.0, num_samples=K,
                                seed=calls[0])
        t1 = time.perf_counter()
        texts = tok.batch_decode([r[m] for r, m in zip(out.tokens, out.mask)], skip_special_tokens=True)
        ok = np.array(check_math_batch([(t, problems[i // K].gold) for i, t in enumerate(texts)]), np.float32)
        t2 = time.perf_counter()
        batch = ts.Batch(ptoks, pmask, out.tokens.reshape(G, K, T), out.mask.reshape(G, K, T),
                         out.logprobs.reshape(G, K, T), ok.reshape(G, K), np.zeros((G, K), np.float32), etoks, emask)
        state[0], m = step(state[0], batch)
        m = jax.device_get(m)
        t3 = time.perf_counter()
        return dict(total_s=t3 - t0, rollout_s=t1 - t0, verify_s=t2 - t1, step_s=t3 - t2,
                    cpu_share=(time.process_time() - c0) / (t3 - t0) / os.cpu_count(),
                    accuracy=float(ok.mean()), step_ok=float(m["step_ok"]))

    return iteration


def make_trl(path, tok, problems, K, T, micro=1):
    """Returns iteration() running TRL's RLOOTrainer for a warm-up and a timed step; timings
    from a callback around each optimizer step (generation and scoring happen inside it). The
    G*K completions are generated at once and trained on in `micro` accumulated microbatches,
    like ours (all 32 at once need about 15 GB here)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    from repirl_jax.verifiers import check_math_batch

    G = len(problems)
    rows = [{"prompt": [{"role": "user", "content": p.prompt}], "gold": p.gold} for p in problems]

    def correct(prompts, completions, gold, **_):
        texts = [c[0]["content"] for c in completions]
        return [float(x) for x in check_math_batch(list(zip(texts, gold)))]

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.cpu = [], []

        def on_step_begin(self, args, state, control, **kw):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t0)
            self.cpu.append(time.process_time() - self.c0)

    timer = Timer()
    args = RLOOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench_trl_"), per_device_train_batch_size=G * K // micro,
        gradient_accumulation_steps=micro, num_generations=K,
        max_completion_length=T, generation_kwargs={"min_new_tokens": T}, temperature=1.0, top_p=1.0, top_k=0,
        max_steps=2, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, optim="adamw_torch", beta=0.0, num_iterations=1,
        bf16=False, gradient_checkpointing=False, use_cpu=True, shuffle_dataset=False, report_to="none",
        save_strategy="no", logging_steps=1, disable_dropout=True, seed=0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    trainer = RLOOTrainer(model=model, reward_funcs=correct, args=args, train_dataset=Dataset.from_list(rows * 2),
                          processing_class=tok, callbacks=[timer])
    # split of TRL's time: generation + no-grad log-prob pass + rewards happen in this method
    generate_and_score, gen_times = trainer._generate_and_score_completions, []

    def timed(*a, **kw):
        t0 = time.perf_counter()
        out = generate_and_score(*a, **kw)
        gen_times.append(time.perf_counter() - t0)
        return out

    trainer._generate_and_score_completions = timed

    def iteration() -> dict:
        trainer.train()  # two steps: the warm-up and the timed one
        return dict(warmup_s=timer.times[0], total_s=timer.times[1], torch_threads=torch.get_num_threads(),
                    generate_score_s=gen_times[-1], update_s=timer.times[1] - gen_times[-1],
                    cpu_share=timer.cpu[1] / timer.times[1] / os.cpu_count(),
                    log=[{k: v for k, v in h.items() if isinstance(v, (int, float))}
                         for h in trainer.state.log_history])

    return iteration


def run(out: str | None = None, reps: int = 1, small: bool = False, G: int = 8, K: int = 4, T: int = 128,
        micro: int = 8, remat: str = "none", sides=("ours", "repirl", "trl"), merge: bool = False) -> dict:
    """`reps` is accepted for the CLI's sake: one iteration is timed per side (after a warm-up).
    merge: keep the other sides' results from an earlier run's `out` of the same size (the sides
    can then run as separate processes, each within a time limit)."""
    if "trl" in sides:  # before our side's minutes of work, not after (the check `repirl bench iteration` makes)
        import argparse

        from repirl_jax.cli import missing_modules

        missing = missing_modules(argparse.Namespace(command="bench", name="iteration"))
        if missing:
            raise SystemExit(f"{missing} (or --sides ours,repirl)")
    cfg, params, tok, path = load(small)
    problems, ids = problems_and_ids(tok, G)
    res = dict(bench="iteration", machine=machine(), model="tiny random" if small else "SmolLM2-135M-Instruct",
               dtype="float32", G=G, K=K, T=T, prompt_lens=[len(x) for x in ids], lr=LR, micro=micro, remat=remat)
    if merge and out and os.path.exists(out):
        with open(out) as f:
            prior = json.load(f)
        if all(prior.get(k) == res[k] for k in ("model", "G", "K", "T", "machine")):
            res |= {k: prior[k] for s in ("ours", "repirl", "trl") if s not in sides and s in prior
                    for k in (s, f"{s}_s")}
    for side in ("ours", "repirl"):
        if side in sides:
            it = make_ours(cfg, params, tok, problems, ids, K, T, "none" if side == "ours" else "repirl", micro, remat)
            warm = it()
            timed = it()
            # load average: other processes on the machine skew the timings
            res[f"{side}_s"], res[side] = timed["total_s"], dict(timed, warmup_s=warm["total_s"],
                                                                 load_avg_1_5_15=os.getloadavg())
            print(f"iteration {side}: {timed['total_s']:.1f} s (rollout {timed['rollout_s']:.1f}, verify "
                  f"{timed['verify_s']:.2f}, step {timed['step_s']:.1f}; warm-up {warm['total_s']:.1f})", flush=True)
    if "trl" in sides:
        t = make_trl(path, tok, problems, K, T, micro)()
        res["trl_s"], res["trl"] = t["total_s"], dict(t, load_avg_1_5_15=os.getloadavg())
        print(f"iteration trl: {t['total_s']:.1f} s (generate + log-probs + rewards {t['generate_score_s']:.1f}, "
              f"update {t['update_s']:.1f}; warm-up {t['warmup_s']:.1f})", flush=True)
    if "ours_s" in res and "trl_s" in res:
        res["ratio"] = res["trl_s"] / res["ours_s"]
    fmt = lambda k, unit="s": f"{res[k]:.2f} {unit}" if k in res else "not run"
    return report(res, out, f"iteration: ours {fmt('ours_s')}, TRL {fmt('trl_s')}, ratio {fmt('ratio', 'x')}, "
                  f"rePIRL {fmt('repirl_s')}", f"G={G} K={K} T={T}")


def main(argv=None):
    ap = arg_parser(__doc__)
    ap.add_argument("--sides", default="ours,repirl,trl")
    ap.add_argument("--micro", type=int, default=8, help="gradient-accumulation microbatches (memory: 8 = one "
                    "prompt's samples at a time)")
    ap.add_argument("--remat", default="none", choices=("none", "full", "dots"))
    ap.add_argument("--small", action="store_true", help="tiny random model (smoke run)")
    ap.add_argument("--merge", action="store_true", help="keep the other sides' results already in --out")
    a = ap.parse_args(argv)
    run(a.out, small=a.small, micro=1 if a.small else a.micro, remat=a.remat, sides=tuple(a.sides.split(",")),
        merge=a.merge, **(dict(G=2, K=2, T=16) if a.small else {}))


if __name__ == "__main__":
    main()
