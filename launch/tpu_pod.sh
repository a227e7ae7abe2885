#!/usr/bin/env bash
# A Cloud TPU VM slice (one host or a multi-host pod) driven by gcloud:
#
#   launch/tpu_pod.sh create --name NAME --zone ZONE --type TYPE --version RUNTIME [--spot]
#   launch/tpu_pod.sh setup  --name NAME --zone ZONE --repo GIT_URL [--ref BRANCH]
#   launch/tpu_pod.sh run    --name NAME --zone ZONE -- repirl train --config configs/F.py --workdir DIR
#   launch/tpu_pod.sh logs   --name NAME --zone ZONE [--lines N]
#   launch/tpu_pod.sh stop   --name NAME --zone ZONE [--keep]
#
# create  gcloud compute tpus tpu-vm create (TYPE e.g. v5litepod-16, v4-32; RUNTIME e.g.
#         v2-alpha-tpuv5-lite for v5e, tpu-ubuntu2204-base for v4)
# setup   on every worker: clone (or fast-forward) the repo, make .venv, pip install -e '.[tpu]';
#         idempotent: the install is skipped while setup.cfg / pyproject.toml are unchanged
# run     on every worker, in the repo's .venv, in the background (nohup) with output to the log
#         file; REPIRL_DISTRIBUTED=1 makes each process join the others via jax.distributed
# logs    last lines of the log on every worker
# stop    SIGTERM to the run on every worker (the training loop saves a checkpoint and exits),
#         then deletes the TPU VM unless --keep
#
# Options fall back to the environment: --name TPU_NAME, --zone TPU_ZONE, --type TPU_TYPE,
# --version TPU_VERSION, --project TPU_PROJECT (else gcloud's default project), --repo
# REPIRL_REPO, --ref REPIRL_REF (main), --dir REPIRL_DIR (repirl_jax, relative to the worker's
# home), --log REPIRL_LOG (repirl.log, in --dir). --dry-run prints the gcloud commands instead.
set -euo pipefail

prog=tpu_pod.sh
usage() { sed -n '2,25s/^# \{0,1\}//p' "$0"; }
die() { echo "$prog: error: $*" >&2; exit 2; }

[[ $# -gt 0 ]] || die "missing command: create | setup | run | logs | stop (--help for usage)"
cmd=$1; shift
case "$cmd" in
  -h|--help|help) usage; exit 0 ;;
  create|setup|run|logs|stop) ;;
  *) die "unknown command '$cmd': expected create | setup | run | logs | stop" ;;
esac

name=${TPU_NAME:-} zone=${TPU_ZONE:-} type=${TPU_TYPE:-} version=${TPU_VERSION:-} project=${TPU_PROJECT:-}
repo=${REPIRL_REPO:-} ref=${REPIRL_REF:-main} dir=${REPIRL_DIR:-repirl_jax} log=${REPIRL_LOG:-repirl.log}
lines=50 spot=0 keep=0 dry=0
remote_cmd=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --) shift; remote_cmd=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    --spot) spot=1; shift; continue ;;
    --keep) keep=1; shift; continue ;;
    --dry-run) dry=1; shift; continue ;;
    --name|--zone|--type|--version|--project|--repo|--ref|--dir|--log|--lines)
      [[ $# -ge 2 && -n $2 && $2 != --* ]] || die "option $1 needs a value"
      v=$2
      case "$1" in
        --name) name=$v ;; --zone) zone=$v ;; --type) type=$v ;; --version) version=$v ;;
        --project) project=$v ;; --repo) repo=$v ;; --ref) ref=$v ;; --dir) dir=$v ;;
        --log) log=$v ;; --lines) lines=$v ;;
      esac
      shift 2 ;;
    *) die "unknown option '$1' for $cmd (--help for usage)" ;;
  esac
done

