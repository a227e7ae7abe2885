"""The demo (`make demo`): imitation warm-up on short arithmetic chains (mod 10), then plain outcome
RLOO and rePIRL from that same start on longer chains, a held-out report with bootstrap CIs.
About 15 minutes on a 2-core CPU.

    repirl demo --config configs/demo.py --workdir runs/demo [--set rl.train.steps=10]

The values live in repirl_jax/demo.py (`default_config`), so `repirl demo` without --config
runs exactly this.
"""
from repirl_jax.demo import default_config as config  # noqa: F401
