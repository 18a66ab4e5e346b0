#!/usr/bin/env bash
# The paper's sweeps at the size 2 CPU cores allow in a session (the paper: 1000 prompts x 3 samples).
# Writes docs/results/. Needs anchors/styles (lerplm train --config examples/styles.toml --text-format plain --out anchors/styles: the plain-text anchors of these results).
set -euo pipefail
cd "$(dirname "$0")/.."
PROMPTS=../shared/data/styles/prompts/writing_prompts.txt
[ -d artifacts/scorers ] || lerplm scorers train --config examples/styles.toml --out artifacts/scorers
lerplm sweep --anchors anchors/styles --scorers artifacts/scorers --grid single:all \
  --prompts "$PROMPTS" --max-prompts "${SINGLE_PROMPTS:-24}" --n 1 --max-new-tokens 32 \
  --config examples/styles.toml --heldout-per-endpoint 10 --out runs/single
lerplm report runs/single --title "Single-attribute sweeps on the embedded default (CPU run)"
lerplm sweep --anchors anchors/styles --scorers artifacts/scorers --grid five:b=0.05,0.15,0.2 \
  --prompts "$PROMPTS" --max-prompts "${FIVE_PROMPTS:-8}" --n 1 --max-new-tokens 32 --out runs/five
lerplm report runs/five --title "Five-attribute design on the embedded default (CPU run)"
mkdir -p docs/results/single docs/results/five
cp runs/single/report.md runs/single/summary.json runs/single/*.png docs/results/single/
cp runs/five/report.md runs/five/summary.json runs/five/*.png docs/results/five/
cp artifacts/scorers/scorers.json docs/results/scorers.json
