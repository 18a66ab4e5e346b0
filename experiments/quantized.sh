#!/usr/bin/env bash
# Does a quantised step keep the control range? The quick-start anchors (scripts/quickstart.sh) at sentiment levels
# 0 and 1 beside the base model, 128 held-out prompts (from line 336), 64 new tokens, with the generation step on
# fp32 (exact), int8 and int4 base weights, the same prompts and random streams; scores, fluency and prompt fit are
# computed the same way for all three (exact likelihoods). Two levels on many prompts: with 32 prompts the ranges'
# 95% intervals are ±0.15, as wide as the ranges themselves. The table goes to docs/results/quantized_table.md,
# the runs to docs/results/quantized_*/ (report, summary, generations).
set -euo pipefail
cd "$(dirname "$0")/.."
P=../shared/data/styles/prompts/writing_prompts.txt
source experiments/publish.sh
trained quickstart
for q in fp32 int8 int4; do
  run="quantized_$q"
  if [ ! -f "docs/results/$run/summary.json" ]; then
    lerplm sweep --anchors anchors/quickstart --scorers scorers/quickstart --grid single:sentiment --grid base \
      --levels 2 --prompts "$P" --skip-prompts 336 --max-prompts 128 --max-new-tokens 64 --quantize "$q" \
      --out "runs/$run"
    publish "$run" "quick-start anchors, generation step in $q"
  fi
done
python experiments/quantized_table.py docs/results/quantized_{fp32,int8,int4} > docs/results/quantized_table.md
