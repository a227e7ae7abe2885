"""The host loop (ALGORITHM.md section 5): sample prompts -> K rollouts -> verify -> accuracy
filter -> one dual step -> log -> checkpoint; resumes from the workdir's latest checkpoint.

Everything random is a function of (config seed, step), and the data cursor is checkpointed, so a
resumed run repeats exactly what an uninterrupted one does. Synchronous: every RLOO group comes
from the policy of the step that trains on it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time

import jax
import numpy as np
from tqdm import tqdm

from . import checkpoint, models, sampling, steps
from . import train_step as ts
from .config import ConfigError, TrainConfig
from .data import prompts, tasks
from .sharding import Layout
from . import eval_runner
from . import evaluate as ev
from .verifiers.dispatch import verify
from .verifiers.math import last_boxed

log = logging.getLogger(__name__)
MAX_BAD_STEPS = 3  # non-finite steps in a row before the run stops


class TrainingAborted(RuntimeError):
    """The run cannot go on (e.g. repeated non-finite steps); checkpoints so far are kept."""


def load_models(cfg: TrainConfig):
    """(policy cfg, policy params, prm cfg, prm trunk params, tokenizer)."""
    m = cfg.model
    tok = models.load_tokenizer(models.smollm2_dir())
    if m.policy == "tiny":
        mc = models.ModelConfig(family="llama", vocab_size=len(tok), hidden_size=m.tiny_width,
                                intermediate_size=2 * m.tiny_width, num_layers=m.tiny_layers, num_heads=4,
                                num_kv_heads=2, head_dim=m.tiny_width // 4, tie_word_embeddings=True,
                                eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), dtype=m.dtype,
                                param_dtype=m.dtype, remat=m.remat, layer_unroll=m.layer_unroll)
        return mc, models.init_params(mc, jax.random.key(cfg.train.seed)), mc, models.init_params(
            mc, jax.random.key(cfg.train.seed + 1)), tok
    path = models.model_dir(m.policy)
    pc, pp = models.load(path, dtype=m.dtype)
    pc = pc.replace(remat=m.remat, layer_unroll=m.layer_unroll)
    if m.policy != "smollm2":
        tok = models.load_tokenizer(path)
    prm_path = m.prm or path
    qc, qp = models.load(prm_path, dtype=m.dtype)
    return pc, pp, qc.replace(remat=m.remat, layer_unroll=m.layer_unroll), qp, tok


def load_problems(cfg: TrainConfig):
    return tasks.load_problems(cfg.data)


class MetricsLog:
    """WORKDIR/metrics.jsonl, one object per step, and TensorBoard events in WORKDIR/tb. On resume,
    lines past the checkpoint's step are dropped (and said so) so every step appears once: the
    resumed run recomputes them identically. A line cut off by a crash mid-write is dropped too.
    (TensorBoard shows the repeated steps of the interrupted run as a separate event file.)"""

    def __init__(self, workdir: str, resume_step: int):
        self.path = os.path.join(workdir, "metrics.jsonl")
        kept, later, broken = [], [], 0
        if os.path.exists(self.path):
            with open(self.path) as f:
                for line in filter(str.strip, f):
                    try:
                        step = json.loads(line).get("step", 0)
                    except json.JSONDecodeError:
                        broken += 1
                        continue
                    if step <= resume_step:
                        kept.append(line)
                    else:
                        later.append(step)
        if broken:
            log.warning("%s: dropped %d unreadable line(s), as a crash mid-write leaves", self.path, broken)
        if later:
            a, b = min(later), max(later)
            log.warning("%s: dropped the rows of %s, which %s; this run redoes them", self.path,
                        f"step {a}" if a == b else f"steps {a}-{b}",
                        f"come after checkpoint step {resume_step}" if resume_step else "no finished checkpoint holds")
        with open(self.path, "w") as f:
            f.writelines(l if l.endswith("\n") else l + "\n" for l in kept)
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(os.path.join(workdir, "tb"), purge_step=resume_step + 1)

    def write(self, row: dict):
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)):
                self.tb.add_scalar(k.replace("@", "_at_"), v, row["step"])

    def close(self):
        self.tb.close()


def check_workdir(workdir: str, cfg: TrainConfig, write: bool = True):
    """Refuses a workdir whose checkpoints were made with an incompatible config (anything but
    the number of steps, the checkpoint/eval cadence and the checkpoint to resume from)."""
    path = os.path.join(workdir, "config.json")
    mine = dataclasses.asdict(cfg)
    if os.path.exists(path):
        with open(path) as f:
            theirs = json.load(f)
        loose = lambda c: {**c, "train": {k: v for k, v in c["train"].items()
                                          if k not in ("steps", "checkpoint_every", "eval_every", "eval_samples",
                                                       "resume_from")}}
        if json.loads(json.dumps(loose(mine))) != loose(theirs):
            diff = sorted(f"{s}.{k}" for s in mine if isinstance(mine[s], dict) for k in mine[s]
                          if json.loads(json.dumps(loose(mine)[s].get(k))) != loose(theirs).get(s, {}).get(k))
            raise ConfigError(f"{workdir}: holds a run with a different config ({', '.join(diff[:5])}); "
                             "use a new --workdir")
    if write:  # atomically: other processes may be reading it
        with open(path + ".tmp", "w") as f:
            json.dump(mine, f, indent=1)
        os.replace(path + ".tmp", path)


def prm_ref_path(cfg: TrainConfig) -> str | None:
    """Where the implicit PRM's frozen reference can be reloaded from (None: a random tiny model)."""
    src = cfg.model.prm or cfg.model.policy
    return None if src == "tiny" else os.path.abspath(models.model_dir(src))


