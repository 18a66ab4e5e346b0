#!/usr/bin/env bash
# Issue 3: does the anchors' training format or length widen control? (docs/results/README.md, "Anchor training")
# Every variant is swept on the same 64 prompts (80-143), 6 levels, seed 0: the design of runs/calib64,
# whose plain-text 60-step anchors (anchors/styles) are the baseline. About 2.5 h on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
P=../shared/data/styles/prompts/writing_prompts.txt
SWEEP=(--scorers artifacts/scorers --prompts "$P" --skip-prompts 80 --max-prompts 64 --levels 6 --n 1 --max-new-tokens 32)
# baseline: plain text, 60 steps (the anchors of docs/anchors.md)
lerplm sweep --anchors anchors/styles --grid single:sentiment,politeness,formality,humor "${SWEEP[@]}" --out runs/calib64
# formality: plain text for 3x the steps; chat format at the same 60 steps
lerplm train --config examples/styles.toml --only formality --text-format plain --max-steps 180 --out anchors/formality180
lerplm train --config examples/styles.toml --only formality --text-format chat --out anchors/formality_chat60
for v in formality180 formality_chat60; do
  lerplm sweep --anchors anchors/$v --grid single:formality "${SWEEP[@]}" --out runs/f_$v
done
# all five attributes in chat format, 60 steps (formality's pair is reused: same settings)
mkdir -p anchors/styles_chat && cp -r anchors/formality_chat60/formality.* anchors/styles_chat/
lerplm train --config examples/styles.toml --text-format chat --out anchors/styles_chat
lerplm sweep --anchors anchors/styles_chat --grid single:all "${SWEEP[@]}" --config examples/styles.toml \
  --heldout-per-endpoint 10 --out runs/chat64
lerplm report runs/chat64 --title "Chat-format anchors: single-attribute sweeps (64 prompts x 6 levels)"
