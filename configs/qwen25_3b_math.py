"""The paper's Qwen2.5-3B-Instruct math setting (ALGORITHM.md sections 5 and 7): Eurus-2-RL-Data
math problems with 4 expert traces each, K = 4, prompts up to 1,536 and responses up to 3,000
tokens, alpha_p = 0.05, AdamW (no weight decay) at lr 5e-7 (policy) and 3e-8 (PRM), grad clip 1 and
10, one PRM epoch then one policy epoch in minibatches of 32 of 128 prompts, no KL, no SFT.
Checkpoint and data paths are the user's (HF dirs / Eurus parquet or jsonl; experts as jsonl
with problem_id, response):

    repirl plan  --config configs/qwen25_3b_math.py --topology v4-32
    repirl train --config configs/qwen25_3b_math.py --workdir runs/qwen25_3b_math \\
        --set model.policy=/ckpt/Qwen2.5-3B-Instruct --set data.path=/data/eurus2_rl_math.parquet \\
        --set data.experts_path=/data/eurus2_experts.jsonl
"""
from repirl_jax.config import TrainConfig, paper_math_config


def config() -> TrainConfig:
    return paper_math_config("checkpoints/Qwen2.5-3B-Instruct", alpha_p=0.05)
