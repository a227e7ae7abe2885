#!/bin/bash
# The issue-15 ceiling, offline on one set of samples: a trained rePIRL run's in-loop PRM against
# the oracle head (the same head form, BCE on the chain task's exact step labels), trained by the
# real dual step on rollouts of that run's policy, every scorer ranking the same held-out samples.
#   benchmarks/oracle_ceiling.sh SWEEP_ROOT [VARIANT] [OUT]
# SWEEP_ROOT: an ablation sweep's runs/ablations/<hash> (its start/ and VARIANT/seed0/final/).
# Time on the 2-core machine: sampling ~10 min; then inloop + untrained + oracle200 took 7 min (nothing
# else running), oracle600 and repirl200 about 10 and 4 more.
set -euo pipefail
R=$1; V=${2:-repirl}; O=${3:-runs/oracle_ceiling}
mkdir -p "$O"
export XLA_FLAGS=--xla_force_host_platform_device_count=1 HF_HUB_OFFLINE=1 JAX_PLATFORMS=cpu
PY=${PYTHON:-.venv/bin/python}
P="policy=$R/$V/seed0/final/policy"
[ -f "$O/test.pkl" ] || $PY -m benchmarks.prm_offline sample "$R/$V/seed0/final/policy" "$O"
run() { $PY -m benchmarks.prm_offline train "$R/start" "$O" "$@" 2>&1 | grep RESULT; }
run inloop steps=0 $P init=$R/$V/seed0/final     # the run's own PRM, as trained in the loop
run untrained steps=0 $P                          # null: the PRM at init (the start's log-likelihood)
run oracle200 steps=200 $P prm.loss=oracle
run oracle600 steps=600 $P prm.loss=oracle
run repirl200 steps=200 $P                        # rePIRL's loss on the oracle's fixed data
# the expert-likelihood PRM: the start fine-tuned on the clean expert solutions alone (no failures, no labels)
$PY -m benchmarks.sft_prm "$R/start" "$O" --steps 200,600 2>&1 | grep RESULT
