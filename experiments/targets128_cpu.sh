#!/usr/bin/env bash
# Session 6, issue 6: target control with a calibration pooled over 128 prompts (80-207) and evaluated on 128 other
# prompts (208-335), targets drawn from that calibration. Session 5's open-loop miss (one-attribute targets 0.062,
# 0.60x naive) was a per-attribute offset between two 64-prompt sets of about 3 standard errors; both sides' prompt
# noise shrinks by sqrt(2) here. ~1.7 h on 2 CPU cores. Needs anchors/styles_chat, artifacts/scorers, runs/cal64
# (experiments/seeding_cpu.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
P=../shared/data/styles/prompts/writing_prompts.txt

# a second calibration sweep on the next 64 prompts, pooled with cal64's (80-143)
lerplm sweep --anchors anchors/styles_chat --grid single:all --skip-prompts 144 --max-prompts 64 --levels 6 \
  --scorers artifacts/scorers --prompts "$P" --max-new-tokens 32 --n 1 --out runs/cal64b
lerplm calibrate runs/cal64 runs/cal64b --out runs/calibration_cal128.json

# one-attribute targets: the pooled calibration's predicted scores at levels 0.15/0.5/0.85 (weight 1)
mapfile -t TARGETS < <(python experiments/target_args.py runs/calibration_cal128.json --levels 0.15 0.5 0.85)
lerplm eval-targets --anchors anchors/styles_chat --scorers artifacts/scorers --calibration runs/calibration_cal128.json \
  --prompts "$P" --skip-prompts 208 --max-prompts 128 "${TARGETS[@]}" --out runs/targets128
# two-attribute targets: level corners 0.15/0.85 of two entangled pairs, equal weights
mapfile -t TARGETS < <(python experiments/target_args.py runs/calibration_cal128.json --no-singles \
  --pair sentiment,formality --pair formality,humor)
lerplm eval-targets --anchors anchors/styles_chat --scorers artifacts/scorers --calibration runs/calibration_cal128.json \
  --prompts "$P" --skip-prompts 208 --max-prompts 128 "${TARGETS[@]}" --out runs/targets128_pairs

for r in targets128 targets128_pairs; do mkdir -p docs/results/$r && cp runs/$r/targets.{md,json,csv,png} docs/results/$r/; done
cp runs/calibration_cal128.json docs/results/
