"""The paper's Qwen3-4B-Base math setting (ALGORITHM.md sections 5 and 7): Eurus-2-RL-Data
math problems with 4 expert traces each, K = 4, prompts up to 1,536 and responses up to 3,000
tokens, alpha_p = 0.1, AdamW (no weight decay) at lr 5e-7 (policy) and 3e-8 (PRM), grad clip 1 and
10, one PRM epoch then one policy epoch in minibatches of 32 of 128 prompts, no KL, no SFT.
Checkpoint and data paths are the user's (HF dirs / Eurus parquet or jsonl; experts as jsonl
with problem_id, response):

    repirl plan  --config configs/qwen3_4b_math.py --topology v4-32
    repirl train --config configs/qwen3_4b_math.py --workdir runs/qwen3_4b_math \\
        --set model.policy=/ckpt/Qwen3-4B-Base --set data.path=/data/eurus2_rl_math.parquet \\
        --set data.experts_path=/data/eurus2_experts.jsonl
"""
import dataclasses

from repirl_jax.config import TrainConfig, paper_math_config


def config() -> TrainConfig:
    c = paper_math_config("checkpoints/Qwen3-4B-Base", alpha_p=0.1)
    # Sized for a v4-32 by `repirl plan` (AOT peak 18.1 of 32 GiB per chip): with 4 microbatches per
    # minibatch the PRM and policy updates' temporaries alone (~36 GiB) exceed a chip. Same
    # updates, smaller pieces: gradients are accumulated over the microbatches.
    return dataclasses.replace(c, prm=dataclasses.replace(c.prm, microbatches=16),
                               policy=dataclasses.replace(c.policy, microbatches=8))
