"""`repirl plot DIR`: PNG curves from one or more runs' metrics.jsonl (matplotlib, headless)."""
from __future__ import annotations

import json
import os

CURVES = (("rollout_acc", "rollout accuracy"), ("eval_pass@1", "held-out pass@1 (greedy)"), ("prm_loss", "PRM loss"),
          ("reward_gap", "reward gap (positives - negatives)"), ("ess_frac", "ESS / |N|"), ("entropy", "policy entropy"),
          ("response_len_mean", "response length (tokens)"), ("ranking_acc", "PRM ranking accuracy"))


def read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no metrics (is {workdir} a training workdir?)")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_runs(runs: dict[str, str], out_dir: str, smooth: int = 5) -> list[str]:
    """One PNG per curve that any run has (`<key>.png`) plus all of them in `curves.png`; each run
    is one line, raw values faint and a running mean over `smooth` steps on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    import os

    os.makedirs(out_dir, exist_ok=True)  # `repirl plot RUN --out NEW_DIR`
    data = {name: read_metrics(d) for name, d in runs.items()}
    present = [(k, title) for k, title in CURVES if any(r.get(k) is not None for rows in data.values() for r in rows)]
    if not present:
        raise ValueError(f"{', '.join(runs.values())}: metrics.jsonl has none of {', '.join(k for k, _ in CURVES)}")
    cols = min(4, len(present))
    rows_n = -(-len(present) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4 * cols, 3 * rows_n), squeeze=False)
    colors = {name: f"C{i}" for i, name in enumerate(data)}  # one colour per run in every panel
    written = []
    for ax, (key, title) in zip(axes.flat, present):
        single = plt.figure(figsize=(5, 3.5)).gca()
        for name, rows in data.items():
            pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            if not pts:
                continue
            x, y = map(np.asarray, zip(*pts))
            k = 1 if len(y) <= 20 else min(smooth, len(y))  # no running mean over a few eval points
            ys = np.convolve(y, np.ones(k) / k, mode="valid")
            marker = "o" if len(x) <= 20 else None  # sparse series (periodic eval) stay visible
            for a in (ax, single):
                a.plot(x[k - 1:], ys, label=name, color=colors[name], marker=marker)
                a.plot(x, y, alpha=0.25, color=colors[name])
        for a in (ax, single):
            a.set_title(title)
            a.set_xlabel("step")
            a.grid(alpha=0.3)
            a.legend(fontsize=8)
        path = os.path.join(out_dir, f"{key.replace('@', '_at_')}.png")
        single.figure.tight_layout()
        single.figure.savefig(path, dpi=100)
        plt.close(single.figure)
        written.append(path)
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    fig.tight_layout()
    path = os.path.join(out_dir, "curves.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path] + written
