"""The packaged SmolLM2-135M-Instruct as policy and PRM (head form: its own trunk copy plus a
zero-initialised scalar head) on reasoning-gym's gsm_symbolic, whose step-by-step solutions are
the expert trajectories. Runs on a CPU (slowly: about a minute per step) or any accelerator.

    repirl train --config configs/smollm2_gsm.py --workdir runs/smollm2_gsm [--set train.steps=2]
"""
from repirl_jax.config import (DataConfig, LoopConfig, ModelSource, OptimConfig, PolicyConfig, PRMConfig,
                               TrainConfig)


def config() -> TrainConfig:
    return TrainConfig(
        model=ModelSource(policy="smollm2", remat="full"),
        data=DataConfig(task="gsm_symbolic", n_train=2000, n_test=64, prompts_per_step=4, samples=4, experts=1,
                        oversample=2, max_prompt_len=256, max_new_tokens=192),
        prm=PRMConfig(microbatches=2, optim=OptimConfig(lr=1e-6, grad_clip=10.0)),
        policy=PolicyConfig(alpha_p=0.1, microbatches=2, logit_chunk=64, optim=OptimConfig(lr=1e-6, grad_clip=1.0)),
        train=LoopConfig(steps=200, eval_every=50, checkpoint_every=10),
    )
