#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: create it, set up every worker, run, and tear down.
#
#   launch/tpu_pod.sh create   NAME ZONE v5p-64          # TPU VM slice (spot: add SPOT=1)
#   launch/tpu_pod.sh setup    NAME ZONE                 # copy this repo, install on all workers
#   launch/tpu_pod.sh run      NAME ZONE configs/flextok_d18_d28_in1k.py gs://BUCKET/runs/d18_d28 [--config.x=y ...]
#   launch/tpu_pod.sh logs     NAME ZONE                 # follow worker 0
#   launch/tpu_pod.sh delete   NAME ZONE
#
# Every worker runs the same command; jax.distributed.initialize() finds the pod by itself.
# Use a gs:// workdir so that all workers write one checkpoint together.
set -euo pipefail
cmd=${1:?usage: $0 create|setup|run|logs|delete NAME ZONE ...}
name=${2:?NAME}
zone=${3:?ZONE}
shift 3
ssh_all() { gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "$1"; }
case "$cmd" in
  create)
    type=${1:?ACCELERATOR_TYPE e.g. v5p-64}
    gcloud compute tpus tpu-vm create "$name" --zone "$zone" --accelerator-type "$type" \
      --version "${TPU_SOFTWARE:-v2-alpha-tpuv5}" ${SPOT:+--spot}
    ;;
  setup)
    tar czf /tmp/flextok_jax.tgz --exclude=.git --exclude=.venv --exclude='workdir*' -C "$(dirname "$0")/.." .
    gcloud compute tpus tpu-vm scp /tmp/flextok_jax.tgz "$name":/tmp/ --zone "$zone" --worker=all
    ssh_all "mkdir -p ~/flextok_jax && tar xzf /tmp/flextok_jax.tgz -C ~/flextok_jax && cd ~/flextok_jax && \
      python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]' gcsfs"
    ;;
  run)
    config=${1:?CONFIG}
    workdir=${2:?WORKDIR}
    shift 2
    ssh_all "cd ~/flextok_jax && nohup .venv/bin/python -m flextok_jax.main --config $config --workdir $workdir $* \
      > ~/flextok_train.log 2>&1 &"
    ;;
  logs)
    gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=0 --command "tail -f ~/flextok_train.log"
    ;;
  delete)
    gcloud compute tpus tpu-vm delete "$name" --zone "$zone" --quiet
    ;;
  *)
    echo "unknown command $cmd" >&2; exit 2 ;;
esac
