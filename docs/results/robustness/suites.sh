#!/usr/bin/env bash
# Issue 22 suites on ECSSD: ImageNet-C (15 corruptions x 5 severities, one seed, first 100 images, the paper's
# protocol, corruptions as they were before issue 33 made them faithful) for the 128 px ablation pair
# (runs/ablation_official, runs/ablation_ce from docs/results/ablation/ablation.sh), and PGD (L-inf and L2, 10 steps,
# BCE on the CE map, first 50 images) for the shipped weights and the pair. The shipped weights' and the peer's
# ImageNet-C runs are now battery.sh's (all 1000 images, size-controlled).
# Two streams: the peer on one onnxruntime thread beside the JAX runs.
cd "$(dirname "$0")/../../.." && . .venv/bin/activate
E="--data-dir ../shared/data/ECSSD --no-progress"
run() { local out=$1; shift; [ -f $out/robustness.json ] || /usr/bin/time -f "$out %e s wall" python -m robustness.evaluate "$@" $E --output $out; }
peer() {
  export PEER_THREADS=1
  PEER_INPUT_SIZE=128 run eval/abl_jpeg_input_u2netp128 --predictor benchmarks.u2netp_peer:predict --distortion jpeg \
    --limit 100 --seeds 3 --noise-at input --input-size 128
  PEER_INPUT_SIZE=128 run eval/ic_u2netp128 --predictor benchmarks.u2netp_peer:predict --distortion imagenet-c \
    --limit 100 --seeds 1 --input-size 128
}
jaxruns() {
  run eval/pgd_linf_menet --distortion pgd-linf --limit 50
  run eval/pgd_linf_official --checkpoint runs/ablation_official --distortion pgd-linf --limit 50
  run eval/pgd_linf_ce --checkpoint runs/ablation_ce --distortion pgd-linf --limit 50
  run eval/pgd_l2_menet --distortion pgd-l2 --limit 50
  run eval/ic_official --checkpoint runs/ablation_official --distortion imagenet-c --limit 100 --seeds 1
  run eval/ic_ce --checkpoint runs/ablation_ce --distortion imagenet-c --limit 100 --seeds 1
  run eval/pgd_l2_official --checkpoint runs/ablation_official --distortion pgd-l2 --limit 50
  run eval/pgd_l2_ce --checkpoint runs/ablation_ce --distortion pgd-l2 --limit 50
}
peer > runs/suites_peer.log 2>&1 &
jaxruns > runs/suites_jax.log 2>&1
wait
# Keep the results beside the others (robustness.json, table.md, curves.png), then docs/results/compare.sh.
keep() { [ -f eval/$1/robustness.json ] && mkdir -p docs/results/$2 && cp eval/$1/{robustness.json,table.md,curves.png} docs/results/$2/; }
for n in linf l2; do keep pgd_${n}_menet robustness/pgd_${n}_menet
  for l in official ce; do keep pgd_${n}_$l ablation/pgd_${n}_$l; done; done
for l in official ce u2netp128; do keep ic_$l ablation/imagenet_c_$l; done
keep abl_jpeg_input_u2netp128 ablation/jpeg_input_u2netp128
