"""Tiny from-scratch policy and PRM (2 layers, width 64, SmolLM2's tokenizer) on the chain task:
seconds per step on a CPU. Used by the tests.

    repirl train --config configs/tiny_cpu.py --workdir runs/tiny [--set train.steps=20]
"""
from repirl_jax.config import (DataConfig, LoopConfig, ModelSource, OptimConfig, PolicyConfig, PRMConfig,
                               TrainConfig)


def config() -> TrainConfig:
    return TrainConfig(
        model=ModelSource(policy="tiny", tiny_layers=2, tiny_width=64),
        # a random model is never right: keep every prompt (no accuracy band) so steps happen
        data=DataConfig(min_steps=1, max_steps=2, n_train=64, n_test=8, prompts_per_step=2, samples=2,
                        experts=1, oversample=1, acc_low=0.0, acc_high=1.0, max_new_tokens=32),
        prm=PRMConfig(optim=OptimConfig(lr=1e-3, grad_clip=10.0)),
        policy=PolicyConfig(logit_chunk=16, optim=OptimConfig(lr=1e-3)),
        train=LoopConfig(steps=4, checkpoint_every=2, verify_workers=1),
    )
