#!/usr/bin/env bash
# Remakes the records beside this file: Table 1's FlexPool (no SAC, no regulariser) at batch 128 on 4 epochs of
# 2,048 real Fashion-MNIST images (the smoke profile's size), scored on 1,024 test images, seeds 0-4, at the paper's
# lr 0.1, at lr 0.1 with the FlexPool weights at lr x 0.02, and at the paper's ratio of lr to batch (0.1 x 128/1000);
# AvgPool at lr 0.1 for reference. One torch thread per run. Usage: bash make.sh DATA_ROOT WORK_DIR
set -euo pipefail
data=$1 work=$2 here=$(cd "$(dirname "$0")" && pwd)
export OMP_NUM_THREADS=1
run() {  # name seed extra flags...
  local name=$1-seed$2 seed=$2; shift 2
  python -m repro.train --dataset fashion_mnist --data-root "$data" --train-subset 2048 --test-subset 1024 \
    --epochs 4 --batch-size 128 --seed "$seed" --wandb disabled --results-dir "$work/$name" "$@"
  cp "$(ls -t "$work/$name"/runs/adhoc/fashion_mnist/*.json | head -1)" "$here/$name.json"
}
for seed in 0 1 2 3 4; do run flex-lr0.1 "$seed" --pool flex --lr 0.1; done
for seed in 0 1 2 3 4; do run flex-lr0.1-scale0.02 "$seed" --pool flex --lr 0.1 --flex-lr-scale 0.02; done
for seed in 0 1 2 3 4; do run flex-lr0.0128 "$seed" --pool flex --lr 0.0128; done
for seed in 0 1 2 3 4; do run avg-lr0.1 "$seed" --pool avg --lr 0.1; done
