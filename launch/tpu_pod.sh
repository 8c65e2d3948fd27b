#!/usr/bin/env bash
# TPU pod slice: install on every worker, then train on all workers at once. JAX finds the
# coordinator and process ids itself on TPU VMs (jax.distributed auto-detection).
#   launch/tpu_pod.sh TPU_NAME ZONE install
#   launch/tpu_pod.sh TPU_NAME ZONE train CONFIG WORKDIR [--config.key=value ...]
#   launch/tpu_pod.sh TPU_NAME ZONE eval  CONFIG WORKDIR [--config.key=value ...]
# WORKDIR must be storage every worker sees (a gs:// bucket or a shared filesystem); the TFDS data
# dir too (--config.data.data_dir=gs://...).
set -euo pipefail
tpu=$1; zone=$2; action=$3; shift 3
repo=${COMM_JAX_REPO:-$HOME/comm-jax}
ssh_all() { gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="$1"; }
ssh_one() { gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=0 --command="$1"; }

case "$action" in
  install)
    # Copy the repository to every worker first, e.g.:
    #   gcloud compute tpus tpu-vm scp --recurse . "$tpu":~/comm-jax --zone="$zone" --worker=all
    ssh_all "cd $repo && python3 -m venv .venv && .venv/bin/pip install -q -e '.[tpu]'"
    ;;
  train)
    config=$1; workdir=$2; shift 2
    ssh_all "cd $repo && .venv/bin/python -m comm_jax.train --config='$config' --workdir='$workdir' $*"
    ;;
  eval)
    # The watcher runs on worker 0 of a separate (small) slice or VM; on the training slice it would
    # compete for the same chips.
    config=$1; workdir=$2; shift 2
    ssh_one "cd $repo && .venv/bin/python -m comm_jax.evaluate --config='$config' --workdir='$workdir' $*"
    ;;
  *) echo "unknown action $action: install, train or eval" >&2; exit 2 ;;
esac
