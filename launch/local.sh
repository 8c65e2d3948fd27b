#!/usr/bin/env bash
# One host, all its devices: training and the evaluation watcher side by side.
#   usage: launch/local.sh CONFIG WORKDIR [--config.key=value ...]
#   e.g.   launch/local.sh configs/trifeatures.py:cpu workdirs/quickstart
# Training resumes if WORKDIR has checkpoints; the watcher evaluates each checkpoint once and exits
# after the final one. Uses the `python` on PATH (activate the project's virtual environment first).
set -uo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
config=$1; workdir=$2; shift 2
python=${PYTHON:-python}
mkdir -p "$workdir"

"$python" -m comm_jax.train --config="$config" --workdir="$workdir" "$@" &
train_pid=$!
"$python" -m comm_jax.evaluate --config="$config" --workdir="$workdir" "$@" > "$workdir/evaluate.log" 2>&1 &
eval_pid=$!
trap 'kill $train_pid $eval_pid 2>/dev/null' INT TERM

wait $train_pid; train_rc=$?
if [ $train_rc -ne 0 ]; then
  echo "training failed (exit $train_rc); stopping the evaluation watcher" >&2
  kill $eval_pid 2>/dev/null; wait $eval_pid 2>/dev/null
  exit $train_rc
fi
echo "training done; waiting for the evaluation watcher (log: $workdir/evaluate.log)"
wait $eval_pid; eval_rc=$?
tail -n 20 "$workdir/evaluate.log"
exit $eval_rc
