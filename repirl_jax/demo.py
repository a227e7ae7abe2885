"""`repirl demo`: the README's main job, from nothing, on a 2-core CPU in minutes.

1. Build a word-level tokenizer for the chain task in its process-matters form: two-digit values
   modulo 100, single-digit operands, multipliers coprime to 100, never two + / - steps in a row,
   so one slipped step always makes the answer wrong, a guess is right ~1% of the time and no
   sum shortcut skips the written steps (data/chain.py; the lucky rate in the report says so).
2. Teach a small random-init policy every level RL trains on, 1..warmup.max_steps steps, by
   imitation (`sft.py`) of noisy demonstrations: each + / - line slips its sign with probability
   warmup.slip_rate (0.4), so the start has a habit RL can drop and its log-likelihood ranks its own
   right and wrong answers poorly: the PRM must learn. RL's experts are clean. The imitation must
   converge (2000 steps): an unconverged start fails on arithmetic, not on the habit, and RL from it
   fell below it; the report's failure kinds (data.chain.error_kind) show which a start is. What RL
   does still varies with the warm-up seed: README "The outcome depends on the imitation start".
3. From that same starting point, run plain outcome RLOO (`prm.loss=none`) and rePIRL on the
   long chains, each with `loop.run` (checkpoints, metrics.jsonl, exports).
4. Evaluate the start and both results on a held-out split of the long chains with the one
   evaluation path (`eval_runner.evaluate`): greedy pass@1 with a 95% bootstrap CI, per level,
   paired differences; the learned PRM on samples of its policy against the exact step labels
   (within-problem ranking, step AUROC, best-of-16 vs majority@16, first-wrong-step F1) beside
   null scorers (log-prob, length, a text hash). Writes WORKDIR/report.md plus PNG curves.
Every stage resumes: a stage whose output exists is not run again.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import time

import jax
import numpy as np

from . import evaluate as ev
from . import eval_runner, loop, models, plots, sft
from .config import (DataConfig, LoopConfig, ModelSource, OptimConfig, PolicyConfig, PRMConfig, TrainConfig,
                     apply_overrides)
from .data import chain, prompts, tasks, vocab

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WarmupConfig:
    """The imitation stage on the easy levels: a random-init Llama-style model with a word-level
    tokenizer of the task, or (init) a pretrained model fine-tuned with its own tokenizer."""

    init: str = ""  # "": random init (layers, width); "smollm2" (the packaged model) or an HF dir
    layers: int = 2
    width: int = 128
    min_steps: int = 1
    max_steps: int = 7  # covers every level the RL stage trains on
    n_train: int = 8000
    # 2000: the imitation converges (final loss 0.035 against the slip coin's floor 0.031, benchmarks/warmups.py):
    # at 1200 it had not for every seed (0.041-0.096; + / - arithmetic under the noisy labels is learned last),
    # the start's failures were then mostly arithmetic and copy errors (data.chain.error_kind) that outcome RL
    # rarely rewards, and RL fell below 2 of 6 such starts
    steps: int = 2000
    batch: int = 64
    length: int = 104  # prompt + solution tokens (7 steps: <= 95)
    lr: float = 3e-3  # AdamW, linear warm-up for lr_warmup steps, then cosine decay to 0 at `steps`
    lr_warmup: int = 50
    # > 0: the imitation data are noisy demonstrations (chain.ChainTask.slip_rate: a sign-slip habit on
    # + / - lines) while RL's experts stay clean: a failure the policy can drop rather than a missing fact
    slip_rate: float = 0.0


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    warmup: WarmupConfig = WarmupConfig()
    rl: TrainConfig = TrainConfig()  # the hard-level RL stage; model.policy is set to WORKDIR/start
    eval_samples: int = 16  # samples per held-out problem (T=1) scored by the PRM and the null scorers
    seed: int = 0


def default_config() -> DemoConfig:
    # The noisy-demonstration testbed (README, issue 15): with clean demonstrations (slip_rate 0) the
    # start's log-likelihood already ranks right above wrong (0.91) and RL moved nothing with any reward,
    # perfect step labels included; at 0.4 RL moved (+7 points in 200 steps from the start of 0f4bc4f; from
    # other starts of this recipe it did not: README) and the PRM learns what the log-likelihood cannot.
    hard = DataConfig(task="chain", min_steps=5, max_steps=7, modulus=100, operand_max=9, ops="+-*", additive_run=1,
                      instruction=False, style="symbols", n_train=4000, n_test=400, seed=1, prompts_per_step=8,
                      samples=4, experts=1, oversample=2, max_prompt_len=40, max_new_tokens=72)
    return DemoConfig(warmup=WarmupConfig(slip_rate=0.4), rl=TrainConfig(
        data=hard,
        model=ModelSource(layer_unroll=2),  # the warm-up's 2 layers unrolled in training passes: 1.3x faster
        # the paper's loss with the per-prompt partition function; the head PRM with the trunk's
        # token log-prob as a feature, the energy R = sum of token rewards starting at the trunk's
        # log-likelihood (logprob_init=1: the IS weights start uniform), PRM lr 1e-4 (on this testbed
        # 1e-5 barely moved it; on clean demonstrations 1e-4 lowered a start that already ranked well).
        # The policy uses the PRM to locate a failed rollout's failing step (the step it scores lowest)
        # and puts that rollout's outcome advantage on that step's tokens alone (credit=prm_step), with
        # no process reward (alpha_p 0) at policy lr 1e-4, each method's best of 1e-4 / 2e-4 / 3e-4. From the
        # converged 2000-step start no rePIRL form beats RLOO (README "Which rePIRL form", "The ceiling of
        # located credit"; docs/results.md): this one at 3 RL seeds -0.020 [-0.05, 0.01] greedy, the paper's
        # form (credit=last, alpha_p 0.1, process_adv=token) -0.024 (p 0.007) over 5 starts, and the ceiling
        # of any locator, the exact first wrong step (credit=exact_step), -0.001 at 3 seeds: the failures
        # left are slips the policy is unsure of, where outcome RLOO's gradient already lands. What the
        # located credit buys is stability: at lr 3e-4 RLOO falls below the start on 2 of 3 seeds (greedy
        # 0.307 -> 0.050 / 0.378 / 0.138), rePIRL rises on all 3 (0.393 / 0.410 / 0.403; the exact labels'
        # credit 0.385 at seed 0).
        # The trunk of that energy, a normalised LM, takes its exact max-likelihood gradient (SFT on the
        # experts and correct rollouts), the head the rePIRL loss (trunk_loss=sft): at 3 seeds the PRM ranks
        # 0.855 vs 0.824 with the trunk on the importance-sampled gradient, step AUROC 0.953 vs 0.900, the
        # same RL (README, docs/results_w1200.md: the 1200-step start).
        prm=PRMConfig(form="head_logprob", logprob_init=1.0, score="sum", trunk_loss="sft",
                      optim=OptimConfig(lr=1e-4, grad_clip=10.0)),
        policy=PolicyConfig(alpha_p=0.0, process_adv="last", credit="prm_step",
                            optim=OptimConfig(lr=1e-4, grad_clip=1.0)),
        train=LoopConfig(steps=200, eval_every=50, checkpoint_every=100, verify_workers=2)))


METHODS = {"rloo": ["prm.loss=none", "policy.credit=last"], "repirl": []}  # RLOO has no PRM to locate errors with


def problems(c: DemoConfig):
    """(the warm-up's easy problems with noisy demonstrations, (the RL levels' train split, their held-out split))."""
    w, d = c.warmup, c.rl.data
    easy, _ = chain.splits(tasks.chain_task(d, min_steps=w.min_steps, max_steps=w.max_steps, seed=c.seed,
                                            slip_rate=w.slip_rate),
                           w.n_train, 1)
    return easy, loop.load_problems(c.rl)


def imitation_setup(c: DemoConfig):
    """The warm-up's model, tokenizer and data: (model config, params, tokenizer, prompt ids, solution ids,
    optimiser config). A random-init model with a word-level tokenizer of the task, or (warmup.init) a
    pretrained model with its own."""
    w = c.warmup
    easy, (hard_train, hard_test) = problems(c)
    if w.init:
        src = models.model_dir(w.init)
        mc, params = models.load(src)
        tok = models.load_tokenizer(src)
    else:
        texts = [p.prompt for p in easy + hard_train + hard_test] + [e for p in easy + hard_train for e in p.experts]
        tok = vocab.build_tokenizer(texts)
        mc = models.ModelConfig(family="llama", vocab_size=len(tok), hidden_size=w.width, intermediate_size=4 * w.width,
                                num_layers=w.layers, num_heads=4, num_kv_heads=2, head_dim=w.width // 4,
                                tie_word_embeddings=True, eos_token_id=tok.eos_token_id, max_position_embeddings=512,
                                layer_unroll=c.rl.model.layer_unroll)
        params = models.init_params(mc, jax.random.key(c.seed))
    enc = prompts.encode(easy, tok, w.length)  # the chat template where the tokenizer has one, as at RL time
    sols = [tok(easy[i].experts[0] + tok.eos_token, add_special_tokens=False)["input_ids"] for i in enc.kept]
    optim = OptimConfig(lr=w.lr, warmup_steps=min(w.lr_warmup, w.steps // 2), schedule="cosine", total_steps=w.steps)
    return mc, params, tok, enc.ids, sols, optim


def warmup(c: DemoConfig, workdir: str) -> str:
    """Tokenizer + imitation on the easy levels -> WORKDIR/start (an HF dir); skipped when present."""
    out = os.path.join(workdir, "start")
    if os.path.isfile(os.path.join(out, "config.json")):
        log.info("warm-up: %s exists, reusing it", out)
        return out
    w = c.warmup
    mc, params, tok, prompt_ids, sols, optim = imitation_setup(c)
    params, losses = sft.train(mc, params, prompt_ids, sols, steps=w.steps, batch=w.batch, optim=optim, length=w.length,
                               seed=c.seed, chunk=c.rl.policy.logit_chunk, desc="imitation")
    models.export_hf(mc, params, out, tokenizer=tok)
    with open(os.path.join(workdir, "warmup_losses.json"), "w") as f:
        json.dump(losses, f)
    return out


def rl_config(c: DemoConfig, start: str, overrides=()) -> TrainConfig:
    """The RL stage's config from the imitation start: c.rl with model.policy = start (the demo's other
    model fields kept), then the overrides (a method's or a variant's)."""
    return apply_overrides(dataclasses.replace(c.rl, model=dataclasses.replace(c.rl.model, policy=start)),
                           list(overrides))


def evaluate_run(c: DemoConfig, policy_dir: str, prm_final: str | None, test, seed: int,
                 start_dir: str | None = None) -> eval_runner.EvalReport:
    """The one evaluation path on the held-out problems: greedy, and eval_samples samples (T=1) of
    this policy (their accuracy is what RL optimises), scored by the PRM when given and by the nulls."""
    pc, params = models.load(policy_dir)
    tok = models.load_tokenizer(policy_dir)
    enc = prompts.encode(test, tok, c.rl.data.max_prompt_len)
    if enc.dropped:  # per-problem results must stay aligned with `test`
        raise ValueError(f"demo: {enc.dropped} held-out prompts exceed rl.data.max_prompt_len={c.rl.data.max_prompt_len}")
    scorer = eval_runner.PRMScorer.load(prm_final, (pc, params)) if prm_final else None
    # the prm_init null: the same PRM untrained on the start (the demo's PRM trunk is the start)
    init = (scorer.initial(models.load(start_dir)) if scorer is not None and scorer.form != "implicit" and start_dir
            else None)
    return eval_runner.evaluate(pc, params, tok, test, enc.ids, scorer=scorer, init_scorer=init,
                                samples=c.eval_samples,
                                max_new_tokens=c.rl.data.max_new_tokens, seed=seed,
                                workers=c.rl.train.verify_workers, timeout_s=c.rl.train.verify_timeout_s)


def run(c: DemoConfig, workdir: str = "runs/demo", overrides: list[str] = (), config_path: str = "") -> str:
    """Every stage (each reused when done), then report.md; `config_path` (the --config file c came
    from) and `overrides` go into the report's command line."""
    command = shlex.join(["repirl", "demo", "--workdir", workdir, *(["--config", config_path] if config_path else []),
                          *[a for o in overrides for a in ("--set", o)]])
    c = apply_overrides(c, list(overrides))
    os.makedirs(workdir, exist_ok=True)
    times_path = os.path.join(workdir, "stage_times.json")  # a reused stage reports the time it took when it ran
    times = json.load(open(times_path)) if os.path.isfile(times_path) else {}

    def stage(name, done_file, fn):  # runs fn unless done_file exists
        if os.path.isfile(done_file):
            log.info("%s: %s exists, reusing the stage", name, done_file)
            return
        t0 = time.perf_counter()
        fn()
        times[name] = time.perf_counter() - t0
        with open(times_path, "w") as f:
            json.dump(times, f)

    start = os.path.join(workdir, "start")
    stage("warm-up", os.path.join(start, "config.json"), lambda: warmup(c, workdir))
    cfgs = {name: rl_config(c, start, sets) for name, sets in METHODS.items()}
    for name, cfg in cfgs.items():
        d = os.path.join(workdir, name)
        stage(name, os.path.join(d, "final", "policy", "config.json"), lambda: loop.run(cfg, d))
    _, (_, test) = problems(c)
    t0 = time.perf_counter()
    results = {"start": evaluate_run(c, start, None, test, c.seed)}
    for name, cfg in cfgs.items():
        d = os.path.join(workdir, name)
        prm_final = os.path.join(d, "final") if cfg.prm.loss != "none" else None
        results[name] = evaluate_run(c, os.path.join(d, "final", "policy"), prm_final, test, c.seed, start)
    times["evaluation"] = time.perf_counter() - t0
    report = write_report(c, workdir, results, times, test, command)
    plots.plot_runs({m: os.path.join(workdir, m) for m in METHODS}, workdir)
    return report


