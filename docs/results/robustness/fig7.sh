#!/usr/bin/env bash
# Issue 33: the paper's Fig. 7, PR curves under AWGN at random strengths (Table II's ranges), with the clean curves:
# MEnet (shipped weights; the CE map, as the paper draws, and the metric map) and the U^2-Netp peer, the paper's
# protocol (noise at each image's size); first 100 ECSSD images, 3 seeds. Run from a checkout of the committed code.
set -euo pipefail
cd /work/run_eval && . /work/main/.venv/bin/activate
OUT=/work/main/docs/results/robustness
common="--data-dir /work/main/../shared/data/ECSSD --distortion awgn --levels 0 random --limit 100 --seeds 3"
python -m robustness.evaluate $common --output $OUT/fig7_menet --no-progress > /dev/null
python -m robustness.evaluate $common --predictor benchmarks.u2netp_peer:predict --output $OUT/fig7_u2netp \
  --no-progress > /dev/null
python -m robustness.compare --output $OUT/../compare/fig7 "MEnet CE map=$OUT/fig7_menet/robustness.json:ce" \
  "MEnet metric map=$OUT/fig7_menet/robustness.json:metric" "U^2-Netp=$OUT/fig7_u2netp/robustness.json" > /dev/null
