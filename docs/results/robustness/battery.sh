#!/usr/bin/env bash
# Issue 33: the robustness battery behind docs/robustness.md's results, on all 1000 ECSSD images, every distortion at
# the size-controlled protocol (--noise-at input: the image resized to 160 px, MEnet's input, then distorted; the
# U^2-Netp peer run at 160 px on that very image, benchmarks.u2netp_peer:predict_native):
#   ImageNet-C, 15 corruptions x 5 severities, one seed: MEnet on all 1000 images, the peer on the first 200 (at
#     about 62 ms an image it would need 79 minutes for all 1000);
#   AWGN and JPEG at their default levels (the five ImageNet-C variances / qualities, and Table II's random
#   strengths, whose PR curves are the paper's Fig. 7), 3 noise seeds;
# then every comparison table and plot (docs/results/compare/*_input160*). A run whose robustness.json exists is
# kept (a crash resumes where it stopped); FORCE=1 reruns everything. About 90 minutes on the 2-core machine.
# Usage: bash docs/results/robustness/battery.sh [CHECKOUT], CHECKOUT (default: this one) the code that runs; the
# results land in this checkout's docs/results.
set -euo pipefail
HERE="$(cd "$(dirname "$0")/../../.." && pwd)"
cd "${1:-$HERE}" && . "$HERE/.venv/bin/activate"
R=$HERE/docs/results/robustness C=$HERE/docs/results/compare
DATA="--data-dir $HERE/../shared/data/ECSSD --noise-at input --no-progress"
PEER="--predictor benchmarks.u2netp_peer:predict_native --input-size 160"
run() {  # OUTPUT ARGS...: one robustness.evaluate run, its wall time on stderr
  local out=$R/$1; shift
  if [ -f "$out/robustness.json" ] && [ -z "${FORCE:-}" ]; then echo "kept $out"; return; fi
  /usr/bin/time -f "$(basename "$out"): %e s wall" python -m robustness.evaluate "$@" $DATA --output "$out" > /dev/null
}
run imagenet_c_input160_menet --distortion imagenet-c --seeds 1
run imagenet_c_input160_u2netp --distortion imagenet-c --seeds 1 --limit 200 $PEER
run awgn_input160_menet --distortion awgn
run awgn_input160_u2netp --distortion awgn $PEER
run jpeg_input160_menet --distortion jpeg
run jpeg_input160_u2netp --distortion jpeg $PEER
compare() {  # NAME ARGS...
  python -m robustness.compare --output "$C/$1" "${@:2}" > /dev/null && echo "$C/$1"
}
compare imagenet_c_input160 --common-images --reference "U^2-Netp at 160 px" \
  "U^2-Netp at 160 px=$R/imagenet_c_input160_u2netp/robustness.json" \
  "MEnet metric map=$R/imagenet_c_input160_menet/robustness.json:metric" \
  "MEnet CE map=$R/imagenet_c_input160_menet/robustness.json:ce"
for kind in awgn jpeg; do
  compare ${kind}_input160 "U^2-Netp at 160 px=$R/${kind}_input160_u2netp/robustness.json" \
    "MEnet metric map=$R/${kind}_input160_menet/robustness.json:metric" \
    "MEnet CE map=$R/${kind}_input160_menet/robustness.json:ce"
done
for kind in imagenet_c awgn jpeg; do  # MEnet's two maps, paired on all 1000 images
  compare ${kind}_input160_maps "MEnet metric map=$R/${kind}_input160_menet/robustness.json:metric" \
    "MEnet CE map=$R/${kind}_input160_menet/robustness.json:ce"
done
