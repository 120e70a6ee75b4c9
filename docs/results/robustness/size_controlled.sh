#!/usr/bin/env bash
# Issue 33: the size-controlled comparison. MEnet (shipped weights, 160 px) and the U^2-Netp peer run at 160 px on
# the very image MEnet sees (benchmarks.u2netp_peer:predict_native), AWGN and JPEG added at that input size; first
# 100 ECSSD images, 3 noise seeds; per-image scores for the bootstrap intervals. Then the paired comparisons.
# Run from a checkout of the committed code (/work/run_eval).
set -euo pipefail
cd /work/run_eval && . /work/main/.venv/bin/activate
OUT=/work/main/docs/results/robustness
ECSSD=/work/main/../shared/data/ECSSD
for kind in awgn jpeg; do
  /usr/bin/time -f "%e s wall" python -m robustness.evaluate --data-dir $ECSSD --distortion $kind --limit 100 \
    --seeds 3 --noise-at input --output $OUT/${kind}_input160_menet --no-progress > /dev/null
  /usr/bin/time -f "%e s wall" python -m robustness.evaluate --predictor benchmarks.u2netp_peer:predict_native \
    --input-size 160 --data-dir $ECSSD --distortion $kind --limit 100 --seeds 3 --noise-at input \
    --output $OUT/${kind}_input160_u2netp --no-progress > /dev/null
  python -m robustness.compare --output $OUT/../compare/${kind}_input160 \
    "U^2-Netp at 160 px=$OUT/${kind}_input160_u2netp/robustness.json" \
    "MEnet metric map=$OUT/${kind}_input160_menet/robustness.json:metric" \
    "MEnet CE map=$OUT/${kind}_input160_menet/robustness.json:ce" > /dev/null
done
