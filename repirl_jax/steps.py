"""Responses as steps: which step (line) each response token belongs to, exact per-token labels
for tasks that have them (the chain task), and a PRM's per-step scores.

A step is a line of the decoded response: token j belongs to step = the number of newlines in the
text of the tokens before it, so a token that holds a newline ends its step (BPE vocabularies merge
newlines into other tokens, so the count comes from each token's own decoded text). This is the
segmentation of `data.chain.step_labels` and of the beam search's newline delimiter.
"""
from __future__ import annotations

import functools

import numpy as np

from .data import chain


@functools.lru_cache(maxsize=8)
def _newlines(tok) -> np.ndarray:
    """[V] number of newlines in each vocabulary entry's decoded text (specials: 0)."""
    texts = tok.batch_decode([[i] for i in range(len(tok))], skip_special_tokens=True)
    return np.array([t.count("\n") for t in texts], np.int64)


def token_steps(tok, ids) -> np.ndarray:
    """[..., T] step index of each token of responses [..., T] (one response, or a batch of them)."""
    nl = _newlines(tok)[np.asarray(ids, np.int64)]
    return np.cumsum(nl, -1) - nl


def labels(problem, tok, ids) -> tuple[chain.StepLabels, np.ndarray]:
    """(the response's exact StepLabels, [T] float per token: 1 its step is on the correct path,
    0 its step is the first wrong one, -1 a later step). Later steps are wrong by the prefix rule,
    but whether they are themselves right is undefined there (PRM800K and ProcessBench stop
    labelling at the first error): a token-level PRM that flags the slip is right, and one asked to
    also flag every later token must carry "a slip happened" forward, which the trajectory score
    and the prefix aggregation (min over steps) already do. A step past the last line (an empty
    tail holding EOS) counts as wrong."""
    text = tok.decode(list(ids), skip_special_tokens=True)
    lab = chain.step_labels(problem, text)
    ok = np.array(lab.ok + [False], np.float32)
    of = np.minimum(token_steps(tok, ids), len(lab.ok))
    tok_lab = ok[of]
    first = len(lab.ok) if lab.first_wrong is None else lab.first_wrong
    return lab, np.where(of > first, -1.0, tok_lab).astype(np.float32)


def step_scores(r_T: np.ndarray, step_of_T: np.ndarray, n_steps: int) -> np.ndarray:
    """[n_steps] mean token reward of each step's own tokens (nan for a step without tokens)."""
    sums = np.bincount(step_of_T, weights=r_T, minlength=n_steps)[:n_steps]
    counts = np.bincount(step_of_T, minlength=n_steps)[:n_steps]
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
