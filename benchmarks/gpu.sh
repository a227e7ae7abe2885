#!/usr/bin/env bash
# Accelerator benchmarks in one run (< 8 minutes on an H100/H200): sampler vs transformers and the
# dual step's MFU, SmolLM2-135M-shaped, bfloat16; the rollout bench (static vs continuous batching).
# Uses the machine's own jax[cuda] + torch.
# Usage: benchmarks/gpu.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-.}}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
# JAX and torch share the GPU in this process: leave torch room
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.5}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -m benchmarks.gpu --out "$out/gpu_bench.json"
# static sampler vs continuous batching on the long-tailed synthetic workload (repirl bench rollout)
python3 -m benchmarks.rollout --reps 3 --out "$out/rollout_bench.json"
