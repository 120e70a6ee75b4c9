#!/usr/bin/env bash
# Issue 22 ablation, evaluation: the full-loss and CE-only networks (step 2000) and the peer shown 128 px images,
# first 100 ECSSD images, 3 seeds, both noise protocols. Run after runs/ablation.sh.
cd /work/main && . .venv/bin/activate
for kind in awgn jpeg; do
  for at in original input; do
    for loss in official ce; do
      out=eval/abl_${kind}_${at}_${loss}
      [ -f $out/robustness.json ] || /usr/bin/time -f "%e s wall" python -m robustness.evaluate \
        --checkpoint runs/ablation_$loss --data-dir ../shared/data/ECSSD --distortion $kind --limit 100 --seeds 3 \
        --noise-at $at --no-progress --output $out
    done
    out=eval/abl_${kind}_${at}_u2netp128
    [ $kind$at = awgninput ] && [ ! -f $out/robustness.json ] && PEER_INPUT_SIZE=128 PEER_THREADS=1 /usr/bin/time -f "%e s wall" \
      python -m robustness.evaluate --predictor benchmarks.u2netp_peer:predict --data-dir ../shared/data/ECSSD \
      --distortion $kind --limit 100 --seeds 3 --noise-at $at --input-size 128 --no-progress --output $out
  done
done
