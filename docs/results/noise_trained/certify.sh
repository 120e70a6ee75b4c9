#!/usr/bin/env bash
# Issue 35: the four networks of train.sh certified by randomized smoothing at sigma 64 (0..255 scale) on the first
# 40 ECSSD images (CE map; the full loss's metric map too), then the shipped weights and the U^2-Netp peer (run at
# 160 px, as given) on the first 100. Run from the committed checkout (/work/run_head) that trained them.
set -euo pipefail
cd /work/run_head && . /work/main/.venv/bin/activate
OUT=/work/main/docs/results
ECSSD=/work/main/../shared/data/ECSSD
for noise in 0 64; do
  for loss in official ce; do
    maps="ce"; [ $loss = official ] && maps="ce metric"
    for map in $maps; do
      /usr/bin/time -f "%e s wall" python -m robustness.certify --checkpoint /work/main/runs/noise${noise}_$loss \
        --map $map --sigma 64 --data-dir $ECSSD --limit 40 --output $OUT/noise_trained/certify_noise${noise}_${loss}_$map \
        --no-progress > /dev/null
    done
  done
done
/usr/bin/time -f "%e s wall" python -m robustness.certify --data-dir $ECSSD --limit 100 \
  --output $OUT/certify/menet100 --no-progress > /dev/null
/usr/bin/time -f "%e s wall" python -m robustness.certify --predictor benchmarks.u2netp_peer:predict_native --input-size 160 \
  --data-dir $ECSSD --limit 100 --output $OUT/certify/u2netp100 --no-progress > /dev/null
