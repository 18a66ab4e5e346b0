#!/usr/bin/env bash
# Session 9, issue 3: politeness, the one attribute whose range stayed short of 0.3 (0.276 ± 0.036 fitted, pooled
# over 128 prompts at 360 steps), trained twice as long (720 steps; 60/180/360 steps gave fitted 0.19/0.27/0.30 on
# prompts 80-143) and swept on the same two prompt sets as the set's 360-step anchors (runs/pol360 = the politeness
# points of runs/mixed360, and runs/mixed360_b), then the two pooled. ~2 h on 2 CPU cores; run nothing beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/sweep_settings.sh   # P (the prompts file), SWEEP (the shared sweep settings)

lerplm train --config examples/styles.toml --only politeness --max-steps 720 --out anchors/pol720   # ~95 min
lerplm sweep --anchors anchors/pol720 --grid single:politeness --skip-prompts 80 --max-prompts 64 --levels 11 "${SWEEP[@]}" --out runs/pol720
lerplm report runs/pol720 --title "Politeness anchors, 720 steps (64 prompts 80-143 x 11 levels)"
lerplm sweep --anchors anchors/pol720 --grid single:politeness --skip-prompts 160 --max-prompts 64 --levels 6 "${SWEEP[@]}" --out runs/pol720_b
lerplm report runs/pol720_b --title "Politeness anchors, 720 steps (64 prompts 160-223 x 6 levels)"
for r in pol720 pol720_b; do mkdir -p docs/results/$r && cp runs/$r/{report.md,summary.json,*.png} docs/results/$r/; done
python experiments/pool_ranges.py runs/pol720 runs/pol720_b   # 720 steps, 128 prompts
python experiments/pool_ranges.py runs/mixed360 runs/mixed360_b   # 360 steps, the same 128 prompts
