#!/usr/bin/env bash
# Issue 35: the ablation pair (full loss, CE-only; 128 px, width 8, 2000 steps of 8 on DUTS-TR-192, seed 0) trained
# without input noise and with Gaussian input noise of std 64 (0..255 scale, Cohen et al.'s sigma 0.25), then certified
# by randomized smoothing at sigma 64 (certify.sh). Run from a checkout of the committed trainer (/work/run_head) so
# edits in the working tree cannot touch it. Without noise this is the committed ablation run again (results/ablation).
set -euo pipefail
cd /work/run_head && . /work/main/.venv/bin/activate
for noise in 0 64; do
  for loss in official ce; do
    /usr/bin/time -f "%e s wall" python -m menet_jax.train --config demo --workdir /work/main/runs/noise${noise}_$loss \
      --data-dir /work/main/../shared/data/DUTS-TR-192 --set loss=$loss --set image_size=128 --set width=8 \
      --set batch_size=8 --set learning_rate=0.05 --set lr_boundaries=1500 --set weight_decay=5e-4 --set val_size=211 \
      --set eval_every=500 --set checkpoint_every=250 --set log_every=50 --set keep_checkpoints=3 \
      --set input_noise=$noise --steps 2000 --no-progress
  done
done
