#!/usr/bin/env bash
# Session 5: the measurements redone after the sampling fix (a random stream per prompt instead of one
# stream shared by every prompt; docs/results/README.md, "A sampling flaw found and fixed"). ~2.5 h on 2 CPU cores.
# Needs anchors/styles_chat and anchors/chat180 (experiments/chat_anchors_cpu.sh, chat_followup_cpu.sh) and
# artifacts/scorers.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/sweep_settings.sh   # P (the prompts file), SWEEP (the shared sweep settings)

# Issue 3: single-attribute sweeps of the chat anchors (prompts 80-143, as chat64 before the fix)
lerplm sweep --anchors anchors/styles_chat --grid single:all --skip-prompts 80 --max-prompts 64 --levels 6 "${SWEEP[@]}" --out runs/cal64
lerplm report runs/cal64 --title "Chat-format anchors, per-prompt seeding: single-attribute sweeps (64 prompts x 6 levels)"
# the same point under another seed (compare with runs/cal64's single-humor-0.6 and single-formality-0.6)
python experiments/seed_check.py p80_s1:80:1

# Issue 6: calibrate on runs/cal64, evaluate on prompts 16-79 with the same targets as session 4
# (calibration_chat64's predicted scores at levels 0.15/0.5/0.85 and two pairs' level corners), three methods
lerplm calibrate runs/cal64 --out runs/calibration_cal64.json
mapfile -t TARGETS < <(python experiments/target_args.py docs/results/calibration_chat64.json --levels 0.15 0.5 0.85 \
  --pair sentiment,formality --pair formality,humor)
lerplm eval-targets --anchors anchors/styles_chat --scorers artifacts/scorers --calibration runs/calibration_cal64.json \
  --prompts "$P" --skip-prompts 16 --max-prompts 64 "${TARGETS[@]}" --refine --out runs/targets_v2
# session 4's pair targets lie mostly outside the corrected calibration's reach: pairs again, from runs/calibration_cal64
# (predicted scores at the level corners 0.15/0.85 of each pair, equal weights)
mapfile -t TARGETS < <(python experiments/target_args.py runs/calibration_cal64.json --no-singles \
  --pair sentiment,formality --pair formality,humor)
lerplm eval-targets --anchors anchors/styles_chat --scorers artifacts/scorers --calibration runs/calibration_cal64.json \
  --prompts "$P" --skip-prompts 16 --max-prompts 64 "${TARGETS[@]}" --refine --out runs/targets_v2_pairs

# Issue 3: politeness and simplicity at 180 steps, and the five-attribute design (prompts 144-159)
lerplm sweep --anchors anchors/chat180 --grid single:politeness,simplicity --skip-prompts 80 --max-prompts 64 --levels 6 \
  "${SWEEP[@]}" --out runs/ps180_v2
lerplm report runs/ps180_v2 --title "Chat anchors, 180 steps, per-prompt seeding: politeness and simplicity (64 prompts x 6 levels)"
# session 5 ran b=0.05 only (--grid five:b=0.05; the session's CPU time ran out); this is the full design
lerplm sweep --anchors anchors/styles_chat --grid five:b=0.05,0.15,0.2 --skip-prompts 144 --max-prompts 16 --levels 6 \
  "${SWEEP[@]}" --out runs/five_v2
lerplm report runs/five_v2 --title "Chat anchors, per-prompt seeding: five-attribute design (16 prompts x 6 levels x 3 b)"

for r in cal64 ps180_v2 five_v2; do mkdir -p docs/results/$r && cp runs/$r/{report.md,summary.json,*.png} docs/results/$r/; done
for r in targets_v2 targets_v2_pairs; do mkdir -p docs/results/$r && cp runs/$r/targets.{md,json,csv,png} docs/results/$r/; done
cp runs/calibration_cal64.json docs/results/
