#!/usr/bin/env bash
# One NVIDIA GPU: makes .venv (once), installs the project and JAX's CUDA 12 build at the JAX
# version pinned in setup.cfg, then runs the given repirl command in that venv.
#
#   launch/gpu.sh repirl train --config configs/qwen25_3b_math.py --workdir runs/q3b
#   launch/gpu.sh repirl plan --config configs/qwen25_3b_math.py --devices 1 --hbm-gb 80
#
# VENV (default .venv) picks the venv; PYTHON (default python3) the interpreter that makes it.
# The install is skipped while setup.cfg / pyproject.toml are unchanged (a stamp in the venv).
# JAX_PLATFORMS defaults to cuda, so a broken CUDA install fails at start instead of silently
# training on the CPU. The command runs from the repository root.
set -euo pipefail

die() { echo "gpu.sh: error: $*" >&2; exit 2; }
case "${1:-}" in
  -h|--help) sed -n '2,13s/^# \{0,1\}//p' "$0"; exit 0 ;;
  "") die "missing the command to run, e.g. launch/gpu.sh repirl train --config configs/F.py --workdir DIR" ;;
  --) shift; [[ $# -gt 0 ]] || die "missing the command to run after '--'" ;;
esac

cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
# The CUDA build must match the jax/jaxlib pin exactly, so read it rather than repeat it.
jax_version=$(sed -n 's/^[[:space:]]*jax==\([0-9.]*\)[[:space:]]*$/\1/p' setup.cfg | head -1)
[[ -n $jax_version ]] || die "setup.cfg pins no jax==VERSION"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  || echo "gpu.sh: warning: nvidia-smi not found; is this a GPU machine?" >&2

[[ -x $venv/bin/python ]] || "${PYTHON:-python3}" -m venv "$venv"
venv=$(cd "$venv" && pwd)
want="$(cat setup.cfg pyproject.toml | sha256sum | cut -c1-16) jax[cuda12]==$jax_version"
if [[ "$(cat "$venv/.repirl-gpu" 2>/dev/null)" != "$want" ]]; then
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -e . "jax[cuda12]==$jax_version"
  echo "$want" > "$venv/.repirl-gpu"
fi

export PATH="$venv/bin:$PATH" JAX_PLATFORMS=${JAX_PLATFORMS:-cuda}
exec "$@"
