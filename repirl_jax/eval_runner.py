"""Running a policy (and optionally a PRM) on held-out problems, and the one evaluation of a
policy and its PRM that `repirl eval`, the demo and the ablation sweep all report: `evaluate`
samples (greedy, N at a temperature, optionally a PRM beam search) and scores; `report` turns
rollouts and token rewards into an EvalReport (no model needed: the part the tests check)."""
from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from . import compare, models, prm, prm_quality, sampling, search, steps
from .data import chain
from . import evaluate as ev
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
    logprobs: np.ndarray | None = None  # [P * N, T] untempered policy log-prob of each token (0 past the end)


def rollouts(pc: ModelConfig, params, tok, problems, prompt_ids, *, n: int = 1, temperature: float = 0.0,
             max_new_tokens: int = 256, seed: int = 0, timeout_s: float = 5.0, workers: int = 2,
             max_prompts: int = 0, slots: int = 0, layout=None) -> Rollouts:
    out = sampling.generate(pc, params, prompt_ids, max_new_tokens=max_new_tokens, temperature=temperature,
                            num_samples=n, eos_id=pc.eos_ids, seed=seed, max_prompts=max_prompts, slots=slots,
                            layout=layout)
    texts = [tok.decode(r[m], skip_special_tokens=True) for r, m in zip(out.tokens, out.mask)]
    verdicts = verify([problems[i // n] for i in range(len(texts))], texts, timeout_s, workers)
    P = len(problems)
    correct = np.array([v.correct for v in verdicts]).reshape(P, n)
    answers = [[ev.normalize_answer(extract_answer(texts[p * n + j])) for j in range(n)] for p in range(P)]
    return Rollouts(out.tokens, out.mask, texts, correct, answers, np.where(out.mask, out.logprobs, 0.0))


@dataclasses.dataclass
class PRMScorer:
    """A trained PRM as the loop exports it: WORKDIR/final/{prm (HF dir), prm_head.npz, prm.json}."""

    form: str
    beta: float
    cfg: ModelConfig
    params: dict  # prm.init_params layout: {"trunk", "head"} | {"lm"} | {"head"}
    ref: dict | None = None  # implicit: the frozen reference LM
    scale: float = 1.0  # prm.head_scale of the run
    logprob_init: float = 0.0  # prm.logprob_init of the run (head_logprob's c at init)

    @classmethod
    def load(cls, final_dir: str, policy: tuple[ModelConfig, dict] | None = None) -> "PRMScorer":
        with open(os.path.join(final_dir, "prm.json")) as f:
            meta = json.load(f)
        scale = float(meta.get("head_scale", 1.0))
        c0 = float(meta.get("logprob_init", 0.0))
        head = dict(np.load(os.path.join(final_dir, "prm_head.npz")))
        head = {k: jnp.asarray(v) for k, v in head.items()}
        if meta["form"] == "shared":
            if policy is None:
                raise ValueError(f"{final_dir}: a shared-trunk PRM scores with the policy's trunk: pass the policy")
            return cls("shared", meta["beta"], policy[0], {"head": head, "trunk": policy[1]}, scale=scale, logprob_init=c0)
        cfg, lm = models.load(os.path.join(final_dir, "prm"))
        if meta["form"] in ("head", "head_logprob"):
            return cls(meta["form"], meta["beta"], cfg, {"trunk": lm, "head": head}, scale=scale, logprob_init=c0)
        if not meta.get("ref"):
            raise ValueError(f"{final_dir}: an implicit PRM of a random tiny model; its reference cannot be reloaded")
        _, ref = models.load(meta["ref"])
        return cls("implicit", meta["beta"], cfg, {"lm": lm}, ref)

    def initial(self, start: tuple[ModelConfig, dict]) -> "PRMScorer":
        """This PRM as its training began: the same form and scale, the start checkpoint's trunk
        (a head form's trunk and a shared head's policy trunk) and a fresh head (prm.init_params)."""
        if self.form == "implicit":
            raise ValueError("PRMScorer.initial: an implicit PRM starts at exactly 0 (phi = ref); nothing to score")
        cfg, trunk = start
        params = prm.init_params(self.form, cfg, trunk, self.logprob_init)
        if self.form == "shared":
            params = params | {"trunk": trunk}
        return dataclasses.replace(self, cfg=cfg, params=params)

    def token_rewards(self, prompt_ids, tokens_NT, mask_NT, n: int):
        """[P * n, T] token rewards of responses (n per prompt), masked to 0 past each response."""
        P = sampling.bucket(max(len(x) for x in prompt_ids))
        ptoks, pmask = sampling.left_pad(prompt_ids, P)
        r = _rewards(self.form, self.beta, self.scale, self.cfg, self.params, self.ref, ptoks, pmask,
                     tokens_NT.reshape(len(prompt_ids), n, -1), mask_NT.reshape(len(prompt_ids), n, -1))
        return np.where(mask_NT, np.asarray(r), 0.0)

    def scores(self, prompt_ids, tokens_NT, mask_NT, n: int) -> np.ndarray:
        """[P, n] trajectory scores: mean token reward (ALGORITHM.md section 6)."""
        r = self.token_rewards(prompt_ids, tokens_NT, mask_NT, n)
        return (r.sum(1) / np.maximum(mask_NT.sum(1), 1)).reshape(len(prompt_ids), n)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _rewards(form, beta, scale, cfg, params, ref, ptoks, pmask, resp_GNT, rmask_GNT):
    seqs = prm.build_seqs(ptoks, pmask, resp_GNT, rmask_GNT)
    trunk = params.get("trunk")
    return prm.token_rewards(form, beta, cfg, cfg, params, trunk, ref, seqs, head_scale=scale)



def _vote_correct(s: Rollouts, weights_PN=None) -> np.ndarray:
    """[P] 0/1: the (weighted) vote's answer is right, as the verifier judged a sample giving it."""
    out = []
    for p, answers in enumerate(s.answers_PN):
        v = ev.majority_vote(answers) if weights_PN is None else ev.weighted_vote(answers, weights_PN[p])
        out.append(v is not None and bool(s.correct_PN[p][answers.index(v)]))
    return np.array(out, float)


@dataclasses.dataclass
class EvalReport:
    """summary: name -> (mean, lo, hi) with a 95% bootstrap CI over problems, or (value,);
    per_problem: name -> [P] for paired comparisons (`repirl compare`); curves: name -> {n: value}
    (oracle = pass@n, maj = majority vote, SCORER/best_of_n). Names: module doc of `report`."""

    summary: dict[str, tuple]
    per_problem: dict[str, np.ndarray]
    curves: dict[str, dict[int, float]]
    n_samples: int = 0  # N (0: greedy only)
    beam_n: int = 0  # candidates per beam-search step (0: no search)

    def to_json(self) -> dict:
        return {"summary": {k: list(v) for k, v in self.summary.items()},
                "per_problem": {k: np.asarray(v).tolist() for k, v in self.per_problem.items()},
                "curves": {k: {str(n): v for n, v in c.items()} for k, c in self.curves.items()},
                "n_samples": self.n_samples, "beam_n": self.beam_n}

    def markdown(self) -> str:
        """Outcome metrics; PRM vs null scorers; best-of-n curves beside majority vote."""
        def val(v):
            return ev.format_ci(*v) if len(v) == 3 else f"{v[0]:.3f}"

        scorer = tuple(f"{k}/" for k in prm_quality.SCORERS)
        rows = [{"metric": k, "value [95% CI]": val(v)} for k, v in self.summary.items() if not k.startswith(scorer)]
        if self.beam_n in self.curves.get("prm/best_of_n", {}):  # the search against as many candidates
            rows.append({"metric": f"prm best-of-{self.beam_n} (beam * expansions samples)",
                         "value [95% CI]": f"{self.curves['prm/best_of_n'][self.beam_n]:.3f}"})
        parts = ["Outcome\n\n" + ev.markdown_table(rows, ["metric", "value [95% CI]"])]
        srows = prm_quality.scorer_rows(self.summary, self.n_samples)
        if srows:
            parts.append(f"Scorers on the same {self.n_samples} samples per problem (ranking: within-problem "
                         "(correct, wrong) pairs ordered right, 0.5 = chance; step metrics against exact labels)"
                         "\n\n" + ev.markdown_table(srows, list(srows[0])))
        if self.curves:
            ns = sorted({n for c in self.curves.values() for n in c})
            crows = [{"selector": k, **{f"n={n}": c.get(n) for n in ns}} for k, c in self.curves.items()]
            parts.append("Best-of-n (exact expectation over n-subsets; oracle = pass@n) and majority vote\n\n"
                         + ev.markdown_table(crows, ["selector"] + [f"n={n}" for n in ns]))
        lv = sorted({k.split("/")[-1] for k in self.summary if k.startswith("prm/auroc/steps=")})
        if len(lv) > 1:  # one level: the within-level AUROC is the AUROC
            lrows = [{"scorer": k, **{s: self.summary[f"{k}/auroc/{s}"][0] for s in lv}}
                     for k in prm_quality.SCORERS if f"{k}/auroc/{lv[0]}" in self.summary]
            parts.append("AUROC within each difficulty level\n\n" + ev.markdown_table(lrows, ["scorer"] + lv))
        return "\n\n".join(parts)


def _levels(problems) -> np.ndarray | None:
    """[P] difficulty (meta["steps"]) when every problem has one."""
    lv = [p.meta.get("steps") if p.meta else None for p in problems]
    return None if any(x is None for x in lv) else np.array(lv)


def report(problems, greedy: Rollouts, sampled: Rollouts | None = None, rewards_ST=None,
           step_of: list[np.ndarray] | None = None, *, init_rewards_ST=None, beam_correct=None, beam_n: int = 0,
           seed: int = 0, ks=(1, 4, 8, 16), ns=(1, 2, 4, 8, 16)) -> EvalReport:
    """The metrics of one evaluation, from rollouts and (optionally) the PRM's [S, T] token
    rewards of the sampled responses (init_rewards_ST: the untrained PRM's, the prm_init null);
    step_of: each sampled response's [T_i] token -> step (steps.token_steps). Summary names:
      pass@1_greedy (and pass@1_greedy/steps=k per difficulty level)
      avg@N, pass@k (1 < k <= N), maj@N, prm_weighted_maj@N (sigmoid(score) weights),
        prm_best_of_N (= prm/best_of_N, listed with the answer-selection methods)
      SCORER/{ranking, auroc, auroc_within_level, auroc/steps=k, best_of_N} for the scorers of
        prm_quality (the PRM ones with rewards, prm_min / prm_last also need step_of)
      chain problems only, against exact step labels: lucky_rate; errors/KIND, the fraction of samples
        whose first wrong step is of that kind (data.chain.ERROR_KINDS); prm/, prm_init/ and logprob/{step_auroc,
        fws_f1, fws_accuracy, fws_error_acc, fws_correct_acc, fws_tau, fws_n}
      prm_beam (beam_correct given): pass@1 of the beam search's answer; compare with
        prm/best_of_n at n = beam_n (= beam * expansions) in the curves."""
    levels = _levels(problems)
    g = greedy.correct_PN[:, 0].astype(float)
    per, curves, N = {"pass@1_greedy": g}, {}, 0
    if sampled is not None:
        c, N = sampled.correct_PN, sampled.correct_PN.shape[1]
        ns = sorted({n for n in (*ns, beam_n) if 1 <= n <= N})
        per[f"avg@{N}"] = c.mean(1)
        per |= {f"pass@{k}": ev.pass_at_k_per_problem(c, k) for k in ks if 1 < k <= N}
        per[f"maj@{N}"] = _vote_correct(sampled)
        prm_steps = (prm_quality.step_values(rewards_ST, sampled.mask, step_of, sampled.texts)
                     if rewards_ST is not None and step_of is not None else None)
        scores = prm_quality.response_scores(sampled.texts, sampled.mask, N, sampled.logprobs, rewards_ST, prm_steps,
                                             init_rewards_ST)
        if "prm" in scores:  # the PRM's answer-selection methods, beside maj@N
            per[f"prm_best_of_{N}"] = ev.best_of_n(scores["prm"], c)
            # votes need non-negative weights: the PRM score through a sigmoid
            per[f"prm_weighted_maj@{N}"] = _vote_correct(sampled, 1.0 / (1.0 + np.exp(-scores["prm"])))
    if beam_correct is not None:
        per["prm_beam"] = np.asarray(beam_correct, np.float64)
    summary = {"pass@1_greedy": ev.bootstrap_ci(g, seed=seed)}
    if levels is not None:
        summary |= {f"pass@1_greedy/steps={k}": ev.bootstrap_ci(g[levels == k], seed=seed) for k in np.unique(levels)}
    summary |= {k: ev.bootstrap_ci(v, seed=seed) for k, v in per.items() if k not in summary}
    if sampled is None:
        return EvalReport(summary, per, curves, N, beam_n)
    curves["oracle"] = ev.best_of_n_curve(c, c, ns)
    curves["maj"] = compare.majority_vote_curve(sampled.answers_PN, c, ns, seed=seed)
    for name, s in scores.items():
        sm, pp, curves[f"{name}/best_of_n"] = prm_quality.scorer_metrics(s, c, levels, ns, seed)
        summary |= {f"{name}/{k}": v for k, v in sm.items()}
        per |= {f"{name}/{k}": v for k, v in pp.items()}
    if step_of is not None and all(p.source == "chain" for p in problems):
        labels = prm_quality.chain_labels(problems, sampled.texts, N)
        summary["lucky_rate"] = prm_quality.lucky(c, labels, seed)
        # what the samples' first wrong steps are (a slip RL can drop, or arithmetic the policy lacks)
        kinds = np.array([chain.error_kind(problems[i // N], lab) for i, lab in enumerate(labels)]).reshape(-1, N)
        for kind in chain.ERROR_KINDS:
            per[f"errors/{kind}"] = (kinds == kind).mean(1)
            summary[f"errors/{kind}"] = ev.bootstrap_ci(per[f"errors/{kind}"], seed=seed)
        by_step = {"prm": prm_steps}
        if init_rewards_ST is not None:
            by_step["prm_init"] = prm_quality.step_values(init_rewards_ST, sampled.mask, step_of, sampled.texts)
        if sampled.logprobs is not None:
            by_step["logprob"] = prm_quality.step_values(sampled.logprobs, sampled.mask, step_of, sampled.texts)
        for name, st in by_step.items():
            if st is not None:
                summary |= {f"{name}/{k}": v for k, v in prm_quality.step_metrics(st, labels, N, seed).items()}
    return EvalReport(summary, per, curves, N, beam_n)


def _token_rewards(scorer: PRMScorer, prompt_ids, s: Rollouts, n: int, chunk: int) -> np.ndarray:
    """[P * n, T] token rewards, `chunk` problems per call (0: all): bounds the scoring batch as
    max_prompts bounds the sampler's."""
    c = chunk or len(prompt_ids)
    return np.concatenate([scorer.token_rewards(prompt_ids[a:a + c], s.tokens[a * n:(a + c) * n],
                                                s.mask[a * n:(a + c) * n], n) for a in range(0, len(prompt_ids), c)])


def evaluate(pc: ModelConfig, params, tok, problems, prompt_ids, *, scorer: PRMScorer | None = None,
             init_scorer: PRMScorer | None = None, samples: int = 16, max_new_tokens: int, temperature: float = 1.0,
             seed: int = 0, beam: int = 0, expansions: int = 4, workers: int = 2, max_prompts: int = 0, slots: int = 0,
             layout=None, timeout_s: float = 5.0) -> EvalReport:
    """Greedy answers; with samples > 1, that many samples per problem at `temperature`, scored by
    `scorer` (when given) and the null scorers; with beam > 0, the PRM's step-level beam search
    (width beam, `expansions` samples per beam per step: beam * expansions candidates a step).
    init_scorer (with scorer): the same PRM untrained (PRMScorer.initial), the prm_init null.
    slots > 0: continuous batching with that many decode slots for the samples and the beam search.
    The metrics: `report`."""
    if beam and scorer is None:
        raise ValueError("evaluate: beam search needs a scorer (the PRM guides it)")
    kw = dict(max_new_tokens=max_new_tokens, timeout_s=timeout_s, workers=workers, max_prompts=max_prompts,
              slots=slots, layout=layout)
    greedy = rollouts(pc, params, tok, problems, prompt_ids, **kw)
    sampled = rewards = init_rewards = step_of = beam_correct = None
    if samples > 1:
        sampled = rollouts(pc, params, tok, problems, prompt_ids, n=samples, temperature=temperature, seed=seed, **kw)
        step_of = [steps.token_steps(tok, t[m]) for t, m in zip(sampled.tokens, sampled.mask)]
        if scorer is not None:
            rewards = _token_rewards(scorer, prompt_ids, sampled, samples, max_prompts)
            if init_scorer is not None:
                init_rewards = _token_rewards(init_scorer, prompt_ids, sampled, samples, max_prompts)
    if beam:
        beam_correct, _ = search.evaluate_beam(pc, params, scorer, tok, problems, prompt_ids, beam=beam,
                                               expansions=expansions, temperature=temperature,
                                               max_new_tokens=max_new_tokens, seed=seed, timeout_s=timeout_s,
                                               workers=workers, slots=slots)
    return report(problems, greedy, sampled, rewards, step_of, init_rewards_ST=init_rewards, beam_correct=beam_correct,
                  beam_n=beam * expansions if beam else 0, seed=seed)