def _task_line(d: DataConfig) -> str:
    if not d.modulus:
        return f"arithmetic chains over the integers, `{d.style}` style, ops `{d.ops}`"
    return (f"arithmetic chains modulo {d.modulus} (operands 1..{d.operand_max}, ops `{d.ops}`, multipliers coprime to\n"
            f"{d.modulus}: a slipped step always makes the answer wrong; at most {d.additive_run or 'any number of'} "
            "+ / - step(s) in a row)")


def _warmup_model(w: WarmupConfig) -> str:
    return f"{w.init} fine-tuned" if w.init else f"a {w.layers}-layer width-{w.width} model from random init"


def _process(q: PolicyConfig) -> str:
    return (f"alpha_p={q.alpha_p}, process advantage `{q.process_adv}`" if q.alpha_p
            else "no process reward (alpha_p=0: the PRM locates the failing step for the outcome credit)")


def _slips(w: WarmupConfig) -> str:
    return (f"; noisy demonstrations: each + / - line slips its sign with probability {w.slip_rate}, RL's experts clean"
            if w.slip_rate else "")


def write_report(c: DemoConfig, workdir: str, results: dict, times: dict, test, command: str = "") -> str:
    d = c.rl.data
    N = c.eval_samples
    levels = [p.meta["steps"] for p in test]
    rows = []
    for name, r in results.items():
        sm = r.summary
        row = {"method": name, "held-out pass@1 (greedy) [95% CI]": ev.format_ci(*sm["pass@1_greedy"]),
               **{f"{k} steps": round(sm[f"pass@1_greedy/steps={k}"][0], 3) for k in sorted(set(levels))
                  if f"pass@1_greedy/steps={k}" in sm}}
        if f"avg@{N}" in sm:
            row[f"T=1 accuracy (avg@{N}) [95% CI]"] = ev.format_ci(*sm[f"avg@{N}"])
        if "prm/ranking" in sm:
            row |= {"PRM ranking (within problem)": round(sm["prm/ranking"][0], 3),
                    "untrained PRM ranking (null)": round(sm["prm_init/ranking"][0], 3) if "prm_init/ranking" in sm else "",
                    "PRM step AUROC": round(sm["prm/step_auroc"][0], 3) if "prm/step_auroc" in sm else "",
                    f"PRM best-of-{N}": round(sm[f"prm_best_of_{N}"][0], 3), f"maj@{N}": round(sm[f"maj@{N}"][0], 3)}
        row["wall time (s)"] = round(times.get(name if name != "start" else "warm-up", 0.0))
        rows.append(row)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    diffs = []
    for a, b in (("rloo", "start"), ("repirl", "start"), ("repirl", "rloo")):
        row = {"comparison": f"{a} - {b}"}
        for metric, what in (("pass@1_greedy", "greedy"), (f"avg@{N}", "T=1 accuracy")):
            if all(metric in results[x].per_problem for x in (a, b)):
                m, lo, hi, p = ev.paired_bootstrap(results[a].per_problem[metric], results[b].per_problem[metric],
                                                   seed=c.seed)
                row |= {f"{what} difference [95% CI]": ev.format_ci(m, lo, hi), f"p ({what})": p}
        diffs.append(row)
    table = ev.markdown_table(rows, cols)
    kinds = [k for k in chain.ERROR_KINDS if any(f"errors/{k}" in r.summary for r in results.values())]
    errors = ev.markdown_table([{"method": name, **{k: round(r.summary[f"errors/{k}"][0], 3) for k in kinds}}
                                for name, r in results.items()], ["method", *kinds]) if kinds else ""
    if "evaluation" in times:
        table += f"\n\nEvaluations (all rows): {times['evaluation']:.0f} s. A reused stage shows the time it took when it ran."
    prm_detail = results["repirl"].markdown() if "prm/ranking" in results["repirl"].summary else ""
    text = f"""# repirl demo report

Task: {_task_line(d)}.
Imitation warm-up on
{c.warmup.min_steps}-{c.warmup.max_steps}-step chains ({c.warmup.steps} steps of batch {c.warmup.batch}, {_warmup_model(c.warmup)}{_slips(c.warmup)});
then, from that same start,
{c.rl.train.steps} RL steps on {d.min_steps}-{d.max_steps}-step chains ({d.prompts_per_step} prompts x {d.samples}
samples per step, {d.experts} expert solution per prompt): plain outcome RLOO (`prm.loss=none`) and rePIRL
(`{c.rl.prm.form}` PRM, c starting at {c.rl.prm.logprob_init}, energy = {c.rl.prm.score} of token rewards, PRM lr
{c.rl.prm.optim.lr}; {_process(c.rl.policy)}, outcome credit `{c.rl.policy.credit}`).
Held-out: {len(levels)} problems of the RL levels never trained on.
PRM columns: the final rePIRL PRM scoring {N} samples (T=1) per held-out problem of that run's policy, against the
exact step labels (`data.chain.step_labels`); nulls beside it in the detail below.

{table}

The first wrong step of the same T=1 samples (`data.chain.error_kind`; fractions of all samples): `slip` is the
sign-slip habit of the noisy demonstrations, which RL can drop; `arithmetic` and `copy` errors are skills the
imitation has not learned, which RL did not remove from any of five starts measured (a start whose failures are
mostly these is an unconverged warm-up: RL from it rarely finds a reward):

{errors}

Paired bootstrap over the same held-out problems:

{ev.markdown_table(diffs, list(diffs[0]))}

## rePIRL's PRM in detail (the one evaluation path, `eval_runner.evaluate`)

{prm_detail}

Curves: `curves.png` (rollout accuracy, PRM loss, reward gap, ESS, entropy, response length per step).
Reproduce: `{command or 'repirl demo --workdir ' + workdir}`. Config: `{json.dumps(dataclasses.asdict(c))}`
"""
    path = os.path.join(workdir, "report.md")
    with open(path, "w") as f:
        f.write(text)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        # each row a `repirl compare` record: per-problem results keyed by problem id
        json.dump({k: {"problem_ids": [p.id for p in test], **r.to_json()} for k, r in results.items()}, f)
    print(table)
    print()
    print(ev.markdown_table(diffs, list(diffs[0])))
    return path
