"""PRM-guided step-level beam search (ALGORITHM.md section 6).

A step ends at a delimiter token (a newline by default), at EOS, or after `step_tokens` tokens.
For P problems with beam width B and M expansions per beam, every search step is

  1. one batched `sampling.generate` call over P * B slots with num_samples = M: slot (p, i) holds
     prompt_p + beam_{p,i}; it samples one more step (stop = the delimiters);
  2. the PRM scores every candidate prefix y = beam + new step by its mean token reward
         s(y) = (1 / |y|) sum_{t < |y|} r_phi(x, y_<t, y_t)        (response tokens only);
  3. per problem, candidates = finished beams carried over (their score is kept: a prefix's
     rewards never change, the PRM being causal) + the new B * M expansions; identical token
     sequences are merged (first kept) and the top B by score (ties -> earlier candidate) survive.
A beam is finished when it ends with EOS or reaches `max_new_tokens`; the search stops when every
beam is finished or after `max_steps`, and returns each problem's highest-scoring beam.

Shapes stay fixed (P * B slots every step) so the sampler compiles once per prompt-length bucket:
slots freed by finished beams are given to the problem's live beams in turn (more draws for the
survivors, at no extra cost), and a problem with no live beam fills its slots with its bare prompt
and ignores the output. With B = M = 1 at temperature 0 this is greedy decoding.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from . import sampling


@dataclasses.dataclass
class Beam:
    tokens: tuple[int, ...]
    score: float
    done: bool


@dataclasses.dataclass
class BeamResult:
    tokens: list[list[int]]  # the best response of each problem
    texts: list[str] | None  # decoded (when a tokenizer was given)
    scores: np.ndarray  # [P] its PRM score (mean token reward)
    beams: list[list[Beam]]  # every problem's final beams, best first
    steps: int  # search steps taken (= sampler calls)


def delimiter_ids(tokenizer, delimiter: str = "\n") -> list[list[int]]:
    """Every non-special vocabulary token whose text contains `delimiter`, as one-token stop
    sequences. BPE vocabularies merge newlines into other tokens ('.\\n', '\\n\\n'), so encoding
    the delimiter alone would miss most step ends."""
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in special]
    texts = tokenizer.batch_decode([[i] for i in ids])
    out = [[i] for i, t in zip(ids, texts) if delimiter in t]
    if not out:
        raise ValueError(f"no token of the vocabulary contains the step delimiter {delimiter!r}")
    return out


def _score_prefixes(scorer, prompt_ids, cands: list[tuple[int, ...]], n: int) -> np.ndarray:
    """[P * n] mean token reward of each candidate (rows problem-major, n per problem)."""
    T = sampling.bucket(max(len(c) for c in cands))  # bucketed: few shapes compile
    toks, mask = sampling.pad_right(cands, T)
    r = scorer.token_rewards(prompt_ids, toks, mask, n)
    return r.sum(1) / np.maximum(mask.sum(1), 1)


def beam_search(pc, params, scorer, prompt_ids: Sequence[Sequence[int]], *, beam: int = 4, expansions: int = 4,
                stop: Sequence[Sequence[int]], eos_id=None, step_tokens: int = 64, max_new_tokens: int = 256,
                max_steps: int = 32, temperature: float = 1.0, seed: int = 0, tokenizer=None,
                slots: int = 0) -> BeamResult:
    """Beam search guided by `scorer` (an eval_runner.PRMScorer, or anything with its
    token_rewards(prompt_ids, tokens, mask, n)). `stop`: the delimiters as token-id sequences
    (see delimiter_ids); eos_id defaults to the policy's EOS ids. slots > 0: each step's
    expansions go through continuous batching with that many decode slots (steps end at a
    delimiter, so their lengths are skewed), with the same candidates."""
    if beam < 1 or expansions < 1 or step_tokens < 1 or max_new_tokens < 1 or max_steps < 1:
        raise ValueError(f"beam_search: beam={beam}, expansions={expansions}, step_tokens={step_tokens}, "
                         f"max_new_tokens={max_new_tokens}, max_steps={max_steps}: all must be >= 1")
    eos = set(pc.eos_ids if eos_id is None else (eos_id,) if isinstance(eos_id, int) else eos_id)
    P, B, M = len(prompt_ids), beam, expansions
    max_len = pc.max_position_embeddings
    beams = [[Beam((), float("-inf"), False)] for _ in range(P)]
    steps = 0
    while steps < max_steps and not all(b.done for bs in beams for b in bs):
        expanded, rows = [], []  # expanded[p][i]: the beam expanded in slot i (None: padding)
        for p in range(P):
            live = [b for b in beams[p] if not b.done]
            s = [live[i % len(live)] for i in range(B)] if live else [None] * B
            expanded.append(s)
            rows += [list(prompt_ids[p]) + list(b.tokens if b else ()) for b in s]
        # one sampler call per step; a step may not run past the model's context
        cap = min(step_tokens, max_len - max(len(r) for r in rows))
        if cap < 1:
            raise ValueError(f"beam_search: a prompt + beam reaches max_position_embeddings={max_len}; "
                             "lower max_new_tokens")
        out = sampling.generate(pc, params, rows, max_new_tokens=cap, temperature=temperature, num_samples=M,
                                eos_id=sorted(eos) or None, stop=stop, seed=seed * 1_000_003 + steps, slots=slots)
        cands = []
        for p in range(P):
            for i, b in enumerate(expanded[p]):
                for k in range(M):
                    j = (p * B + i) * M + k
                    new = tuple(int(t) for t in out.tokens[j][out.mask[j]])
                    cands.append(((b.tokens if b else ()) + new)[:max_new_tokens])
        scores = _score_prefixes(scorer, prompt_ids, cands, B * M)
        scores = np.where(np.isnan(scores), -np.inf, scores)  # a NaN score is never kept over a real one
        for p in range(P):
            if expanded[p][0] is None:
                continue  # every beam of this problem is finished
            pool = [b for b in beams[p] if b.done]
            for j in range(p * B * M, (p + 1) * B * M):
                c = cands[j]
                pool.append(Beam(c, float(scores[j]), bool(c and c[-1] in eos) or len(c) >= max_new_tokens))
            seen, uniq = set(), []
            for b in pool:
                if b.tokens not in seen:
                    seen.add(b.tokens)
                    uniq.append(b)
            # stable sort: equal scores keep candidate order (carried beams, then slot, then sample)
            beams[p] = sorted(uniq, key=lambda b: -b.score)[:B]
        steps += 1
    best = [bs[0] for bs in beams]
    texts = [tokenizer.decode(list(b.tokens), skip_special_tokens=True) for b in best] if tokenizer else None
    return BeamResult([list(b.tokens) for b in best], texts, np.array([b.score for b in best]), beams, steps)


def evaluate_beam(pc, params, scorer, tokenizer, problems, prompt_ids, *, beam: int, expansions: int,
                  delimiter: str = "\n", max_new_tokens: int = 256, step_tokens: int = 64, temperature: float = 1.0,
                  seed: int = 0, timeout_s: float = 5.0, workers: int = 2, slots: int = 0) -> tuple[np.ndarray, BeamResult]:
    """([P] float correctness of each problem's best beam, the search result): `repirl eval --beam`.
    max_steps = max_new_tokens, which never binds (every step adds at least one token)."""
    from .verifiers.dispatch import verify

    res = beam_search(pc, params, scorer, prompt_ids, beam=beam, expansions=expansions,
                      stop=delimiter_ids(tokenizer, delimiter), step_tokens=step_tokens, max_new_tokens=max_new_tokens,
                      max_steps=max_new_tokens, temperature=temperature, seed=seed, tokenizer=tokenizer, slots=slots)
    verdicts = verify(list(problems), res.texts, timeout_s, workers)
    return np.array([v.correct for v in verdicts], np.float64), res
