#!/usr/bin/env bash
# Issue 34: Square Attack (score-based, forward passes only) on MEnet's CE map and on the U^2-Netp peer at the same
# 160 px input and the same L-inf budget; first 16 ECSSD images, one seed. Run from a checkout of the committed code
# (/work/run_eval). (APGD on the same 16 images was cut for time: its 8-image run is in docs/robustness.md.)
set -euo pipefail
cd /work/run_eval && . /work/main/.venv/bin/activate
OUT=/work/main/docs/results/robustness
common="--data-dir /work/main/../shared/data/ECSSD --limit 16 --seeds 1 --levels 0 4 --no-progress"
/usr/bin/time -f "%e s wall" python -m robustness.evaluate $common --distortion square-linf --queries 300 \
  --output $OUT/square_linf_menet > /dev/null
/usr/bin/time -f "%e s wall" python -m robustness.evaluate $common --distortion square-linf --queries 300 \
  --predictor benchmarks.u2netp_peer:predict_native --input-size 160 --output $OUT/square_linf_u2netp > /dev/null
python -m robustness.compare --output $OUT/../compare/square_linf \
  "U^2-Netp at 160 px=$OUT/square_linf_u2netp/robustness.json" \
  "MEnet CE map=$OUT/square_linf_menet/robustness.json" > /dev/null