def verify_shared(problems, texts, t) -> tuple[np.ndarray, int]:
    """Verdicts (float 0/1) of every rollout and the count of verifier failures. With several
    processes each verifies its own contiguous slice of rows and the verdicts are all-gathered,
    so every process holds the same outcome array."""
    n, nproc, pid = len(texts), jax.process_count(), jax.process_index()
    per = -(-n // nproc)
    mine = slice(pid * per, min(n, (pid + 1) * per))
    verdicts = verify(problems[mine], texts[mine], t.verify_timeout_s, t.verify_workers)
    local = np.zeros((per, 2), np.float32)
    for i, v in enumerate(verdicts):
        local[i] = v.correct, v.reason.startswith(("timeout", "worker died", "error"))
    if nproc > 1:
        from jax.experimental import multihost_utils

        local = np.asarray(multihost_utils.process_allgather(local)).reshape(nproc * per, 2)
    return local[:n, 0], int(local[:n, 1].sum())


def load_head(path: str, prm_params: dict) -> dict:
    if "head" not in prm_params:
        raise ConfigError(f"model.prm_head={path}: this prm.form has no scalar head")
    try:
        head = dict(np.load(path))
    except OSError as e:
        raise FileNotFoundError(f"model.prm_head={path}: cannot be read ({e})") from None
    want = {k: v.shape for k, v in prm_params["head"].items()}
    if {k: v.shape for k, v in head.items()} != want:
        raise ConfigError(f"model.prm_head={path}: holds {sorted(head)} of shapes "
                          f"{[v.shape for v in head.values()]}, expected {want}")
    return {k: jax.numpy.asarray(v, jax.numpy.float32) for k, v in head.items()}


def evaluate(cfg: TrainConfig, pc, params, tok, problems, ids, step: int, layout=None) -> dict:
    """Held-out greedy pass@1 and, with train.eval_samples = k > 1, avg@k and pass@k at T=1."""
    t, T = cfg.train, cfg.data.max_new_tokens
    kw = dict(max_new_tokens=T, timeout_s=t.verify_timeout_s, workers=t.verify_workers,
              max_prompts=cfg.data.rollout_prompts, slots=cfg.data.rollout_slots, layout=layout)
    greedy = eval_runner.rollouts(pc, params, tok, problems, ids, **kw)
    row = {"eval_pass@1": float(greedy.correct_PN.mean()), "eval_n": len(problems)}
    if t.eval_samples > 1:
        k = t.eval_samples
        s = eval_runner.rollouts(pc, params, tok, problems, ids, n=k, temperature=1.0, seed=t.seed + 7919 * step, **kw)
        row |= {f"eval_avg@{k}": float(s.correct_PN.mean()), f"eval_pass@{k}": ev.pass_at_k_mean(s.correct_PN, k)}
    return row


def oracle_labels(train, idx, chosen, out, tok, K: int) -> np.ndarray:
    """[G, K, T] exact per-token step labels of the chosen groups' rollouts (prm.loss=oracle | exact)."""
    lab = np.zeros(out.tokens.shape, np.float32)
    for g in chosen:
        for i in range(g * K, (g + 1) * K):
            n = int(out.mask[i].sum())
            lab[i, :n] = steps.labels(train[idx[g]], tok, out.tokens[i, :n])[1]
    return np.stack([lab[g * K:(g + 1) * K] for g in chosen])


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def run(cfg: TrainConfig, workdir: str) -> dict:
    os.makedirs(workdir, exist_ok=True)
    pid, nproc = jax.process_index(), jax.process_count()
    lead = pid == 0  # only process 0 writes logs, config.json and exports; all of them checkpoint
    if nproc > 1:
        log.info("process %d of %d (%d local devices of %d)", pid, nproc, jax.local_device_count(), jax.device_count())
    check_workdir(workdir, cfg, write=lead)
    d, t = cfg.data, cfg.train
    train, test = load_problems(cfg)  # first: a missing data extra or file is found before any model work
    pc, pp, qc, qp, tok = load_models(cfg)
    enc = prompts.encode(train, tok, d.max_prompt_len)
    train = [train[i] for i in enc.kept]
    test_enc = prompts.encode(test, tok, d.max_prompt_len)
    test = [test[i] for i in test_enc.kept]
    P = sampling.bucket(max(len(x) for x in enc.ids))
    G, K, E, T = d.prompts_per_step, d.samples, d.experts, d.max_new_tokens

    step_cfg = ts.StepConfig(pc, qc, cfg.prm, cfg.policy, temperature=d.temperature if d.temperature > 0 else 1.0)
    labelled = cfg.prm.loss in ("oracle", "exact") or cfg.policy.credit.startswith("exact_")  # exact step labels
    if labelled and d.task != "chain":
        field = f"prm.loss={cfg.prm.loss}" if cfg.prm.loss in ("oracle", "exact") else f"policy.credit={cfg.policy.credit}"
        raise ConfigError(f"{field} uses exact step labels, which only data.task=chain has (got data.task={d.task!r})")
    if cfg.policy.credit.startswith("prm_") and cfg.prm.loss in ("none", "exact"):
        raise ConfigError(f"policy.credit={cfg.policy.credit} locates errors with the PRM's rewards; prm.loss={cfg.prm.loss} "
                          "has no PRM (set policy.credit=last, or exact_error / exact_step on the chain task)")
    # several processes: one global mesh (their params and batches are global arrays)
    sharded = nproc > 1 or (jax.device_count() > 1 and cfg.mesh.shape != (-1, 1, 1))
    layout = Layout.from_config(cfg.mesh) if sharded else None
    if layout is not None and d.rollout_slots % layout.batch_size_multiple:
        raise ConfigError(f"data.rollout_slots={d.rollout_slots}: must be a multiple of the mesh's batch shards "
                          f"({layout.batch_size_multiple}) to split the slots' KV cache over the mesh")
    step = ts.make_train_step(step_cfg, layout)
    state = ts.init_state(step_cfg, pp, qp, seed=t.seed)
    if cfg.model.prm_head:  # a trained PRM (e.g. the frozen scorer of test-time training)
        state = dataclasses.replace(state, prm={**state.prm, "head": load_head(cfg.model.prm_head, state.prm)})
    ck = checkpoint.Checkpointer(workdir, keep=t.keep_checkpoints)
    start, cursor = 0, 0
    if ck.latest_step() is not None or t.resume_from:  # restored straight into the step's shardings
        target = checkpoint.abstract_like(state) if layout is None else jax.tree.map(
            lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), state, step.state_shardings)
        state, extras = ck.restore(target, t.resume_from or None)  # the newest that restores, by default
        start, cursor = extras["step"], extras["cursor"]
        log.info("resumed from step %d", start)
    elif layout is not None:
        state = jax.tree.map(lambda x, sh: jax.make_array_from_callback(x.shape, sh, lambda i, a=np.asarray(x): a[i]),
                             state, step.state_shardings)
    else:  # committed to its device, as a restored state is: fresh and resumed runs then compile the same
        state = jax.device_put(state, jax.devices()[0])  # programs (one entry each in a persistent XLA cache)
    metrics = MetricsLog(workdir, start) if lead else None
    order = np.random.RandomState(d.seed).permutation(len(train))
    last, bad_streak = {}, 0
    stop = []  # SIGTERM: finish the step in flight, save, exit cleanly
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.append(1)) if _main_thread() else None
    bar = tqdm(total=t.steps, initial=start, desc="train", unit="step", dynamic_ncols=True, disable=not lead)
    try:
        for it in range(start, t.steps):
            ck.check()  # a failed async save stops the run now, not after the next save
            times, t0 = {}, time.perf_counter()
            n = G * d.oversample
            idx = [int(order[(cursor + j) % len(train)]) for j in range(n)]
            cursor += n
            out = sampling.generate(pc, state.policy, [enc.ids[i] for i in idx], max_new_tokens=T,
                                    temperature=d.temperature, num_samples=K, eos_id=pc.eos_ids,
                                    seed=t.seed * 1_000_003 + it, max_prompts=d.rollout_prompts,
                                    slots=d.rollout_slots, prompt_len=P if d.rollout_slots else 0, draw=d.draw,
                                    layout=layout)
            times["rollout_s"], t0 = time.perf_counter() - t0, time.perf_counter()
            texts = [tok.decode(r[m], skip_special_tokens=True) for r, m in zip(out.tokens, out.mask)]
            ok, failed = verify_shared([train[idx[i // K]] for i in range(len(texts))], texts, t)
            times["verify_s"], t0 = time.perf_counter() - t0, time.perf_counter()
            boxless = np.array([train[idx[i // K]].kind == "math" and last_boxed(x) is None
                                for i, x in enumerate(texts)], np.float32)  # for the format penalty: a math answer without \\boxed{}
            acc = ok.reshape(n, K).mean(1)
            band = [g for g in range(n) if d.acc_low <= acc[g] <= d.acc_high]
            # keep the batch full: prompts outside the band fill the remaining slots (counted)
            chosen = (band + [g for g in range(n) if g not in band])[:G]
            row = {"step": it + 1, "filter_in_band": len(band), "filter_sampled": n,
                   "filter_filled": max(0, G - len(band)), "rollout_acc": float(ok.mean()), "verify_failures": failed}
            rows = lambda g: slice(g * K, (g + 1) * K)
            prompt_ids = [enc.ids[idx[g]] for g in chosen]
            ptoks, pmask = sampling.left_pad(prompt_ids, P)
            experts = []
            for g in chosen:
                sols = train[idx[g]].experts  # none (e.g. a file task without experts_path): masked out
                for e in range(E):
                    experts.append(tok(sols[e % len(sols)] + tok.eos_token, add_special_tokens=False)["input_ids"]
                                   if sols else [])
            etoks, emask = sampling.pad_right(experts, T)
            row["expert_truncated"] = int(sum(len(x) > T for x in experts))
            roll = np.stack([out.tokens[rows(g)] for g in chosen])
            batch = ts.Batch(
                prompt_GP=ptoks, prompt_mask_GP=pmask,
                rollout_GKT=roll,
                rollout_mask_GKT=np.stack([out.mask[rows(g)] for g in chosen]),
                # the distribution the rollouts were drawn from (tempered when T != 1)
                sampler_logp_GKT=np.stack([out.sample_logprobs[rows(g)] for g in chosen]),
                outcome_GK=np.stack([ok[rows(g)] for g in chosen]),
                format_GK=np.stack([boxless[rows(g)] for g in chosen]) * -cfg.policy.format_penalty,
                expert_GET=etoks.reshape(G, E, T), expert_mask_GET=emask.reshape(G, E, T),
                # exact step labels and step indices: what the labelled losses and credits use, and on the
                # chain task always, for the in-loop locate metrics (prm_locate_acc, logprob_locate_acc)
                step_ok_GKT=oracle_labels(train, idx, chosen, out, tok, K) if labelled or d.task == "chain" else None,
                step_GKT=(steps.token_steps(tok, roll).astype(np.int32)
                          if cfg.policy.credit.startswith(("prm_", "logprob_", "random_")) or d.task == "chain" else None))
            if layout is not None:  # global arrays: each process's devices receive only their rows
                batch = jax.tree.map(lambda a, x: layout.put(x, a), batch.axes(), batch,
                                     is_leaf=lambda v: isinstance(v, tuple))
            state, m = step(state, batch)
            # JSON has no NaN: a metric with nothing to measure (no correct/wrong pair) is null
            m = {k: (float(v) if np.isfinite(v) else None) for k, v in jax.device_get(m).items()}
            times["step_s"] = time.perf_counter() - t0
            row |= m | times
            if test and ((t.eval_every and (it + 1) % t.eval_every == 0) or it + 1 == t.steps):
                t0 = time.perf_counter()
                row |= evaluate(cfg, pc, state.policy, tok, test, test_enc.ids, it + 1, layout)
                row["eval_s"] = time.perf_counter() - t0
            if lead:
                metrics.write(row)
            last = row
            if not row.get("step_ok"):  # the step kept the old state (train_step.py)
                bad_streak += 1
                log.warning("step %d rejected: non-finite loss, gradient or parameter; state kept (%d in a row)",
                            it + 1, bad_streak)
                if bad_streak >= MAX_BAD_STEPS:
                    raise TrainingAborted(f"{workdir}: {bad_streak} non-finite steps in a row (last: step {it + 1}); "
                                          "stopped, earlier checkpoints kept")
            else:
                bad_streak = 0
            log.info("step %d/%d %s", it + 1, t.steps, {k: row.get(k) for k in ("rollout_acc", "prm_loss", "reward_gap",
                                                                                 "policy_loss")})
            bar.update(1)
            bar.set_postfix({k: f"{row[k]:.3g}" for k in ("rollout_acc", "prm_loss", "reward_gap")
                             if row.get(k) is not None})
            stopping = bool(stop)  # read once: a signal arriving later is handled after the next step
            if nproc > 1:  # a SIGTERM seen by any process stops all of them at the same step
                from jax.experimental import multihost_utils

                stopping = bool(np.any(multihost_utils.process_allgather(np.array([stopping]))))
            if (t.checkpoint_every and (it + 1) % t.checkpoint_every == 0) or it + 1 == t.steps or stopping:
                ck.save(it + 1, state, {"step": it + 1, "cursor": cursor})
            if stopping:
                log.warning("SIGTERM: saved step %d to %s; the same command resumes", it + 1, ck.dir)
                raise TrainingAborted(f"{workdir}: stopped by SIGTERM after step {it + 1} (checkpoint saved)")
    finally:  # also on TrainingAborted (SIGTERM, non-finite steps) and any error
        bar.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        ck.close()
        if metrics is not None:
            metrics.close()
    policy, prm_params = jax.tree.map(sampling.to_host, (state.policy, state.prm))  # every process takes part
    if not lead:
        return last
    export_final(os.path.join(workdir, "final"), cfg, pc, qc, policy, prm_params, tok)
    return last


def export_final(final: str, cfg: TrainConfig, pc, qc, policy, prm_params, tok) -> None:
    """final/{policy, prm (HF dirs), prm_head.npz, prm.json}: what `repirl eval --prm` and
    eval_runner.PRMScorer.load read back."""
    models.export_hf(pc, policy, os.path.join(final, "policy"), tokenizer=tok)
    prm_lm = prm_params.get("trunk", prm_params.get("lm"))
    if prm_lm is not None:
        models.export_hf(qc, prm_lm, os.path.join(final, "prm"), tokenizer=tok)
    np.savez(os.path.join(final, "prm_head.npz"), **prm_params.get("head", {}))
    with open(os.path.join(final, "prm.json"), "w") as f:
        json.dump({"form": cfg.prm.form, "beta": cfg.prm.beta, "head_scale": cfg.prm.head_scale,
                   "logprob_init": cfg.prm.logprob_init, "loss": cfg.prm.loss,
                   "ref": prm_ref_path(cfg)}, f)
