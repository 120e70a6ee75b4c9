#!/usr/bin/env bash
# Issue 22 ablation: the full loss and the CE-only loss, identical otherwise (seed, data, schedule, 128 px, width 8).
# Run from a checkout of the committed trainer (/work/run_head) so edits in the working tree cannot touch it.
cd /work/run_head && . /work/main/.venv/bin/activate
for loss in official ce; do
  /usr/bin/time -f "%e s wall" python -m menet_jax.train --config demo --workdir /work/main/runs/ablation_$loss \
    --data-dir /work/main/../shared/data/DUTS-TR-192 --set loss=$loss --set image_size=128 --set width=8 \
    --set batch_size=8 --set learning_rate=0.05 --set lr_boundaries=1500 --set weight_decay=5e-4 --set val_size=211 \
    --set eval_every=500 --set checkpoint_every=250 --set log_every=50 --set keep_checkpoints=3 --steps 2000 --no-progress
done
