#!/usr/bin/env bash
# Issue 6's evaluation on the embedded default, at the size 2 CPU cores allow (writes docs/results/targets*/).
# Needs anchors/styles, artifacts/scorers and runs/single (experiments/paper_cpu.sh).
# Prompts 0-15 calibrated the first model (runs/single); 16-79 are the evaluation's held-out prompts;
# 80-143 feed the larger calibration sweep. No prompt is used twice.
set -euo pipefail
cd "$(dirname "$0")/.."
PROMPTS=../shared/data/styles/prompts/writing_prompts.txt
PAIRS=(--pair sentiment,formality --pair sentiment,humor --pair formality,humor)

# 1. calibration from the 16-prompt single sweep; targets inside its reach; calibrated vs naive
lerplm calibrate runs/single --out runs/calibration_single.json
lerplm eval-targets --anchors anchors/styles --scorers artifacts/scorers --calibration runs/calibration_single.json \
  --prompts "$PROMPTS" --skip-prompts 16 --max-prompts 64 "${PAIRS[@]}" --out runs/targets

# 2. a larger calibration sweep on 64 other prompts (6 levels of each attribute the anchors move)
lerplm sweep --anchors anchors/styles --scorers artifacts/scorers --grid single:sentiment,politeness,formality,humor \
  --levels 6 --prompts "$PROMPTS" --skip-prompts 80 --max-prompts 64 --out runs/calib64
lerplm calibrate runs/single runs/calib64 --out runs/calibration_80.json

# 3. the same targets, solved with the larger calibration; naive points are identical, so they are reused
mkdir -p runs/targets80/points
cp runs/targets/sweep.json runs/targets80/
cp runs/targets/points/target-naive-*.csv runs/targets80/points/
TARGETS=()
while IFS= read -r t; do TARGETS+=(--target "$t"); done < <(python -c "
import pandas as pd; print('\n'.join(dict.fromkeys(pd.read_csv('runs/targets/targets.csv')['targets'])))")
lerplm eval-targets --anchors anchors/styles --scorers artifacts/scorers --calibration runs/calibration_80.json \
  --prompts "$PROMPTS" --skip-prompts 16 --max-prompts 64 "${TARGETS[@]}" --out runs/targets80

mkdir -p docs/results/targets docs/results/targets80
for r in targets targets80; do cp runs/$r/targets.{md,json,csv,png} docs/results/$r/; done
cp runs/calibration_single.json runs/calibration_80.json docs/results/
