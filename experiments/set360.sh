#!/usr/bin/env bash
# Session 8, issue 3: the one anchor set with politeness and simplicity trained 360 steps (examples/styles.toml),
# and the paper's grids on it. Politeness at 360 steps is anchors/pol360 (experiments/paper_mixed_cpu.sh), swept
# over the same prompts as runs/mixed64 in runs/pol360; this trains simplicity alike (~75 min), assembles the set
# from anchors already measured (`lerplm train` trains nothing, checks each adapter's settings against the config
# and writes the manifest), checks that the assembled set generates byte-identical texts to the runs whose points
# it reuses, then generates only what is new: simplicity's 11 levels, the five-attribute design (every point of
# it carries politeness and simplicity at weight b) and politeness and simplicity again on other prompts.
# ~2.5 h on 2 CPU cores; run nothing else beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/sweep_settings.sh   # P (the prompts file), SWEEP (the shared sweep settings)
SET=anchors/chat_mixed360

lerplm train --config examples/styles.toml --only simplicity --max-steps 360 --out anchors/simp360
mkdir -p $SET
for a in sentiment.negative sentiment.positive formality.informal formality.formal humor.not_humorous humor.humorous; do
  [ -d $SET/$a ] || cp -r anchors/chat_mixed/$a $SET/
done
for a in politeness.impolite politeness.polite; do [ -d $SET/$a ] || cp -r anchors/pol360/$a $SET/; done
for a in simplicity.complex simplicity.simple; do [ -d $SET/$a ] || cp -r anchors/simp360/$a $SET/; done
# examples/styles.toml as it was then (politeness 360 steps; session 9 raised it to 720, experiments/set720.sh)
git show d7f1848:examples/styles.toml > /tmp/styles360.toml
lerplm train --config /tmp/styles360.toml --data-dir ../shared/data/styles --out $SET   # trains nothing: every anchor is there

# the check: levels 0 and 1 of sentiment (runs/mixed64: a set whose politeness and simplicity adapters, at
# coefficient 0 here, differ) and of politeness (runs/pol360: a one-attribute set), generated on the new set
check_reuse $SET sentiment runs/mixed64 runs/set360_check_sent
check_reuse $SET politeness runs/pol360 runs/set360_check_pol

# single-attribute sweeps, 11 levels x 64 prompts (80-143): sentiment, formality, humor points from runs/mixed64,
# politeness points from runs/pol360; `lerplm sweep` generates simplicity's 11 points (~13 min)
python experiments/reuse_points.py compose runs/mixed360 $SET 'runs/mixed64:single-sentiment-*' \
  'runs/mixed64:single-formality-*' 'runs/mixed64:single-humor-*' 'runs/pol360:single-politeness-*'
lerplm sweep --anchors $SET --grid single:all --skip-prompts 80 --max-prompts 64 --levels 11 "${SWEEP[@]}" --out runs/mixed360
lerplm report runs/mixed360 --title "The anchor set of examples/styles.toml (politeness, simplicity 360 steps; others 60): single-attribute sweeps (64 prompts x 11 levels)"

# the five-attribute design, b = 0.05, 0.15, 0.2 (16 prompts 144-159 x 6 levels x 5 attributes x 3 b; ~25 min)
lerplm sweep --anchors $SET --grid five:b=0.05,0.15,0.2 --skip-prompts 144 --max-prompts 16 --levels 6 "${SWEEP[@]}" --out runs/five_mixed360
lerplm report runs/five_mixed360 --title "The anchor set of examples/styles.toml: five-attribute design (16 prompts x 6 levels x 3 b)"

for r in mixed360 five_mixed360; do mkdir -p docs/results/$r && cp runs/$r/{report.md,summary.json,*.png} docs/results/$r/; done
python experiments/five_vs_single.py runs/mixed360 runs/five_mixed360

# politeness and simplicity, the two attributes at the goal's 0.3: the same on 64 other prompts (160-223) in 6
# levels (~14 min), for a second, independent estimate of their ranges
lerplm sweep --anchors $SET --grid single:politeness,simplicity --skip-prompts 160 --max-prompts 64 --levels 6 "${SWEEP[@]}" --out runs/mixed360_b
lerplm report runs/mixed360_b --title "The anchor set of examples/styles.toml: politeness and simplicity on 64 other prompts (160-223 x 6 levels)"
mkdir -p docs/results/mixed360_b && cp runs/mixed360_b/{report.md,summary.json,*.png} docs/results/mixed360_b/
python experiments/pool_ranges.py runs/mixed360 runs/mixed360_b   # the two prompt sets' ranges pooled

# docs/anchors.md: the set's training losses and sample generations at levels 0, 0.5, 1 (~2 min); session 9's
# experiments/set720.sh writes it for the set as it is now
python experiments/anchor_report.py --anchors $SET --out docs/anchors.md \
  --trained-with "lerplm train --config examples/styles.toml --text-format chat --max-steps 60 --out anchors/styles_chat" \
  --trained-with "lerplm train --config examples/styles.toml --only politeness --max-steps 360 --out anchors/pol360" \
  --trained-with "lerplm train --config examples/styles.toml --only simplicity --max-steps 360 --out anchors/simp360" \
  --trained-with "bash experiments/set360.sh   # assembles $SET from the three (lerplm train trains nothing)"
