#!/usr/bin/env bash
# Issue 34: the ablation pair (full loss, CE-only; 128 px, width 8, 2000 steps of 8 on DUTS-TR-192) with training
# seeds 1 and 2, beside seed 0 (ablation.sh; runs/noise0_* of docs/results/noise_trained/train.sh are the same runs).
# The seed sets the initial weights, the data order and the hard-mining draws. About 16 min per run alone on the
# 2-core machine. Usage: bash docs/results/ablation/seeds.sh [CHECKOUT] [SEEDS...], CHECKOUT (default: this one) the
# code that trains (a frozen copy, so edits cannot touch a run); runs land in this checkout's runs/, the training
# records (config, metrics, curves) in docs/results/ablation/train_<loss>_seed<seed>.
set -euo pipefail
HERE="$(cd "$(dirname "$0")/../../.." && pwd)"
cd "${1:-$HERE}" && . "$HERE/.venv/bin/activate"
shift || true
for seed in ${@:-1 2}; do
  for loss in official ce; do
    run=$HERE/runs/ablation_${loss}_seed$seed
    /usr/bin/time -f "$loss seed $seed: %e s wall" python -m menet_jax.train --config demo --workdir "$run" \
      --data-dir "$HERE/../shared/data/DUTS-TR-192" --set loss=$loss --set image_size=128 --set width=8 \
      --set batch_size=8 --set learning_rate=0.05 --set lr_boundaries=1500 --set weight_decay=5e-4 --set val_size=211 \
      --set eval_every=500 --set checkpoint_every=250 --set log_every=50 --set keep_checkpoints=3 --set seed=$seed \
      --steps 2000 --no-progress
    mkdir -p "$HERE/docs/results/ablation/train_${loss}_seed$seed"
    cp "$run"/{config.json,metrics.jsonl,curves.png} "$HERE/docs/results/ablation/train_${loss}_seed$seed/"
  done
done
