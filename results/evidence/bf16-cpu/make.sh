#!/usr/bin/env bash
# Remakes the records beside this file: bf16 (precision auto on a CPU with bf16 units, in the campaign's regime:
# the compiled step) against fp32 (eager, the reference), real Fashion-MNIST, 3 epochs of the full training set,
# scored on the test set; AvgPool and the heaviest column (FlexPool + SAC + Reg + Dropout); seed 0 in both
# precisions, seed 1 in bf16 for the seed-to-seed spread. Usage: bash make.sh DATA_ROOT WORK_DIR
set -euo pipefail
data=$1 work=$2 here=$(cd "$(dirname "$0")" && pwd)
declare -A columns=([avgpool]="--pool avg" [heaviest]="--pool flex --reg 1e-3 --dropout 0.25 --sac")
run() {  # name precision seed extra flags...
  local name=$1 precision=$2 seed=$3; shift 3
  local compile=off; [ "$precision" = auto ] && compile=default
  python -m repro.train --dataset fashion_mnist --data-root "$data" --epochs 3 --seed "$seed" \
    --precision "$precision" --compile "$compile" --wandb disabled --results-dir "$work/$name" "$@"
  cp "$(ls -t "$work/$name"/runs/adhoc/fashion_mnist/*.json | head -1)" "$here/$name.json"
}
for column in avgpool heaviest; do
  run "$column-bf16-seed0" auto 0 ${columns[$column]}
  run "$column-bf16-seed1" auto 1 ${columns[$column]}
  run "$column-fp32-seed0" fp32 0 ${columns[$column]}
done