[[ $cmd == run || ${#remote_cmd[@]} -eq 0 ]] || die "$cmd takes no command after '--' (only run does)"
need() {  # need VALUE --flag ENV_VAR
  [[ -n $1 ]] || die "$cmd needs $2 (or \$$3)"
}
need "$name" --name TPU_NAME
need "$zone" --zone TPU_ZONE
[[ $lines =~ ^[0-9]+$ ]] || die "--lines must be a number, got '$lines'"

gc() {  # gcloud, or its command line under --dry-run
  if ((dry)); then printf '%q ' gcloud "$@"; echo; else gcloud "$@"; fi
}
common=(--zone "$zone")
[[ -n $project ]] && common+=(--project "$project")
ssh_all() {  # the same shell command on every worker of the slice
  gc compute tpus tpu-vm ssh "$name" "${common[@]}" --worker=all --command "$1"
}
q() { printf '%q' "$1"; }
qdir=$(q "$dir")

case "$cmd" in
  create)
    need "$type" --type TPU_TYPE
    need "$version" --version TPU_VERSION
    extra=()
    ((spot)) && extra+=(--spot)
    gc compute tpus tpu-vm create "$name" "${common[@]}" --accelerator-type "$type" --version "$version" "${extra[@]}"
    ;;
  setup)
    need "$repo" --repo REPIRL_REPO
    # A stamp holding the hash of the packaging files: re-running setup after a code-only
    # change pulls the code (editable install) and skips pip.
    ssh_all "set -e
[ -d $qdir/.git ] || git clone --quiet $(q "$repo") $qdir
cd $qdir
git fetch --quiet origin $(q "$ref") && git checkout --quiet --detach FETCH_HEAD
[ -x .venv/bin/python ] || python3 -m venv .venv
want=\$(cat setup.cfg pyproject.toml | sha256sum | cut -c1-16)
if [ \"\$(cat .venv/.repirl-tpu 2>/dev/null)\" = \"\$want\" ]; then echo \"\$(hostname): already installed\"
else .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e '.[tpu]' && echo \"\$want\" > .venv/.repirl-tpu && echo \"\$(hostname): installed\"; fi"
    ;;
  run)
    [[ ${#remote_cmd[@]} -gt 0 ]] || die "run needs the command after '--', e.g. run -- repirl train --config configs/F.py --workdir DIR"
    words=""
    for w in "${remote_cmd[@]}"; do words+=" $(q "$w")"; done
    # setsid + nohup + </dev/null: the job outlives the ssh session; its pid is kept for stop.
    ssh_all "cd $qdir && if [ -f .repirl.pid ] && kill -0 \$(cat .repirl.pid) 2>/dev/null; then echo \"\$(hostname): already running (pid \$(cat .repirl.pid)); stop it first\"; exit 1; fi
set -e; . .venv/bin/activate; export REPIRL_DISTRIBUTED=1 PYTHONUNBUFFERED=1
setsid nohup$words > $(q "$log") 2>&1 < /dev/null &
echo \$! > .repirl.pid; echo \"\$(hostname): started pid \$(cat .repirl.pid), log $dir/$log\""
    ;;
  logs)
    ssh_all "cd $qdir && tail -n $lines $(q "$log")"
    ;;
  stop)
    # SIGTERM to the main process only (not its group: the verifier pool must keep working while
    # the loop finishes its step and saves a checkpoint); wait up to 10 minutes for that.
    ssh_all "cd $qdir 2>/dev/null || exit 0; if [ -f .repirl.pid ] && kill -TERM \$(cat .repirl.pid) 2>/dev/null; then for i in \$(seq 600); do kill -0 \$(cat .repirl.pid) 2>/dev/null || break; sleep 1; done; echo \"\$(hostname): stopped\"; else echo \"\$(hostname): nothing running\"; fi; rm -f .repirl.pid"
    ((keep)) || gc compute tpus tpu-vm delete "$name" "${common[@]}" --quiet
    ;;
esac
