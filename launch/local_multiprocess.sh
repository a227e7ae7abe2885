#!/usr/bin/env bash
# N JAX processes on this machine, one CPU device each, joined by jax.distributed through a
# coordinator on a free localhost port: the multi-host code path (process-local batches,
# collective checkpoints, rank-0-only logging) exercised without a pod.
#
#   launch/local_multiprocess.sh N -- repirl train --config configs/tiny_cpu.py --workdir runs/mp
#
# Each rank gets JAX_PLATFORMS=cpu, REPIRL_COORDINATOR=127.0.0.1:PORT, REPIRL_NUM_PROCESSES=N and
# REPIRL_PROCESS_ID=i (read by repirl_jax.distributed.initialize_from_env), and writes its output,
# each line prefixed "[rank i] ", to $LOGDIR/proc_i.log (and to this terminal); LOGDIR defaults to
# WORKDIR/logs when the command has --workdir WORKDIR, else to logs/local_multiprocess. If one rank
# fails the others are stopped (a rank waiting in a collective would otherwise hang until the
# coordinator's timeout); the exit status is the failed rank's, 0 when all succeed.
set -euo pipefail

usage() { sed -n '2,14s/^# \{0,1\}//p' "$0"; }
die() { echo "local_multiprocess.sh: error: $*" >&2; exit 2; }

case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  "") die "missing N (number of processes); usage: local_multiprocess.sh N -- COMMAND ..." ;;
esac
n=$1; shift
[[ $n =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer, got '$n'"
[[ ${1:-} == "--" ]] && shift
[[ $# -gt 0 ]] || die "missing the command to run after '--'"

workdir=""  # the command's --workdir, if any: its logs belong with the run
args=("$@")
for ((j = 0; j < ${#args[@]}; j++)); do
  case "${args[j]}" in
    --workdir=*) workdir=${args[j]#--workdir=} ;;
    --workdir) workdir=${args[j + 1]:-} ;;
  esac
done
logdir=${LOGDIR:-${workdir:+$workdir/logs}}
logdir=${logdir:-logs/local_multiprocess}
mkdir -p "$logdir"
# A port the kernel just handed out and released: free unless something grabs it in between.
port=${REPIRL_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

pids=()
stop_all() {
  for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done
}
trap 'stop_all; exit 130' INT TERM

for ((i = 0; i < n; i++)); do
  # setsid: each rank is its own process group, so stopping it also stops the output filter
  # and anything the command spawned (verifier pools). pipefail keeps the command's exit status.
  JAX_PLATFORMS=cpu REPIRL_COORDINATOR="127.0.0.1:$port" REPIRL_NUM_PROCESSES="$n" REPIRL_PROCESS_ID="$i" \
    setsid bash -c 'set -o pipefail; rank=$1 log=$2; shift 2
      "$@" 2>&1 | awk -v r="$rank" "{ print \"[rank \" r \"] \" \$0; fflush() }" | tee "$log"' \
    rank "$i" "$logdir/proc_$i.log" "$@" &
  pids+=($!)
done

declare -A live  # pid -> rank, of the ranks still running
for ((i = 0; i < n; i++)); do live[${pids[i]}]=$i; done
while ((${#live[@]} > 0)); do
  rc=0
  wait -n -p done_pid "${!live[@]}" || rc=$?
  rank=${live[$done_pid]}
  unset "live[$done_pid]"
  if ((rc != 0)); then
    stop_all
    wait || true
    echo "local_multiprocess.sh: rank $rank exited with status $rc; stopped the other ranks (logs: $logdir/proc_*.log)" >&2
    exit "$rc"
  fi
done
