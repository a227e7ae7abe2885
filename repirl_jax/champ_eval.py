"""A PRM's step judgements against CHAMP's human labels (ProcessBench-style first-wrong-step).

CHAMP (data/packaged.py) has 540 model solutions to 270 competition problems, each with a
human-marked first wrong step (a character span) or none. Here

  step      a non-empty line of the solution; the newline(s) after it belong to it, and text
            before the first non-empty line to step 0. The label is the step holding the first
            non-space character of the marked span (None: no wrong step).
  rewards   r_t of the PRM for every solution token, the prompt being the problem in the policy's
            chat format (as in training); tokens are mapped to steps by their character offsets.
  step score, two definitions, both reported:
            "step"    s_i = mean of r_t over step i's own tokens (a local judgement)
            "prefix"  s_i = mean of r_t over every token up to the end of step i (the beam-search
                      score of that prefix)
  prediction  the first step with s_i < tau, None when there is none (evaluate.first_wrong_step).
  tau       picked on a dev half of the problems (seeded) to maximise F1 (ProcessBench's headline
            metric; evaluate.pick_threshold), then applied to the other half, where accuracy,
            error_acc, correct_acc and F1 = 2 e c / (e + c) are reported.
  AUROC     of the solution score (mean token reward over the whole solution) against "has no
            wrong step", over all solutions (no threshold involved, so no split needed).
CIs: cluster bootstrap over problems (a problem's solutions are resampled together).
Solutions longer than `max_tokens` are cut; one whose labelled step is cut off is skipped (counted).
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np

from . import evaluate as ev
from . import sampling
from .data import packaged, prompts

log = logging.getLogger(__name__)


def step_starts(text: str) -> list[int]:
    """Character offsets where the non-empty lines of `text` start."""
    starts, pos = [], 0
    for line in text.split("\n"):
        if line.strip():
            starts.append(pos)
        pos += len(line) + 1
    return starts or [0]


def step_label(text: str, span: tuple[int, int] | None) -> int | None:
    """Index of the step holding the first non-space character of `span` (None: no span)."""
    if span is None:
        return None
    c = span[0]
    while c < min(span[1], len(text)) - 1 and text[c].isspace():
        c += 1
    return max(0, int(np.searchsorted(step_starts(text), c, side="right")) - 1)


def token_steps(tokenizer, text: str) -> tuple[list[int], np.ndarray]:
    """(token ids of text, [T] step index of each token, by its first character's offset)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    first = np.array([o[0] for o in enc["offset_mapping"]], np.int64)
    step = np.searchsorted(np.array(step_starts(text)), first, side="right") - 1
    return list(enc["input_ids"]), np.maximum(step, 0)


def step_scores(r: np.ndarray, step_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(step means, prefix means) of token rewards r [T] for the steps that have tokens."""
    steps = np.unique(step_of)
    own = np.array([r[step_of == s].mean() for s in steps])
    ends = np.array([np.max(np.nonzero(step_of == s)[0]) for s in steps])
    prefix = np.cumsum(r)[ends] / (ends + 1)
    return own, prefix


def score_solutions(scorer, tokenizer, problems, sols, *, max_prompt_len: int = 1024, max_tokens: int = 1024,
                    batch: int = 4) -> tuple[list[dict], int]:
    """One record per kept solution: problem_id, label, step / prefix scores, solution score.
    Returns (records, skipped)."""
    by_id = {p.id: p for p in problems}
    items, skipped = [], 0
    for s in sols:
        enc = prompts.encode([by_id[s.problem_id]], tokenizer, max_prompt_len, overflow="truncate")
        ids, step_of = token_steps(tokenizer, s.text)
        cap = max(0, min(max_tokens, scorer.cfg.max_position_embeddings - len(enc.ids[0])))
        ids, step_of = ids[:cap], step_of[:cap]
        label = step_label(s.text, s.first_wrong_span)
        # steps are renumbered 0..k-1 over those with tokens: a label must point into them
        kept = np.unique(step_of)
        if not ids or (label is not None and label not in kept):
            skipped += 1
            continue
        items.append((s, enc.ids[0], ids, step_of, None if label is None else int(np.searchsorted(kept, label))))
    items.sort(key=lambda x: len(x[2]))  # similar lengths share a batch: less padding
    records = []
    for b in range(0, len(items), batch):
        chunk = items[b:b + batch]
        chunk = chunk + [chunk[-1]] * (batch - len(chunk))  # a fixed batch size: one compile per length bucket
        T = sampling.bucket(max(len(x[2]) for x in chunk))
        toks, mask = sampling.pad_right([x[2] for x in chunk], T)
        r = scorer.token_rewards([x[1] for x in chunk], toks, mask, 1)
        for j, (s, _, ids, step_of, label) in enumerate(chunk[:len(items[b:b + batch])]):
            own, prefix = step_scores(np.asarray(r[j, :len(ids)], np.float64), step_of)
            records.append({"problem_id": s.problem_id, "setting": s.setting, "label": label,
                            "step": own.tolist(), "prefix": prefix.tolist(),
                            "solution_score": float(r[j, :len(ids)].mean()), "tokens": len(ids)})
        log.info("CHAMP: scored %d / %d solutions", len(records), len(items))
    return records, skipped


def _cluster_weights(groups: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, S] how often each sample's problem is drawn when problems are resampled."""
    uniq, idx = np.unique(groups, return_inverse=True)
    counts = np.random.default_rng(seed).multinomial(len(uniq), np.full(len(uniq), 1 / len(uniq)), size=n_boot)
    return counts[:, idx].astype(np.float64)


def _ci(values, point, level=0.95):
    v = np.asarray(values, np.float64)
    v = v[~np.isnan(v)]
    lo, hi = np.quantile(v, [(1 - level) / 2, (1 + level) / 2]) if v.size else (np.nan, np.nan)
    return float(point), float(lo), float(hi)


def evaluate_records(records: list[dict], seed: int = 0, n_boot: int = 2000) -> dict:
    """Threshold on a seeded dev half of the problems; ProcessBench metrics on the other half."""
    pids = sorted({r["problem_id"] for r in records})
    dev_ids = set(np.random.default_rng(seed).permutation(pids)[:len(pids) // 2].tolist())
    dev = [r for r in records if r["problem_id"] in dev_ids]
    test = [r for r in records if r["problem_id"] not in dev_ids]
    out = {"n_solutions": len(records), "n_dev": len(dev), "n_test": len(test)}
    if not dev or not test:
        raise ValueError(f"CHAMP: {len(records)} scored solutions are too few for a dev/test split")
    labels = [r["label"] for r in test]
    is_err = np.array([y is not None for y in labels])
    w = _cluster_weights(np.array([r["problem_id"] for r in test]), n_boot, seed)
    for kind in ("step", "prefix"):
        tau = ev.pick_threshold([r[kind] for r in dev], [r["label"] for r in dev], objective="f1")
        pred = [ev.first_wrong_step(r[kind], tau) for r in test]
        m = ev.first_wrong_step_metrics(pred, labels)
        hit = np.array([p == y for p, y in zip(pred, labels)], np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            e = (w * hit * is_err).sum(1) / (w * is_err).sum(1)
            c = (w * hit * ~is_err).sum(1) / (w * ~is_err).sum(1)
            f1 = np.where(e + c > 0, 2 * e * c / (e + c), 0.0)
            acc = (w * hit).sum(1) / w.sum(1)
        out[kind] = {"threshold": tau, "accuracy": _ci(acc, m["accuracy"]), "f1": _ci(f1, m["f1"]),
                     "error_acc": _ci(e, m["error_acc"]), "correct_acc": _ci(c, m["correct_acc"])}
    s = np.array([r["solution_score"] for r in records])
    ok = np.array([r["label"] is None for r in records])
    wa = _cluster_weights(np.array([r["problem_id"] for r in records]), n_boot, seed + 1)
    boots = [ev.auroc(np.repeat(s, k.astype(int)), np.repeat(ok, k.astype(int))) for k in wa]
    out["auroc"] = _ci(boots, ev.auroc(s, ok))
    return out


@dataclasses.dataclass
class RandomScorer:
    """The null a CHAMP score must beat: i.i.d. uniform token rewards (seeded), with the PRM's
    config so that the same solutions are kept and cut."""

    cfg: object
    seed: int = 0

    def __post_init__(self):
        self.rng = np.random.default_rng(self.seed)

    def token_rewards(self, prompt_ids, tokens_NT, mask_NT, n: int) -> np.ndarray:
        return np.where(mask_NT, self.rng.uniform(size=tokens_NT.shape), 0.0)


@dataclasses.dataclass
class LengthScorer:
    """The null of what length alone says: every token's reward is its solution's token count, so
    the solution score (AUROC) is the length, and every step of a solution scores the same (a
    first wrong step is predicted at step 0, for the solutions on one side of the threshold)."""

    cfg: object

    def token_rewards(self, prompt_ids, tokens_NT, mask_NT, n: int) -> np.ndarray:
        mask = np.asarray(mask_NT, bool)
        return np.where(mask, mask.sum(-1, keepdims=True).astype(np.float64), 0.0)


def run(scorers: dict, tokenizer, *, n_problems: int = 0, seed: int = 0, max_tokens: int = 1024,
        batch: int = 4) -> tuple[dict, dict]:
    """({name: summary}, {name: per-solution records}) of each scorer on all CHAMP problems, or a
    seeded n_problems of them (the same solutions and dev/test split for every scorer)."""
    problems, sols = packaged.champ()
    if n_problems:
        keep = set(np.random.default_rng(seed).permutation([p.id for p in problems])[:n_problems].tolist())
        sols = [s for s in sols if s.problem_id in keep]
    summaries, records = {}, {}
    for name, scorer in scorers.items():
        records[name], skipped = score_solutions(scorer, tokenizer, problems, sols, max_tokens=max_tokens, batch=batch)
        summaries[name] = evaluate_records(records[name], seed) | {"skipped": skipped}
    return summaries, records


def table(summaries: dict) -> str:
    """One row per metric, one column per scorer."""
    first = next(iter(summaries.values()))
    rows = [{"metric": f"{k} {kind}-score (test half)",
             **{name: ev.format_ci(*sm[kind][k]) for name, sm in summaries.items()}}
            for kind in ("step", "prefix") for k in ("accuracy", "f1", "error_acc", "correct_acc")]
    rows.append({"metric": "AUROC solution score vs no wrong step (all)",
                 **{name: ev.format_ci(*sm["auroc"]) for name, sm in summaries.items()}})
    rows.append({"metric": "threshold tau (step / prefix, picked on the dev half)",
                 **{name: f"{sm['step']['threshold']:.3g} / {sm['prefix']['threshold']:.3g}"
                    for name, sm in summaries.items()}})
    assert all(sm["n_test"] == first["n_test"] for sm in summaries.values())  # same solutions for every scorer
    return ev.markdown_table(rows, ["metric", *summaries])


def cli(args) -> int:
    """`repirl eval --champ [N] --policy DIR --prm FINAL [--prm-start START] [--seed S] [--out F]`:
    the PRM, its untrained start (with --prm-start), a random scorer and the length null on the same
    solutions."""
    import json

    from . import eval_runner, models
    from .config import ConfigError

    if not args.prm:
        raise ConfigError("eval --champ needs --prm (a training run's final dir)")
    pc, params = models.load(args.policy)
    scorer = eval_runner.PRMScorer.load(args.prm, (pc, params))
    scorers = {"prm": scorer}
    if args.prm_start:
        scorers["prm_init"] = scorer.initial(models.load(args.prm_start))
    scorers["random"] = RandomScorer(scorer.cfg, args.seed)
    scorers["length"] = LengthScorer(scorer.cfg)
    summaries, records = run(scorers, models.load_tokenizer(args.policy), n_problems=args.champ, seed=args.seed)
    print(table(summaries))
    sm = summaries["prm"]
    print(f"{sm['n_solutions']} solutions scored ({sm['n_dev']} dev, {sm['n_test']} test), "
          f"{sm['skipped']} skipped (labelled step past the token cap); columns: {', '.join(summaries)}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"policy": args.policy, "prm": args.prm, "prm_start": args.prm_start, "task": "champ",
                       "summary": sm, "nulls": {k: v for k, v in summaries.items() if k != "prm"},
                       "solutions": records["prm"]}, f, indent=1)
    return 0
