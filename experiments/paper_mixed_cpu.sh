#!/usr/bin/env bash
# Session 7, issue 3: the paper's grids on the one anchor set (anchors/chat_mixed, experiments/mixed_set.sh) with
# per-prompt seeding, and politeness anchors trained twice as long. ~2 h on 2 CPU cores; run nothing else beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/sweep_settings.sh   # P (the prompts file), SWEEP (the shared sweep settings)

# single-attribute sweeps in 11 levels: runs/mixed64 holds levels 0, .2, ..., 1; this adds .1, .3, .5, .7, .9
# (25 points, ~25 min); the finished points are not regenerated
lerplm sweep --anchors anchors/chat_mixed --grid single:all --skip-prompts 80 --max-prompts 64 --levels 11 "${SWEEP[@]}" --out runs/mixed64
lerplm report runs/mixed64 --title "One anchor set, per-attribute steps (politeness, simplicity 180; others 60): single-attribute sweeps (64 prompts x 11 levels)"

# the five-attribute design, b = 0.05, 0.15, 0.2 (16 prompts 144-159 x 6 levels x 5 attributes x 3 b; ~25 min)
lerplm sweep --anchors anchors/chat_mixed --grid five:b=0.05,0.15,0.2 --skip-prompts 144 --max-prompts 16 --levels 6 "${SWEEP[@]}" --out runs/five_mixed
lerplm report runs/five_mixed --title "One anchor set: five-attribute design (16 prompts x 6 levels x 3 b)"

# politeness trained twice as long (360 steps, ~1.5 epochs of its 1.7k texts per endpoint; ~75 min), swept like mixed64 (session 7 ran 6 levels, then resumed with 11)
lerplm train --config examples/styles.toml --only politeness --max-steps 360 --out anchors/pol360
lerplm sweep --anchors anchors/pol360 --grid single:politeness --skip-prompts 80 --max-prompts 64 --levels 11 "${SWEEP[@]}" --out runs/pol360
lerplm report runs/pol360 --title "Politeness anchors, 360 steps (64 prompts x 11 levels)"

for r in mixed64 five_mixed pol360; do mkdir -p docs/results/$r && cp runs/$r/{report.md,summary.json,*.png} docs/results/$r/; done

# the five-attribute ranges against (1 - 4b) x the single-attribute ranges, and humor's punctuation artefact
python experiments/five_vs_single.py runs/mixed64 runs/five_mixed
