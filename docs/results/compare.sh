#!/usr/bin/env bash
# Comparison tables and plots of docs/robustness.md (docs/results/compare/*) from the kept robustness.json files.
# A comparison whose inputs are missing is skipped with a note.
cd "$(dirname "$0")/../.." && . .venv/bin/activate
A=docs/results/ablation R=docs/results/robustness
cmp() {   # NAME RUN...
  local name=$1; shift
  for spec in "$@"; do case $spec in *=*) f=${spec#*=}; f=${f%:*}
    [ -f "$f" ] || { echo "skip $name: $f missing"; return; } ;; esac; done
  python -m robustness.compare --output docs/results/compare/$name "$@" > /dev/null && echo "docs/results/compare/$name"
}
for kind in awgn jpeg; do
  for at in original input; do
    peer128=(); [ -f $A/${kind}_${at}_u2netp128/robustness.json ] && peer128=("U^2-Netp shown 128 px=$A/${kind}_${at}_u2netp128/robustness.json")
    cmp ablation_${kind}_${at} "full loss, metric map=$A/${kind}_${at}_official/robustness.json:metric" \
      "full loss, CE map=$A/${kind}_${at}_official/robustness.json:ce" "CE-only, CE map=$A/${kind}_${at}_ce/robustness.json:ce" \
      "${peer128[@]}" "U^2-Netp at 320 px=$R/${kind}_${at}_u2netp/robustness.json"
  done
done
# ImageNet-C within the ablation (the shipped weights against the peer: robustness/battery.sh)
peer128=(); [ -f $A/imagenet_c_u2netp128/robustness.json ] && peer128=("U^2-Netp shown 128 px=$A/imagenet_c_u2netp128/robustness.json")
cmp ablation_imagenet_c "full loss, metric map=$A/imagenet_c_official/robustness.json:metric" \
  "full loss, CE map=$A/imagenet_c_official/robustness.json:ce" "CE-only, CE map=$A/imagenet_c_ce/robustness.json:ce" \
  "${peer128[@]}" --reference "full loss, CE map"
# PGD on the CE map: the shipped weights and the ablation pair
for n in linf l2; do
  cmp pgd_$n "MEnet (shipped, 160 px)=$R/pgd_${n}_menet/robustness.json" \
    "full loss (128 px)=$A/pgd_${n}_official/robustness.json" "CE-only (128 px)=$A/pgd_${n}_ce/robustness.json"
done
