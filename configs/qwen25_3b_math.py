"""The paper's Qwen2.5-3B-Instruct math setting (ALGORITHM.md sections 5 and 7): Eurus-2-RL-Data
math problems with 4 expert traces each, K = 4, prompts up to 1,536 and responses up to 3,000
tokens, alpha_p = 0.05, AdamW (no weight decay) at lr 5e-7 (policy) and 3e-8 (PRM), grad clip 1 and
10, one PRM epoch then one policy epoch in minibatches of 32 of 128 prompts, no KL, no SFT.
Checkpoint and data paths are the user's (HF dirs / Eurus parquet or jsonl; experts as jsonl
with problem_id, response):

    repirl plan  --config configs/qwen25_3b_math.py --topology v5e-16
    repirl train --config configs/qwen25_3b_math.py --workdir runs/qwen25_3b_math \\
        --set model.policy=/ckpt/Qwen2.5-3B-Instruct --set data.path=/data/eurus2_rl_math.parquet \\
        --set data.experts_path=/data/eurus2_experts.jsonl
"""
from repirl_jax.config import (DataConfig, LoopConfig, MeshConfig, ModelSource, OptimConfig, PolicyConfig,
                               PRMConfig, TrainConfig)


def config() -> TrainConfig:
    return TrainConfig(
        model=ModelSource(policy="checkpoints/Qwen2.5-3B-Instruct", dtype="bfloat16", remat="full"),
        data=DataConfig(task="eurus", path="data/eurus2_rl_math.parquet", experts_path="data/eurus2_experts.jsonl",
                        n_train=7000, n_test=256, prompts_per_step=128, samples=4, experts=4, oversample=2,
                        max_prompt_len=1536, max_new_tokens=3000),
        prm=PRMConfig(minibatches=4, microbatches=4, optim=OptimConfig(lr=3e-8, grad_clip=10.0)),
        policy=PolicyConfig(alpha_p=0.05, minibatches=4, microbatches=4, logit_chunk=512,
                            optim=OptimConfig(lr=5e-7, grad_clip=1.0)),
        # 2 epochs of 7,000 problems at 128 per step
        train=LoopConfig(steps=110, eval_every=10, eval_samples=4, checkpoint_every=5, verify_workers=16),
        mesh=MeshConfig(shape=(1, -1, 1)),  # FSDP over every chip
    )
