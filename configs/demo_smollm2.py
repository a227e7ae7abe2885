"""The demo on a real LM: the packaged SmolLM2-135M-Instruct, fine-tuned by imitation on 1-3-step
integer chains in words ("Start with 12. Add 16, then multiply by 3. What is the final number?"),
then plain outcome RLOO and rePIRL from that same start on 3-4-step chains, where its greedy
accuracy is 20-60%; held-out report with the PRM against the exact step labels.

    repirl demo --config configs/demo_smollm2.py --workdir runs/demo_smollm2 [--set rl.train.steps=N]

Why this task (measured, README "A real LM"): zero-shot, SmolLM2-135M-Instruct answers 5% of
1-step chains (it writes lists of unrelated operations) and 0 of 9 gsm_symbolic prompts; after
150 imitation steps of batch 8 its held-out greedy accuracy is 0.92 / 0.73 / 0.46 / 0.20 / 0.04
on 1-5-step chains. The expert lines ("12 + 16 = 28") are what it then writes, so
`data.chain.step_labels` labels its steps exactly.

CPU cost (2 cores, measured, README "A real LM"): the warm-up ~10 s/step (150 steps 25.6 min); RL median
s/step (dual step + rollout) RLOO 36.5, rePIRL 52.5 (100 steps ~62 / ~88 min; ~83 s/step with the PRM trunk
trained). A 3-step rePIRL run peaked at 15.4 GB resident (23.5 GB with the trunk trained, when the evaluation
after it was once OOM-killed with the test suite alongside): on a 24 GB machine run little beside it.
"""
from repirl_jax.config import DataConfig, LoopConfig, OptimConfig, PolicyConfig, PRMConfig, TrainConfig
from repirl_jax.demo import DemoConfig, WarmupConfig


def config() -> DemoConfig:
    chain = DataConfig(task="chain", min_steps=3, max_steps=4, modulus=0, style="words", instruction=True,
                       n_train=2000, n_test=100, seed=1, prompts_per_step=4, samples=4, experts=1, oversample=2,
                       max_prompt_len=128, max_new_tokens=64)
    return DemoConfig(
        warmup=WarmupConfig(init="smollm2", min_steps=1, max_steps=3, n_train=4000, steps=150, batch=8, length=128,
                            lr=5e-5, lr_warmup=20),
        rl=TrainConfig(
            data=chain,
            # the demo's algorithm (repirl_jax/demo.py: the PRM locates a failed rollout's failing step, which
            # alone takes its outcome advantage; no process reward) at a pretrained model's learning rates.
            # The PRM is a probe on a frozen trunk (trunk_lr_scale 0: no backward pass through it; rePIRL
            # 52.5 s/step vs RLOO's 36.5, was ~83): c log p_trunk + w . h + b with (w, b, c) trained at
            # 1e-4. At PRM lr 1e-6 (every parameter, 50 steps) the head did not move: ranking 0.705 vs 0.732
            # untrained (README "A real LM").
            prm=PRMConfig(form="head_logprob", logprob_init=1.0, score="sum", trunk_lr_scale=0.0,
                          optim=OptimConfig(lr=1e-4, grad_clip=10.0)),
            # policy lr 1e-5: at 3e-6 neither RLOO nor rePIRL moved the rollout accuracy in 50 steps
            policy=PolicyConfig(alpha_p=0.0, process_adv="last", credit="prm_step", logit_chunk=64,
                                optim=OptimConfig(lr=1e-5, grad_clip=1.0)),
            train=LoopConfig(steps=100, checkpoint_every=20, verify_workers=2)),
        eval_samples=8)

