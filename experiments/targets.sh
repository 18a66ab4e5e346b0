#!/usr/bin/env bash
# Target control on the example anchor set: a calibration pooled over 128 prompts (400-527), evaluated on 96 other
# prompts (240-335), one-attribute targets at the calibration's predicted scores for levels 0.15/0.5/0.85 and
# two-attribute targets at level corners 0.15/0.85 of two entangled pairs. Writes docs/results/targets{,_pairs}/
# (with every generation: generations.csv.gz) and docs/results/calibration.json. Needs experiments/paper.sh's
# anchors, scorers and runs/single (~45 min more on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
P=../shared/data/styles/prompts/writing_prompts.txt
SET=anchors/styles
SCORERS=scorers/styles
CAL=runs/calibration.json

# runs/single covers prompts 400-463; a second 6-level sweep on 464-527 completes the calibration's 128
lerplm sweep --anchors "$SET" --scorers "$SCORERS" --prompts "$P" --max-new-tokens 32 --grid single:all --levels 6 \
  --skip-prompts 464 --max-prompts 64 --out runs/calibration_b
lerplm calibrate runs/single runs/calibration_b --out "$CAL"

EVAL=(--anchors "$SET" --scorers "$SCORERS" --calibration "$CAL" --prompts "$P" --skip-prompts 240 --max-prompts 96)
mapfile -t TARGETS < <(python experiments/target_args.py "$CAL" --levels 0.15 0.5 0.85)
lerplm eval-targets "${EVAL[@]}" "${TARGETS[@]}" --out runs/targets
mapfile -t TARGETS < <(python experiments/target_args.py "$CAL" --no-singles --pair sentiment,formality \
  --pair formality,humor)
lerplm eval-targets "${EVAL[@]}" "${TARGETS[@]}" --out runs/targets_pairs

for r in targets targets_pairs; do
  mkdir -p "docs/results/$r" && cp runs/$r/{targets.{md,json,csv,png},generations.csv.gz} "docs/results/$r/"
done
cp "$CAL" docs/results/calibration.json
