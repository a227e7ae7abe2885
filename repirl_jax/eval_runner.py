"""Running a policy (and optionally a PRM) on problems: greedy and sampled answers, verdicts, PRM
scores, and the metrics of `evaluate.py` with bootstrap CIs. Shared by the training loop's
periodic eval, `repirl eval` and the demo."""
from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from . import evaluate as ev
from . import models, prm, sampling
from .models import ModelConfig
from .verifiers.dispatch import verify
from .verifiers.math import extract_answer


@dataclasses.dataclass
class Rollouts:
    """N samples for each of P problems (row p * N + j is sample j of problem p)."""

    tokens: np.ndarray  # [P * N, T]
    mask: np.ndarray
    texts: list[str]
    correct_PN: np.ndarray  # bool
    answers_PN: list[list[str | None]]


def rollouts(pc: ModelConfig, params, tok, problems, prompt_ids, *, n: int = 1, temperature: float = 0.0,
             max_new_tokens: int = 256, seed: int = 0, timeout_s: float = 5.0, workers: int = 2,
             max_prompts: int = 0, layout=None) -> Rollouts:
    out = sampling.generate(pc, params, prompt_ids, max_new_tokens=max_new_tokens, temperature=temperature,
                            num_samples=n, eos_id=pc.eos_ids, seed=seed, max_prompts=max_prompts, layout=layout)
    texts = [tok.decode(r[m], skip_special_tokens=True) for r, m in zip(out.tokens, out.mask)]
    verdicts = verify([problems[i // n] for i in range(len(texts))], texts, timeout_s, workers)
    P = len(problems)
    correct = np.array([v.correct for v in verdicts]).reshape(P, n)
    answers = [[ev.normalize_answer(extract_answer(texts[p * n + j])) for j in range(n)] for p in range(P)]
    return Rollouts(out.tokens, out.mask, texts, correct, answers)


@dataclasses.dataclass
class PRMScorer:
    """A trained PRM as the loop exports it: WORKDIR/final/{prm (HF dir), prm_head.npz, prm.json}."""

    form: str
    beta: float
    cfg: ModelConfig
    params: dict  # prm.init_params layout: {"trunk", "head"} | {"lm"} | {"head"}
    ref: dict | None = None  # implicit: the frozen reference LM

    @classmethod
    def load(cls, final_dir: str, policy: tuple[ModelConfig, dict] | None = None) -> "PRMScorer":
        with open(os.path.join(final_dir, "prm.json")) as f:
            meta = json.load(f)
        head = dict(np.load(os.path.join(final_dir, "prm_head.npz")))
        head = {k: jnp.asarray(v) for k, v in head.items()}
        if meta["form"] == "shared":
            if policy is None:
                raise ValueError(f"{final_dir}: a shared-trunk PRM scores with the policy's trunk: pass the policy")
            return cls("shared", meta["beta"], policy[0], {"head": head, "trunk": policy[1]})
        cfg, lm = models.load(os.path.join(final_dir, "prm"))
        if meta["form"] == "head":
            return cls("head", meta["beta"], cfg, {"trunk": lm, "head": head})
        if not meta.get("ref"):
            raise ValueError(f"{final_dir}: an implicit PRM of a random tiny model; its reference cannot be reloaded")
        _, ref = models.load(meta["ref"])
        return cls("implicit", meta["beta"], cfg, {"lm": lm}, ref)

    def token_rewards(self, prompt_ids, tokens_NT, mask_NT, n: int):
        """[P * n, T] token rewards of responses (n per prompt), masked to 0 past each response."""
        P = sampling.bucket(max(len(x) for x in prompt_ids))
        ptoks, pmask = sampling.left_pad(prompt_ids, P)
        r = _rewards(self.form, self.beta, self.cfg, self.params, self.ref, ptoks, pmask,
                     tokens_NT.reshape(len(prompt_ids), n, -1), mask_NT.reshape(len(prompt_ids), n, -1))
        return np.where(mask_NT, np.asarray(r), 0.0)

    def scores(self, prompt_ids, tokens_NT, mask_NT, n: int) -> np.ndarray:
        """[P, n] trajectory scores: mean token reward (ALGORITHM.md section 6)."""
        r = self.token_rewards(prompt_ids, tokens_NT, mask_NT, n)
        return (r.sum(1) / np.maximum(mask_NT.sum(1), 1)).reshape(len(prompt_ids), n)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _rewards(form, beta, cfg, params, ref, ptoks, pmask, resp_GNT, rmask_GNT):
    seqs = prm.build_seqs(ptoks, pmask, resp_GNT, rmask_GNT)
    trunk = params.get("trunk")
    return prm.token_rewards(form, beta, cfg, cfg, params, trunk, ref, seqs)


def _vote_correct(s: Rollouts, weights_PN=None) -> np.ndarray:
    """[P] 0/1: the (weighted) vote's answer is right, as the verifier judged a sample giving it."""
    out = []
    for p, answers in enumerate(s.answers_PN):
        v = ev.majority_vote(answers) if weights_PN is None else ev.weighted_vote(answers, weights_PN[p])
        out.append(v is not None and bool(s.correct_PN[p][answers.index(v)]))
    return np.array(out, float)


def metrics(greedy: Rollouts | None, sampled: Rollouts | None, scores_PN=None, ks=(1, 4, 8, 16), seed: int = 0):
    """Each metric as (mean, lo, hi) over problems, and per-problem arrays for paired comparisons."""
    per = {}
    if greedy is not None:
        per["pass@1_greedy"] = greedy.correct_PN[:, 0].astype(float)
    if sampled is not None:
        c, N = sampled.correct_PN, sampled.correct_PN.shape[1]
        per[f"avg@{N}"] = c.mean(1)
        for k in ks:
            if 1 < k <= N:
                per[f"pass@{k}"] = ev.pass_at_k_per_problem(c, k)
        per[f"maj@{N}"] = _vote_correct(sampled)
        if scores_PN is not None:
            per[f"prm_best_of_{N}"] = ev.best_of_n(scores_PN, c).astype(float)
            # votes need non-negative weights: the PRM score through a sigmoid
            per[f"prm_weighted_maj@{N}"] = _vote_correct(sampled, 1.0 / (1.0 + np.exp(-np.asarray(scores_PN))))
    summary = {k: ev.bootstrap_ci(v, seed=seed) for k, v in per.items()}
    if sampled is not None and scores_PN is not None:
        summary["prm_auroc"] = (ev.auroc(np.ravel(scores_PN), np.ravel(sampled.correct_PN)),)
        summary["prm_ranking_acc"] = (ev.ranking_accuracy(scores_PN, sampled.correct_PN),)
    return summary, per
