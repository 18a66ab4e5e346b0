#!/usr/bin/env bash
# Session 9, issue 3: the one anchor set with politeness trained 720 steps (examples/styles.toml; the others as in
# anchors/chat_mixed360), assembled from adapters already measured, and the paper's grids on it. As in set360.sh:
# `lerplm train` trains nothing (it checks each adapter against the config and writes the manifest), levels 0 and
# 1 generated on the set are checked byte-identical to the runs whose points are reused, and only what is new is
# generated: the five-attribute design (every point of it carries politeness at weight b). Needs
# experiments/set360.sh's and experiments/pol720.sh's runs. ~40 min on 2 CPU cores; run nothing beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/sweep_settings.sh   # P (the prompts file), SWEEP (the shared sweep settings)
SET=anchors/chat_mixed720

mkdir -p $SET
for a in sentiment.negative sentiment.positive formality.informal formality.formal humor.not_humorous humor.humorous \
         simplicity.complex simplicity.simple; do
  [ -d $SET/$a ] || cp -r anchors/chat_mixed360/$a $SET/
done
for a in politeness.impolite politeness.polite; do [ -d $SET/$a ] || cp -r anchors/pol720/$a $SET/; done
lerplm train --config examples/styles.toml --out $SET   # trains nothing: every anchor is there

check_reuse $SET sentiment runs/mixed360 runs/set720_check_sent
check_reuse $SET politeness runs/pol720 runs/set720_check_pol

# single-attribute sweeps: every point reused (64 prompts 80-143 x 11 levels; politeness and simplicity also on
# prompts 160-223 x 6 levels); `lerplm sweep` finds nothing missing and writes the summary
python experiments/reuse_points.py compose runs/mixed720 $SET 'runs/mixed360:single-sentiment-*' \
  'runs/mixed360:single-formality-*' 'runs/mixed360:single-humor-*' 'runs/mixed360:single-simplicity-*' \
  'runs/pol720:single-politeness-*'
lerplm sweep --anchors $SET --grid single:all --skip-prompts 80 --max-prompts 64 --levels 11 "${SWEEP[@]}" --out runs/mixed720
lerplm report runs/mixed720 --title "The anchor set of examples/styles.toml (politeness 720 steps, simplicity 360, others 60): single-attribute sweeps (64 prompts x 11 levels)"
python experiments/reuse_points.py compose runs/mixed720_b $SET 'runs/mixed360_b:single-simplicity-*' 'runs/pol720_b:single-politeness-*'
lerplm sweep --anchors $SET --grid single:politeness,simplicity --skip-prompts 160 --max-prompts 64 --levels 6 "${SWEEP[@]}" --out runs/mixed720_b
lerplm report runs/mixed720_b --title "The anchor set of examples/styles.toml: politeness and simplicity on 64 other prompts (160-223 x 6 levels)"
python experiments/pool_ranges.py runs/mixed720 runs/mixed720_b

# the five-attribute design, b = 0.05, 0.15, 0.2 (16 prompts 144-159 x 6 levels x 5 attributes x 3 b; ~25 min)
lerplm sweep --anchors $SET --grid five:b=0.05,0.15,0.2 --skip-prompts 144 --max-prompts 16 --levels 6 "${SWEEP[@]}" --out runs/five_mixed720
lerplm report runs/five_mixed720 --title "The anchor set of examples/styles.toml: five-attribute design (16 prompts x 6 levels x 3 b)"
for r in mixed720 mixed720_b five_mixed720; do mkdir -p docs/results/$r && cp runs/$r/{report.md,summary.json,*.png} docs/results/$r/; done
python experiments/five_vs_single.py runs/mixed720 runs/five_mixed720

# docs/anchors.md: the set's training losses and sample generations at levels 0, 0.5, 1 (~2 min)
python experiments/anchor_report.py --anchors $SET --out docs/anchors.md \
  --trained-with "lerplm train --config examples/styles.toml --text-format chat --max-steps 60 --out anchors/styles_chat" \
  --trained-with "lerplm train --config examples/styles.toml --only simplicity --max-steps 360 --out anchors/simp360" \
  --trained-with "lerplm train --config examples/styles.toml --only politeness --max-steps 720 --out anchors/pol720" \
  --trained-with "bash experiments/set720.sh   # assembles $SET from the three (lerplm train trains nothing)"
