"""`repirl demo`: the README's main job, from nothing, on a 2-core CPU in minutes.

1. Build a word-level tokenizer for the chain task (single-digit arithmetic modulo 10).
2. Teach a small random-init policy the easy levels (short chains) by imitation (`sft.py`).
3. From that same starting point, run plain outcome RLOO (`prm.loss=none`) and rePIRL on the
   harder levels (longer chains), each with `loop.run` (checkpoints, metrics.jsonl, exports).
4. Evaluate the start and both results on a held-out split of the hard levels (greedy pass@1
   with a 95% bootstrap CI, paired differences), score held-out samples with the learned PRM
   (ranking accuracy, AUROC), and write WORKDIR/report.md plus PNG curves.
Every stage resumes: a stage whose output exists is not run again.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import jax
import numpy as np

from . import evaluate as ev
from . import eval_runner, loop, models, plots, sft
from .config import (DataConfig, LoopConfig, ModelSource, OptimConfig, PolicyConfig, PRMConfig, TrainConfig,
                     apply_overrides)
from .data import chain, prompts, vocab

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WarmupConfig:
    """The imitation stage: a random-init Llama-style model on the easy levels."""

    layers: int = 2
    width: int = 64
    min_steps: int = 1
    max_steps: int = 3
    n_train: int = 8000
    steps: int = 1000
    batch: int = 64
    length: int = 48  # prompt + solution tokens
    lr: float = 3e-3  # AdamW, linear warm-up for lr_warmup steps, then cosine decay to 0 at `steps`
    lr_warmup: int = 50


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    warmup: WarmupConfig = WarmupConfig()
    rl: TrainConfig = TrainConfig()  # the hard-level RL stage; model.policy is set to WORKDIR/start
    eval_samples: int = 4  # samples per held-out problem scored by the PRM
    seed: int = 0


def default_config() -> DemoConfig:
    hard = DataConfig(task="chain", min_steps=3, max_steps=4, modulus=10, instruction=False, style="symbols",
                      n_train=4000, n_test=400, seed=1, prompts_per_step=8, samples=4, experts=1, oversample=2,
                      max_prompt_len=32, max_new_tokens=32)
    return DemoConfig(rl=TrainConfig(
        data=hard,
        # the paper's PRM form, loss and options (ALGORITHM.md); alpha_p as for Qwen3-4B; learning
        # rates scaled up for a 0.1M-parameter model and a few hundred steps
        prm=PRMConfig(optim=OptimConfig(lr=3e-4, grad_clip=10.0)),
        policy=PolicyConfig(alpha_p=0.1, optim=OptimConfig(lr=3e-4, grad_clip=1.0)),
        train=LoopConfig(steps=600, eval_every=50, checkpoint_every=100, verify_workers=2)))


METHODS = {"rloo": ["prm.loss=none"], "repirl": []}


def _problems(c: DemoConfig):
    w, d = c.warmup, c.rl.data
    easy, _ = chain.splits(chain.ChainTask(w.min_steps, w.max_steps, c.seed, d.modulus, d.instruction, d.style),
                           w.n_train, 1)
    return easy, loop.load_problems(c.rl)


def warmup(c: DemoConfig, workdir: str) -> str:
    """Tokenizer + imitation on the easy levels -> WORKDIR/start (an HF dir); skipped when present."""
    out = os.path.join(workdir, "start")
    if os.path.isfile(os.path.join(out, "config.json")):
        log.info("warm-up: %s exists, reusing it", out)
        return out
    w = c.warmup
    easy, (hard_train, hard_test) = _problems(c)
    texts = [p.prompt for p in easy + hard_train + hard_test] + [e for p in easy + hard_train for e in p.experts]
    tok = vocab.build_tokenizer(texts)
    mc = models.ModelConfig(family="llama", vocab_size=len(tok), hidden_size=w.width, intermediate_size=4 * w.width,
                            num_layers=w.layers, num_heads=4, num_kv_heads=2, head_dim=w.width // 4,
                            tie_word_embeddings=True, eos_token_id=tok.eos_token_id, max_position_embeddings=512)
    enc = prompts.encode(easy, tok, w.length)
    sols = [tok(easy[i].experts[0] + tok.eos_token, add_special_tokens=False)["input_ids"] for i in enc.kept]
    optim = OptimConfig(lr=w.lr, warmup_steps=min(w.lr_warmup, w.steps // 2), schedule="cosine", total_steps=w.steps)
    params, losses = sft.train(mc, models.init_params(mc, jax.random.key(c.seed)), enc.ids, sols, steps=w.steps,
                               batch=w.batch, optim=optim, length=w.length, seed=c.seed, desc="imitation")
    models.export_hf(mc, params, out, tokenizer=tok)
    with open(os.path.join(workdir, "warmup_losses.json"), "w") as f:
        json.dump(losses, f)
    return out


def evaluate_run(c: DemoConfig, policy_dir: str, prm_final: str | None, test, seed: int) -> dict:
    pc, params = models.load(policy_dir)
    tok = models.load_tokenizer(policy_dir)
    enc = prompts.encode(test, tok, c.rl.data.max_prompt_len)
    if enc.dropped:  # per-problem results must stay aligned with `test`
        raise ValueError(f"demo: {enc.dropped} held-out prompts exceed rl.data.max_prompt_len={c.rl.data.max_prompt_len}")
    ids = enc.ids
    T = c.rl.data.max_new_tokens
    greedy = eval_runner.rollouts(pc, params, tok, test, ids, max_new_tokens=T)
    out = {"greedy_per_problem": greedy.correct_PN[:, 0].astype(float).tolist()}
    if prm_final:
        n = c.eval_samples
        sampled = eval_runner.rollouts(pc, params, tok, test, ids, n=n, temperature=1.0, max_new_tokens=T, seed=seed)
        scores = eval_runner.PRMScorer.load(prm_final, (pc, params)).scores(ids, sampled.tokens, sampled.mask, n)
        out["prm_ranking_acc"] = ev.ranking_accuracy(scores, sampled.correct_PN)
        out["prm_auroc"] = ev.auroc(scores.ravel(), sampled.correct_PN.ravel())
        out["sampled_acc"] = float(sampled.correct_PN.mean())
    return out


def run(c: DemoConfig, workdir: str = "runs/demo", overrides: list[str] = ()) -> str:
    c = apply_overrides(c, list(overrides))
    os.makedirs(workdir, exist_ok=True)
    times = {}
    t0 = time.perf_counter()
    start = warmup(c, workdir)
    times["warm-up"] = time.perf_counter() - t0
    _, (_, test) = _problems(c)
    results = {"start": evaluate_run(c, start, None, test, c.seed)}
    for name, sets in METHODS.items():
        t0 = time.perf_counter()
        cfg = apply_overrides(dataclasses.replace(c.rl, model=ModelSource(policy=start)), sets)
        d = os.path.join(workdir, name)
        if not os.path.isfile(os.path.join(d, "final", "policy", "config.json")):
            loop.run(cfg, d)
        times[name] = time.perf_counter() - t0
        prm_final = os.path.join(d, "final") if cfg.prm.loss != "none" else None
        results[name] = evaluate_run(c, os.path.join(d, "final", "policy"), prm_final, test, c.seed)
    report = write_report(c, workdir, results, times, [p.meta["steps"] for p in test])
    plots.plot_runs({m: os.path.join(workdir, m) for m in METHODS}, workdir)
    return report


def write_report(c: DemoConfig, workdir: str, results: dict, times: dict, levels: list[int]) -> str:
    d = c.rl.data
    rows = []
    for name, r in results.items():
        acc = ev.bootstrap_ci(r["greedy_per_problem"], seed=c.seed)
        per = np.asarray(r["greedy_per_problem"])
        by_level = {f"{k} steps": round(float(per[np.asarray(levels) == k].mean()), 3) for k in sorted(set(levels))}
        row = {"method": name, "held-out pass@1 (greedy) [95% CI]": ev.format_ci(*acc), **by_level,
               "PRM ranking acc": r.get("prm_ranking_acc", ""), "PRM AUROC": r.get("prm_auroc", ""),
               "wall time (s)": round(times.get(name if name != "start" else "warm-up", 0.0))}
        rows.append(row)
    diffs = []
    for a, b in (("rloo", "start"), ("repirl", "start"), ("repirl", "rloo")):
        m, lo, hi, p = ev.paired_bootstrap(results[a]["greedy_per_problem"], results[b]["greedy_per_problem"],
                                           seed=c.seed)
        diffs.append({"comparison": f"{a} - {b}", "difference [95% CI]": ev.format_ci(m, lo, hi), "p": p})
    table = ev.markdown_table(rows, list(rows[0]))
    text = f"""# repirl demo report

