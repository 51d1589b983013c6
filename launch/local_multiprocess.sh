#!/usr/bin/env bash
# Run N cooperating processes of flextok_jax.main on this machine (jax.distributed over
# 127.0.0.1), each with its own share of the CPU devices. For testing multi-host code paths.
#
#   launch/local_multiprocess.sh 2 configs/tiny_cpu.py workdir/mp --config.train.total_steps=20
#
# Environment: PORT (default 12355), DEVICES_PER_PROCESS (default 2), PYTHON (default .venv/bin/python).
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: $0 NUM_PROCESSES CONFIG WORKDIR [--config.x=y ...]" >&2; exit 2; }
n=$1 config=$2 workdir=$3; shift 3
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
port=${PORT:-12355}
per=${DEVICES_PER_PROCESS:-2}
mkdir -p "$workdir"
pids=()
for ((i = 0; i < n; i++)); do
  JAX_PLATFORMS=cpu \
  XLA_FLAGS="--xla_force_host_platform_device_count=$per" \
  JAX_COORDINATOR_ADDRESS="127.0.0.1:$port" FLEXTOK_NUM_PROCESSES=$n FLEXTOK_PROCESS_ID=$i \
    "$PY" -m flextok_jax.main --config "$config" --workdir "$workdir" "$@" \
    >"$workdir/process_$i.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "process $i failed; its log:" >&2
    tail -n 30 "$workdir/process_$i.log" >&2
    status=1
  fi
done
[ $status = 0 ] && echo "all $n processes finished; logs in $workdir/process_*.log"
exit $status