Task: arithmetic chains modulo {d.modulus}. Imitation warm-up on {c.warmup.min_steps}-{c.warmup.max_steps}-step
chains ({c.warmup.steps} steps of batch {c.warmup.batch}, a {c.warmup.layers}-layer width-{c.warmup.width} model
from random init); then, from that same start, {c.rl.train.steps} RL steps on {d.min_steps}-{d.max_steps}-step
chains ({d.prompts_per_step} prompts x {d.samples} samples per step, {d.experts} expert solution per prompt):
plain outcome RLOO (`prm.loss=none`) and rePIRL (head PRM, alpha_p={c.rl.policy.alpha_p}).
Held-out: {len(results['start']['greedy_per_problem'])} hard-level problems never trained on.
PRM columns: the final rePIRL PRM scoring {c.eval_samples} samples (T=1) per held-out problem of that run's policy.

{table}

Paired bootstrap over the same held-out problems:

{ev.markdown_table(diffs, list(diffs[0]))}

Curves: `curves.png` (rollout accuracy, PRM loss, reward gap, ESS, entropy, response length per step).
Reproduce: `repirl demo --workdir {workdir}`. Config: `{json.dumps(dataclasses.asdict(c))}`
"""
    path = os.path.join(workdir, "report.md")
    with open(path, "w") as f:
        f.write(text)
    print(table)
    print()
    print(ev.markdown_table(diffs, list(diffs[0])))
    return path
